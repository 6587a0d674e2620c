"""Exceptions raised by capsched.

Every public entry point validates its whole input before it changes anything, so when
one of these is raised the scheduler is exactly as it was before the call.
"""

from __future__ import annotations

__all__ = [
    "CapschedError",
    "InvalidArgumentError",
    "InvalidRequestError",
    "ConfigError",
    "UnknownRequestError",
    "RequestStateError",
    "DependencyError",
    "AdmissionError",
    "DuplicateRequestError",
    "RequestTypeError",
    "QueueFullError",
    "CheckpointError",
    "JournalError",
]


class CapschedError(Exception):
    """Base class of every error capsched raises on purpose."""


class InvalidArgumentError(CapschedError, ValueError):
    """An argument is out of range or NaN (for example a ``now`` that is not finite)."""


class InvalidRequestError(InvalidArgumentError):
    """A request field is out of range, NaN, of the wrong kind, or inconsistent."""


class ConfigError(CapschedError, ValueError):
    """The scheduler's configuration or device list cannot be used."""


class UnknownRequestError(CapschedError, KeyError):
    """An id that this scheduler never issued."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RequestStateError(CapschedError, RuntimeError):
    """A known request is in the wrong state for the call (e.g. completing one not in flight)."""


class DependencyError(CapschedError, ValueError):
    """``depends_on`` names an unknown request, or one that ended without completing, or
    one that already has ``Config.max_dependents`` requests waiting on it."""


class AdmissionError(CapschedError, ValueError):
    """A deadline-class request needs more bandwidth than any device has free."""


class CheckpointError(ConfigError):
    """A checkpoint file cannot be used: unreadable, truncated, corrupt (checksum),
    written by a newer version, or inconsistent. The file is left as it is."""


class JournalError(CheckpointError):
    """Writing the journal failed (disk full, I/O error, file too large). When a call
    raises it, that call's change WAS made but is not durable: ``result`` holds what the
    call would have returned (the id for ``submit``, the :class:`StepResult` or
    :class:`StepArrays` for ``step``/``step_many``, so that the batches it dispatched can
    still be run; None when nothing was changed). From then on the scheduler
    refuses every change with this error (changing nothing) until ``close_journal()``;
    take a checkpoint and open a new journal to be durable again."""

    def __init__(self, message: str, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class QueueFullError(CapschedError):
    """Back-pressure: accepting the request(s) would exceed ``Config.max_queued`` (all
    requests not in flight) or ``Config.max_queued_per_tenant``. Nothing was accepted;
    retry later or shed load."""


class DuplicateRequestError(CapschedError, ValueError):
    """The same InferenceRequest object was submitted twice."""


class RequestTypeError(InvalidRequestError, TypeError):
    """A request field has the wrong type (for example a priority given as a string)."""
