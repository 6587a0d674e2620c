"""Fleets for the simulator: accelerator models and counts serving one model.

A :class:`Fleet` is a list of ``(accelerator spec name, count)`` and a :class:`ModelSpec`.
:meth:`Fleet.build` expands it into :class:`SimDevice` objects, each with its own
:class:`~capsched.sim.cost.CostModel`, KV-cache budget and ``max_num_seqs``, and
:meth:`Fleet.capsched_devices` describes the same devices to :class:`capsched.Scheduler`.

**Serving capacity.** A device's capacity for the scheduler is its *serving* throughput
from the cost model, not its peak FLOP/s: decode dominates serving and is bound by memory
bandwidth. :func:`saturated_rate` gives the requests per second a device sustains when it
is kept full (continuous batching at ``B`` sequences, ``B`` limited by ``max_num_seqs`` and
by its KV cache holding ``B`` requests of the workload's mean ``prompt + output`` tokens),
for the workload's mean prompt ``P`` and output ``O``::

    t_iter = decode_step_time(B, P + O / 2) + (B / O) x prefill_extra(P)
    rate   = B / (O x t_iter)

where ``prefill_extra(P)`` is what one prompt of ``P`` tokens adds to a decode iteration
(``step_time([P], B, ...) - step_time([], B, ...)``) and ``B / O`` prompts join per
iteration on average (each request stays ``O`` iterations). **Fleet capacity** is the sum
of the devices' rates: the requests per second the fleet sustains at saturation for that
length mix. An offered load of 0.5 is an arrival rate of half of it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Optional, Union

from ..config import MAX_BATCH_SIZE
from ..devices import MAX_DEVICES, Device
from ..errors import ConfigError
from ..specs import UnknownAcceleratorError, lookup
from .cost import LLAMA3_8B, CostModel, ModelSpec, model_spec

__all__ = [
    "Fleet",
    "SimDevice",
    "DEFAULT_FLEET",
    "DEFAULT_MAX_NUM_SEQS",
    "parse_fleet",
    "saturated_rate",
]

#: Sequences one device runs at once (vLLM's ``max_num_seqs`` default is 256; 128 keeps
#: the simulated step at batch sizes Vidur profiled).
DEFAULT_MAX_NUM_SEQS = 128


def saturated_rate(cm: CostModel, mean_prompt: float, mean_output: float, max_num_seqs: int, kv_tokens: int) -> float:
    """Requests per second one device sustains when kept full (see the module docstring).

    Args:
        cm: the device's cost model.
        mean_prompt, mean_output: the workload's mean prompt and output tokens.
        max_num_seqs: most sequences per iteration.
        kv_tokens: the device's KV-cache budget in tokens (a request holds
            ``prompt + output`` tokens while it runs).
    """
    p = max(1.0, float(mean_prompt))
    o = max(1.0, float(mean_output))
    b = max(1, min(int(max_num_seqs), int(kv_tokens // (p + o))))
    ctx = p + o / 2.0
    t_dec = cm.step_time((), b, ctx)
    pi = max(1, int(round(p)))
    extra = cm.step_time([pi], b, ctx) - t_dec
    t_iter = t_dec + (b / o) * extra
    return b / (o * t_iter)


def service_seeds(cm: CostModel, max_num_seqs: int, prompt: int = 1024, context: float = 1024.0) -> tuple[float, float, float]:
    """Seeds of capsched's service-time model from a cost model (seconds at full clock):
    prefill per prompt token (a ``prompt``-token prefill over its length), one decode
    step of a lone sequence, and a decode step's extra per sequence in the batch (the
    slope between batch 1 and ``max_num_seqs`` at ``context`` tokens of context)."""
    prefill = float(cm.prefill_time(prompt)) / prompt
    step1 = float(cm.decode_step_time(1, context))
    b = max(2, int(max_num_seqs))
    per_seq = max(0.0, (float(cm.decode_step_time(b, context)) - step1) / (b - 1))
    return prefill, step1, per_seq


@dataclasses.dataclass
class SimDevice:
    """One simulated device: its name, accelerator, cost model and limits.

    Attributes:
        name: unique name (``"H100-SXM-0"``).
        accelerator: the spec name.
        cost: its :class:`CostModel` at full clock.
        kv_tokens: KV-cache budget in tokens.
        max_num_seqs: most sequences in one iteration.
        rate: saturated requests per second for the workload (:func:`saturated_rate`).
    """

    name: str
    accelerator: str
    cost: CostModel
    kv_tokens: int
    max_num_seqs: int
    rate: float = 0.0


@dataclasses.dataclass(frozen=True)
class Fleet:
    """Accelerator models and counts serving one model.

    Attributes:
        groups: ``(spec name, count)`` pairs, in the order devices are numbered. Groups
            of the same accelerator are merged into the first one (``L4:1,H100-SXM:1,L4:1``
            is ``L4:2,H100-SXM:1``), so that device names stay unique.
        model: the served model.
        max_num_seqs: sequences per device and iteration.

    Raises:
        ConfigError: no group, a malformed group, an unknown accelerator, a count not an
            integer >= 1, more than :data:`capsched.devices.MAX_DEVICES` devices in all,
            a ``max_num_seqs`` not in 1..65,536 (the Scheduler's ``max_batch_size``), or a model that does not fit an accelerator.
    """

    groups: tuple[tuple[str, int], ...]
    model: ModelSpec = LLAMA3_8B
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS

    def __post_init__(self) -> None:
        if not self.groups:
            raise ConfigError("a fleet needs at least one device")
        groups = []
        for g in self.groups:
            if not (isinstance(g, (tuple, list)) and len(g) == 2):
                raise ConfigError(f"a fleet group is (accelerator, count), got {g!r}")
            name, count = g
            try:
                spec = lookup(name)
            except UnknownAcceleratorError as exc:
                raise ConfigError(f"fleet: {exc}") from None
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ConfigError(f"fleet: the count of {name!r} must be an integer >= 1, got {count!r}")
            groups.append((spec.name, int(count)))
        merged: dict[str, int] = {}
        for name, count in groups:
            merged[name] = merged.get(name, 0) + count
        total = sum(merged.values())
        if total > MAX_DEVICES:
            raise ConfigError(
                f"fleet: {total:,} devices in all ({', '.join(f'{n}:{c}' for n, c in merged.items())}), "
                f"more than the Scheduler's limit of {MAX_DEVICES:,}"
            )
        groups = list(merged.items())
        object.__setattr__(self, "groups", tuple(groups))
        object.__setattr__(self, "model", model_spec(self.model))
        if (
            isinstance(self.max_num_seqs, bool) or not isinstance(self.max_num_seqs, int)
            or not 1 <= self.max_num_seqs <= MAX_BATCH_SIZE
        ):
            # (capsched takes it as max_batch_size: a larger one would fail after the baselines ran)
            raise ConfigError(f"max_num_seqs must be an integer in 1..{MAX_BATCH_SIZE}, got {self.max_num_seqs!r}")
        for name, _ in groups:
            try:
                CostModel(name, self.model).kv_tokens()
            except ConfigError as exc:
                raise ConfigError(f"fleet: {self.model.name} does not fit on {name}: {exc}") from None

    def __str__(self) -> str:
        return ",".join(f"{n}:{c}" for n, c in self.groups) + f" ({self.model.name})"

    @property
    def size(self) -> int:
        """Number of devices."""
        return sum(c for _, c in self.groups)

    def build(self, mean_prompt: float, mean_output: float) -> list[SimDevice]:
        """The devices, each with its cost model, KV budget and saturated rate for a
        workload of these mean lengths."""
        out = []
        for name, count in self.groups:
            cm = CostModel(name, self.model)
            kv = cm.kv_tokens()
            rate = saturated_rate(cm, mean_prompt, mean_output, self.max_num_seqs, kv)
            for i in range(count):
                out.append(SimDevice(f"{name}-{i}", name, cm, kv, self.max_num_seqs, rate))
        return out

    def capacity(self, mean_prompt: float, mean_output: float) -> float:
        """Fleet capacity in requests per second (the sum of :func:`saturated_rate`)."""
        return sum(d.rate for d in self.build(mean_prompt, mean_output))

    @staticmethod
    def capsched_devices(devices: Sequence[SimDevice], *, max_inflight_batches: Optional[int] = None) -> list[Device]:
        """The devices described to :class:`capsched.Scheduler`: capacity = serving rate,
        ``kv_tokens`` = the KV budget, ``model`` = the accelerator (clocks, power), and
        the service-time seeds from the cost model (:func:`service_seeds`), as a real
        server would give from a profile of its engine."""
        out = []
        for d in devices:
            prefill, step, per_seq = service_seeds(d.cost, d.max_num_seqs)
            out.append(
                Device(
                    d.name,
                    capacity=d.rate,
                    model=d.accelerator,
                    kv_tokens=d.kv_tokens,
                    max_inflight_batches=max_inflight_batches or d.max_num_seqs,
                    prefill_s_per_token=prefill,
                    decode_step_s=step,
                    decode_s_per_seq=per_seq,
                )
            )
        return out


#: The built-in fleet: 2 x H100 SXM, 2 x A100 SXM 80 GB and 4 x L4 serving Llama-3-8B
#: (grouped-query attention: 128 KiB of KV cache per token, so an L4 holds ~54 k tokens).
DEFAULT_FLEET = Fleet((("H100-SXM", 2), ("A100-SXM-80GB", 2), ("L4", 4)), LLAMA3_8B)

_GROUP = re.compile(r"^\s*([^:]+?)\s*(?::\s*([^:]*?)\s*)?$")


def parse_fleet(text: str, model: Union[str, ModelSpec, None] = None, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS) -> Fleet:
    """``"H100-SXM:2,A100-SXM-80GB:2,L4:4"`` as a :class:`Fleet` (a count defaults to 1;
    an accelerator listed twice is one group with the counts added).

    Raises:
        ConfigError: an empty list, an unknown accelerator (with suggestions), a bad count,
            more than :data:`capsched.devices.MAX_DEVICES` devices in all.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("--fleet is empty: give ACCELERATOR:COUNT pairs, e.g. 'H100-SXM:2,L4:4'")
    groups = []
    for part in text.split(","):
        m = _GROUP.match(part)
        if not m or not m.group(1):
            raise ConfigError(f"bad fleet entry {part!r}: expected ACCELERATOR:COUNT, e.g. 'H100-SXM:2'")
        name, count = m.group(1), m.group(2)
        if count is None or count == "":
            n = 1
        else:
            try:
                n = int(count)
            except ValueError:
                raise ConfigError(f"bad fleet entry {part!r}: the count {count!r} is not an integer") from None
        groups.append((name, n))
    return Fleet(tuple(groups), model_spec(model) if model is not None else LLAMA3_8B, max_num_seqs)

