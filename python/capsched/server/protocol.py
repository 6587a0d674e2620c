"""Requests and events: the OpenAI request bodies the server accepts, the job it makes
of each, and the events a job streams back.

:func:`parse_completion` and :func:`parse_chat` validate an OpenAI ``/v1/completions``
or ``/v1/chat/completions`` body (every bad field raises :class:`APIError` 400 naming
it) and return a :class:`ParsedRequest`: the :class:`JobSpec` to schedule plus how to
answer (stream or not). A job streams :class:`TokenEvent` items and ends with one
:class:`DoneEvent` or :class:`ErrorEvent`. All three, and the JobSpec, convert to and
from plain JSON dicts for the fleet daemon's socket (``to_dict``/``from_dict``; the
``from_dict`` side validates again, since the peer is another process).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from typing import Any, Optional, Union

from ..config import _brief
from ..request import MAX_TOKENS
from .errors import APIError, bad_request

__all__ = [
    "JobSpec",
    "ParsedRequest",
    "TokenEvent",
    "DoneEvent",
    "ErrorEvent",
    "Event",
    "event_from_dict",
    "parse_completion",
    "parse_chat",
    "render_chat_prompt",
    "SAMPLING_FIELDS",
]

#: Sampling fields accepted and handed to the worker as they are (``JobSpec.sampling``).
#: The simulated worker ignores them (its output is deterministic); a real engine uses them.
SAMPLING_FIELDS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")

# Fields accepted and checked but with no effect beyond the check.
# (``user`` is accepted and ignored; the others must have their default values, except
# ``n`` = 1 and ``stream_options``.)
_INERT = ("user", "n", "logprobs", "echo", "best_of", "stream_options", "stop", "logit_bias", "suffix",
          "top_logprobs")

_COMMON = ("model", "max_tokens", "stream", "priority", "timeout") + SAMPLING_FIELDS + _INERT
_COMPLETION_FIELDS = frozenset(_COMMON + ("prompt",))
_CHAT_FIELDS = frozenset(_COMMON + ("messages", "max_completion_tokens"))

#: The range of each sampling field: (low, high, low excluded), as OpenAI's API and vLLM
#: take them (temperature: any >= 0, as vLLM; top_p in (0, 1]; penalties in [-2, 2]).
_SAMPLING_RANGES: dict[str, tuple[float, float, bool]] = {
    "temperature": (0.0, math.inf, False),
    "top_p": (0.0, 1.0, True),
    "seed": (-(2.0**63), 2.0**63, False),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
}

#: Default ``max_tokens`` of a completion when the body gives none (OpenAI's is 16).
DEFAULT_MAX_TOKENS = 16


def _number(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise bad_request(name, f"{name} must be a number, got {v!r}", "invalid_type")
    try:
        f = float(v)
    except (OverflowError, ValueError):  # an integer beyond any float
        raise bad_request(name, f"{name} must be a number within the range of a float, got {_brief(v)}") from None
    if not math.isfinite(f):
        raise bad_request(name, f"{name} must be finite, got {v!r}")
    return f


def _int(name: str, v: object, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise bad_request(name, f"{name} must be an integer, got {_brief(v)}", "invalid_type")
    if not lo <= int(v) <= hi:
        raise bad_request(name, f"{name} must be in {lo}..{hi}, got {_brief(v)}")
    return int(v)


def _string(name: str, v: object) -> str:
    if not isinstance(v, str):
        raise bad_request(name, f"{name} must be a string, got {type(v).__name__}", "invalid_type")
    return v


def _text(name: str, v: object) -> str:
    """A string that is valid Unicode text: JSON's ``\\ud800`` escapes decode to lone
    surrogates, which no worker (nor the daemon's socket) can encode as UTF-8."""
    s = _string(name, v)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad_request(
            name, f"{name} is not valid Unicode text: a lone surrogate {s[exc.start]!r} at index {exc.start}"
        ) from None
    return s


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """One generation job as the fleet schedules it.

    Attributes:
        prompt: the text to continue (a chat's messages rendered by
            :func:`render_chat_prompt`).
        max_tokens: most tokens to generate (1..10,000,000).
        model: the model name the client asked for.
        priority: capsched priority, 0 (lowest) .. 1 (highest).
        timeout: seconds from submission by which it must have started (capsched's
            ``timeout``: a queued request past it expires); ``None``: no deadline.
        tenant: the tenant its API key maps to (``None`` without keys).
        sampling: the sampling fields of :data:`SAMPLING_FIELDS` that were given.
    """

    prompt: str
    max_tokens: int
    model: str
    priority: float = 0.5
    timeout: Optional[float] = None
    tenant: Optional[str] = None
    sampling: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _text("prompt", self.prompt)
        _int("max_tokens", self.max_tokens, 1, MAX_TOKENS)
        _string("model", self.model)
        p = _number("priority", self.priority)
        if not 0.0 <= p <= 1.0:
            raise bad_request("priority", f"priority must be in [0, 1], got {self.priority!r}")
        if self.timeout is not None:
            t = _number("timeout", self.timeout)
            if t <= 0:
                raise bad_request("timeout", f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.tenant is not None:
            _string("tenant", self.tenant)
        if not isinstance(self.sampling, Mapping):
            raise bad_request("sampling", f"sampling must be an object, got {self.sampling!r}", "invalid_type")
        for k, v in self.sampling.items():
            if k not in SAMPLING_FIELDS:
                raise bad_request(str(k), f"unknown sampling field {k!r}", "unknown_parameter")
            x = _number(k, v)
            lo, hi, lo_open = _SAMPLING_RANGES[k]
            if x < lo or x > hi or (lo_open and x == lo):
                where = f">= {lo:g}" if hi == math.inf else f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
                raise bad_request(k, f"{k} must be {where}, got {_brief(v)}")
            if k == "seed" and not float(x).is_integer():
                raise bad_request(k, f"seed must be an integer, got {_brief(v)}", "invalid_type")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the daemon protocol's ``job``)."""
        return {
            "prompt": self.prompt,
            "max_tokens": self.max_tokens,
            "model": self.model,
            "priority": self.priority,
            "timeout": self.timeout,
            "tenant": self.tenant,
            "sampling": dict(self.sampling),
        }

    @classmethod
    def from_dict(cls, d: object) -> JobSpec:
        """Validate a dict from :meth:`to_dict` (from another process: checked again).

        Raises:
            APIError: 400 naming the bad or unknown field.
        """
        if not isinstance(d, dict):
            raise bad_request("job", f"a job must be an object, got {type(d).__name__}", "invalid_type")
        allowed = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            if k not in allowed:
                raise bad_request(str(k), f"unknown job field {k!r}", "unknown_parameter")
        for k in ("prompt", "max_tokens", "model"):
            if k not in d:
                raise bad_request(k, f"the job has no {k!r}", "missing_required_parameter")
        sampling = d.get("sampling", {})
        return cls(
            prompt=d["prompt"],
            max_tokens=d["max_tokens"],
            model=d["model"],
            priority=d.get("priority", 0.5),
            timeout=d.get("timeout"),
            tenant=d.get("tenant"),
            sampling=dict(sampling) if isinstance(sampling, dict) else sampling,
        )


@dataclasses.dataclass(frozen=True)
class TokenEvent:
    """Generated text (one token's worth, or a few)."""

    text: str

    def to_dict(self) -> dict[str, Any]:
        """``{"event": "token", "text": ...}``."""
        return {"event": "token", "text": self.text}


@dataclasses.dataclass(frozen=True)
class DoneEvent:
    """The job finished.

    Attributes:
        finish_reason: ``"length"`` (max_tokens reached) or ``"stop"`` (the model ended).
        prompt_tokens: prompt tokens (the worker's count, else capsched's estimate).
        completion_tokens: tokens generated.
        device: the device that finished it.
        retries: how many times it was retried after a worker failure.
    """

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    device: str = ""
    retries: int = 0

    def to_dict(self) -> dict[str, Any]:
        """``{"event": "done", ...fields}``."""
        return {"event": "done", **dataclasses.asdict(self)}


@dataclasses.dataclass(frozen=True)
class ErrorEvent:
    """The job ended with an error (expired in the queue, retries exhausted, ...)."""

    error: APIError

    def to_dict(self) -> dict[str, Any]:
        """``{"event": "error", "error": {status, message, type, param, code}}``."""
        return {"event": "error", "error": self.error.to_dict()}


Event = Union[TokenEvent, DoneEvent, ErrorEvent]


def event_from_dict(d: object) -> Event:
    """The inverse of the events' ``to_dict``.

    Raises:
        ValueError: not a well-formed event (the message names what is wrong).
    """
    if not isinstance(d, dict):
        raise ValueError(f"an event must be an object, got {d!r}")
    kind = d.get("event")
    if kind == "token" and isinstance(d.get("text"), str):
        return TokenEvent(d["text"])
    if kind == "done":
        fr, pt, ct = d.get("finish_reason"), d.get("prompt_tokens"), d.get("completion_tokens")
        dev, retries = d.get("device", ""), d.get("retries", 0)
        if (
            isinstance(fr, str)
            and isinstance(pt, int)
            and isinstance(ct, int)
            and isinstance(dev, str)
            and isinstance(retries, int)
        ):
            return DoneEvent(fr, pt, ct, dev, retries)
    if kind == "error":
        return ErrorEvent(APIError.from_dict(d.get("error")))
    raise ValueError(f"malformed event {d!r}")


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    """A validated request: the job, whether to stream, whether the stream ends with a
    usage chunk (``stream_options.include_usage``)."""

    job: JobSpec
    stream: bool
    include_usage: bool


def _common(body: Mapping[str, Any], allowed: frozenset[str], models: tuple[str, ...]) -> dict[str, Any]:
    for k in body:
        if k not in allowed:
            raise bad_request(str(k), f"unrecognized request argument supplied: {k}", "unknown_parameter")
    if "model" not in body:
        raise bad_request("model", "you must provide a model parameter", "missing_required_parameter")
    model = _string("model", body["model"])
    if model not in models:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {', '.join(map(repr, models))}",
            param="model",
            code="model_not_found",
        )
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise bad_request("stream", f"stream must be a boolean, got {stream!r}", "invalid_type")
    include_usage = False
    so = body.get("stream_options")
    if so is not None:
        if not isinstance(so, dict):
            raise bad_request("stream_options", f"stream_options must be an object, got {so!r}", "invalid_type")
        if not stream:
            raise bad_request("stream_options", "stream_options is only allowed when stream is true")
        for k in so:
            if k != "include_usage":
                raise bad_request(f"stream_options.{k}", f"unknown stream option {k!r}", "unknown_parameter")
        iu = so.get("include_usage", False)
        if not isinstance(iu, bool):
            raise bad_request("stream_options.include_usage", f"include_usage must be a boolean, got {iu!r}")
        include_usage = iu
    n = body.get("n")
    if n is not None:
        _int("n", n, 1, 1)  # one choice per request
    for name, ok in (("logprobs", (None, False, 0)), ("echo", (None, False)), ("best_of", (None, 1)),
                     ("top_logprobs", (None, 0)), ("suffix", (None,)), ("logit_bias", (None,))):
        v = body.get(name)
        if not any(v is o or (type(v) is type(o) and v == o) for o in ok):
            raise bad_request(name, f"{name}={v!r} is not supported by this server", "unsupported_parameter")
    stop = body.get("stop")
    if stop is not None and stop != []:
        raise bad_request("stop", f"stop sequences are not supported by this server, got {stop!r}", "unsupported_parameter")
    if body.get("user") is not None:
        _string("user", body["user"])
    sampling = {k: _number(k, body[k]) for k in SAMPLING_FIELDS if body.get(k) is not None}
    priority = 0.5 if body.get("priority") is None else body["priority"]  # JobSpec checks both
    timeout = body.get("timeout")
    return {"model": model, "stream": stream, "include_usage": include_usage, "sampling": sampling,
            "priority": priority, "timeout": timeout}


def _max_tokens(body: Mapping[str, Any], names: tuple[str, ...], default: int) -> int:
    """The first of ``names`` given (every one given is checked, the unused ones too)."""
    given = [_int(name, body[name], 1, MAX_TOKENS) for name in names if body.get(name) is not None]
    return given[0] if given else default


def _job(c: dict[str, Any], prompt: str, max_tokens: int, tenant: Optional[str]) -> ParsedRequest:
    job = JobSpec(
        prompt=prompt,
        max_tokens=max_tokens,
        model=c["model"],
        priority=c["priority"],
        timeout=c["timeout"],
        tenant=tenant,
        sampling=c["sampling"],
    )
    return ParsedRequest(job, c["stream"], c["include_usage"])


def parse_completion(
    body: object, *, models: tuple[str, ...], tenant: Optional[str] = None, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> ParsedRequest:
    """Validate a ``POST /v1/completions`` body.

    ``prompt`` is a string or a list of exactly one string (token-id prompts and several
    prompts per request are refused, naming ``prompt``).

    Raises:
        APIError: 400 naming the first bad field; 404 for an unknown model.
    """
    if not isinstance(body, dict):
        raise bad_request("body", f"the request body must be a JSON object, got {type(body).__name__}", "invalid_type")
    c = _common(body, _COMPLETION_FIELDS, models)
    if "prompt" not in body:
        raise bad_request("prompt", "you must provide a prompt", "missing_required_parameter")
    prompt = body["prompt"]
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise bad_request(
                "prompt", "prompt must be a string or a list of exactly one string (token ids and several "
                f"prompts per request are not supported), got {prompt!r:.200}", "invalid_type"
            )
        prompt = prompt[0]
    prompt = _text("prompt", prompt)
    return _job(c, prompt, _max_tokens(body, ("max_tokens",), default_max_tokens), tenant)


_ROLES = ("system", "developer", "user", "assistant", "tool")


def render_chat_prompt(messages: list[tuple[str, str]]) -> str:
    """The plain-text prompt a chat becomes: one ``role: content`` line per message, then
    ``assistant:`` (a real engine applies its model's chat template instead)."""
    return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"


def parse_chat(
    body: object, *, models: tuple[str, ...], tenant: Optional[str] = None, default_max_tokens: int = DEFAULT_MAX_TOKENS
) -> ParsedRequest:
    """Validate a ``POST /v1/chat/completions`` body.

    ``messages`` is a non-empty list of ``{"role", "content"}`` with a known role and a
    string content (or a list of ``{"type": "text", "text"}`` parts).

    Raises:
        APIError: 400 naming the first bad field (``messages[2].content``, ...); 404 for
            an unknown model.
    """
    if not isinstance(body, dict):
        raise bad_request("body", f"the request body must be a JSON object, got {type(body).__name__}", "invalid_type")
    c = _common(body, _CHAT_FIELDS, models)
    msgs = body.get("messages")
    if msgs is None:
        raise bad_request("messages", "you must provide messages", "missing_required_parameter")
    if not isinstance(msgs, list) or not msgs:
        raise bad_request("messages", f"messages must be a non-empty list, got {msgs!r:.200}", "invalid_type")
    out: list[tuple[str, str]] = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request(where, f"{where} must be an object, got {m!r:.200}", "invalid_type")
        role = m.get("role")
        if role not in _ROLES:
            raise bad_request(f"{where}.role", f"{where}.role must be one of {', '.join(_ROLES)}, got {role!r}")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                pw = f"{where}.content[{j}]"
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(pw, f"{pw} must be a text part {{'type': 'text', 'text': ...}}, got {part!r:.200}")
                parts.append(_text(pw, part["text"]))
            content = "".join(parts)
        if not isinstance(content, str):
            raise bad_request(f"{where}.content", f"{where}.content must be a string, got {content!r:.200}", "invalid_type")
        _text(f"{where}.content", content)
        out.append((str(role), content))
    max_tokens = _max_tokens(body, ("max_completion_tokens", "max_tokens"), default_max_tokens)
    return _job(c, render_chat_prompt(out), max_tokens, tenant)
