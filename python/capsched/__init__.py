"""capsched: a capacity-aware scheduler for LLM inference requests.

A server submits requests, calls :meth:`Scheduler.step` to learn which batch runs on
which device, runs the batches itself, and reports each request's completion or failure.

>>> from capsched import OpenAutoGLMScheduler, InferenceRequest
>>> scheduler = OpenAutoGLMScheduler(devices=["cuda:0", "cuda:1"], max_batch_size=32)
>>> rid = scheduler.submit(InferenceRequest(prompt="生成一段技术文档", priority=0.8, timeout=5.0))
>>> [b.request_ids for b in scheduler.step().batches] == [[rid]]
True
"""

from __future__ import annotations

from . import errors
from .errors import (
    AdmissionError,
    CapschedError,
    CheckpointError,
    ConfigError,
    DependencyError,
    DuplicateRequestError,
    InvalidArgumentError,
    InvalidRequestError,
    JournalError,
    QueueFullError,
    RequestStateError,
    RequestTypeError,
    UnknownRequestError,
)

try:
    from . import _core
except ImportError as exc:  # pragma: no cover - only without a built extension
    raise ImportError(
        "capsched's compiled core (capsched._core) is missing: the package was not built. "
        "Install it with 'pip install .' from the source tree (needs a C++17 compiler and "
        f"CMake), or install a wheel. Original error: {exc}"
    ) from exc

from .config import POLICIES, Config, SchedulerConfig
from .devices import Device, Slice, discover, parse_devices
from .request import MAX_DEPENDENCIES, MAX_TOKENS, InferenceRequest
from .scheduler import Batch, OpenAutoGLMScheduler, Scheduler, StepArrays, StepResult
from .specs import AcceleratorSpec
from .specs import lookup as lookup_accelerator
from .tokens import estimate_tokens
from .jobs import JobCycleError, JobFileError, JobRunner, load_job, propagate_deadlines, topological_order
from . import checkpoint as _checkpoint, config as _config, discovery as _discovery, jobs as _jobs

# These modules import Device / Scheduler only under TYPE_CHECKING (a real import would be
# a cycle: scheduler and devices import config, devices imports discovery, scheduler
# imports checkpoint), so their annotations name classes their namespaces lack at run
# time and typing.get_type_hints (documentation tools, pydantic, cattrs...) raised
# NameError on SchedulerConfig, JobRunner.__init__, load_checkpoint, the discovery
# classes' to_device(s). Now that every module is loaded, bind the names there.
# (tests/test_review_misc2_fixes.py checks get_type_hints on every public name.)
for _module, _name, _value in (
    (_config, "Device", Device),
    (_config, "Scheduler", Scheduler),
    (_jobs, "Scheduler", Scheduler),
    (_checkpoint, "Scheduler", Scheduler),
    (_discovery, "Device", Device),
):
    setattr(_module, _name, _value)
del _module, _name, _value, _checkpoint, _config, _discovery, _jobs

__version__ = "0.1.0"

__all__ = [
    "AcceleratorSpec",
    "AdmissionError",
    "QueueFullError",
    "CheckpointError",
    "JournalError",
    "Batch",
    "CapschedError",
    "Config",
    "ConfigError",
    "DependencyError",
    "Device",
    "DuplicateRequestError",
    "InferenceRequest",
    "InvalidArgumentError",
    "InvalidRequestError",
    "MAX_DEPENDENCIES",
    "MAX_TOKENS",
    "OpenAutoGLMScheduler",
    "POLICIES",
    "RequestStateError",
    "RequestTypeError",
    "Scheduler",
    "Slice",
    "SchedulerConfig",
    "StepArrays",
    "StepResult",
    "UnknownRequestError",
    "discover",
    "errors",
    "estimate_tokens",
    "lookup_accelerator",
    "parse_devices",
    "__version__",
    "JobCycleError",
    "JobFileError",
    "JobRunner",
    "load_job",
    "propagate_deadlines",
    "topological_order",
]
