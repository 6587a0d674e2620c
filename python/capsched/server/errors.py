"""OpenAI-style errors for the server.

Every error the server returns has the OpenAI error shape::

    {"error": {"message": "...", "type": "...", "param": "max_tokens" | null, "code": "..." | null}}

:class:`APIError` carries that body and the HTTP status; the HTTP layer and the fleet
daemon's socket protocol both use it (``docs/server.md`` lists every status and code).
"""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["APIError", "bad_request", "shutting_down"]


class APIError(Exception):
    """An error to return to a client in the OpenAI error shape.

    Args:
        status: HTTP status (400, 401, 404, 408, 413, 429, 503, ...).
        message: a sentence naming the bad value or what went wrong.
        type: OpenAI's error type (``"invalid_request_error"``, ``"timeout_error"``, ...).
        param: the request field at fault, if any.
        code: a machine-readable code (``"invalid_api_key"``, ``"deadline_exceeded"``, ...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_dict(self) -> dict[str, Any]:
        """The body plus the status, as the fleet daemon sends it over its socket."""
        return {"status": self.status, **self.body()["error"]}

    @classmethod
    def from_dict(cls, d: Any) -> APIError:
        """The inverse of :meth:`to_dict`; anything malformed becomes a 502 naming it."""
        if not isinstance(d, dict) or not isinstance(d.get("status"), int) or not isinstance(d.get("message"), str):
            return cls(502, f"the fleet daemon sent a malformed error: {d!r}", type="server_error", code="bad_gateway")
        param, code, typ = d.get("param"), d.get("code"), d.get("type")
        return cls(
            d["status"],
            d["message"],
            type=typ if isinstance(typ, str) else "server_error",
            param=param if isinstance(param, str) else None,
            code=code if isinstance(code, str) else None,
        )

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r}, type={self.type!r}, param={self.param!r}, code={self.code!r})"


def bad_request(param: str, message: str, code: str = "invalid_value") -> APIError:
    """A 400 ``invalid_request_error`` naming ``param``."""
    return APIError(400, message, type="invalid_request_error", param=param, code=code)


def shutting_down(message: str = "the server is shutting down") -> APIError:
    """The 503 ``server_error`` / ``shutting_down`` of a request the server ends (or
    refuses) because it is shutting down: the engine's ``close()``, the drain's start
    (queued requests and new ones) and the end of the drain's timeout all answer with it."""
    return APIError(503, message, type="server_error", code="shutting_down")
