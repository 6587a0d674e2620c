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

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Backend, ServerConfig, create_app
    from .daemon import FleetDaemon, RemoteFleet
    from .engine import FleetEngine, JobStream, simulated_engine
    from .errors import APIError
    from .protocol import DoneEvent, ErrorEvent, JobSpec, TokenEvent
    from .workers import (
        GenerationRequest,
        SimulatedWorker,
        VLLMWorker,
        Worker,
        WorkerDied,
        WorkerFinished,
        WorkerToken,
    )

# Names are imported on first use, so that ``capsched serve --help`` (and
# ``capsched.server.cli``) work before Starlette is installed; ``capsched.server.app``
# raises an ImportError naming the ``server`` extra when it is missing.
_WHERE = {
    "APIError": "errors",
    "Backend": "app",
    "ServerConfig": "app",
    "create_app": "app",
    "FleetDaemon": "daemon",
    "RemoteFleet": "daemon",
    "FleetEngine": "engine",
    "JobStream": "engine",
    "simulated_engine": "engine",
    "DoneEvent": "protocol",
    "ErrorEvent": "protocol",
    "JobSpec": "protocol",
    "TokenEvent": "protocol",
    "GenerationRequest": "workers",
    "SimulatedWorker": "workers",
    "VLLMWorker": "workers",
    "Worker": "workers",
    "WorkerDied": "workers",
    "WorkerFinished": "workers",
    "WorkerToken": "workers",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'capsched.server' has no attribute {name!r}")
    return getattr(import_module(f".{mod}", __name__), name)


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
