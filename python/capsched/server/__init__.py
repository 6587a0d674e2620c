"""An OpenAI-compatible HTTP server that schedules requests with capsched.

``pip install "capsched[server]"``; ``capsched serve`` runs it (``docs/server.md``).

* :mod:`capsched.server.app`: the ASGI app (:func:`create_app`, :class:`ServerConfig`);
* :mod:`capsched.server.engine`: :class:`FleetEngine`, the scheduling loop over workers;
* :mod:`capsched.server.workers`: the :class:`Worker` protocol, :class:`SimulatedWorker`
  (no GPU; cost-model sleeps, fake tokens), :class:`VLLMWorker`;
* :mod:`capsched.server.daemon`: the fleet daemon and :class:`RemoteFleet`, for several
  front-end processes sharing one fleet over a Unix socket.
"""

from __future__ import annotations

from .errors import APIError
from .protocol import DoneEvent, ErrorEvent, JobSpec, TokenEvent
from .workers import GenerationRequest, SimulatedWorker, VLLMWorker, Worker, WorkerDied, WorkerFinished, WorkerToken
from .engine import FleetEngine, JobStream, simulated_engine
from .app import Backend, ServerConfig, create_app
from .daemon import FleetDaemon, RemoteFleet

__all__ = [
    "APIError",
    "Backend",
    "DoneEvent",
    "ErrorEvent",
    "FleetDaemon",
    "FleetEngine",
    "GenerationRequest",
    "JobSpec",
    "JobStream",
    "RemoteFleet",
    "ServerConfig",
    "SimulatedWorker",
    "TokenEvent",
    "VLLMWorker",
    "Worker",
    "WorkerDied",
    "WorkerFinished",
    "WorkerToken",
    "create_app",
    "simulated_engine",
]
