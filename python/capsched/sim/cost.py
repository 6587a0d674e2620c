"""A physically grounded cost model of LLM inference on one accelerator.

The simulator charges every batch it runs with the time this model gives. The model is a
roofline per phase of a transformer forward pass, built only from the accelerator's
datasheet figures (:class:`capsched.specs.AcceleratorSpec`: peak dense bf16 FLOP/s and
memory bandwidth) and the model's shape (:class:`ModelSpec`), with five efficiency
parameters shared by every accelerator (one of them per GPU generation):

* **Linear layers** (QKV/output projections, MLP, LM head), for ``n`` tokens in the step::

      t_lin(n) = smax( weight_bytes / (BW x eta_bw),  2 x params x n / (F x mfu) )

  reading every weight once per step (memory bound at small ``n``: decode) or doing the
  matrix multiplications (compute bound at large ``n``: prefill).
* **Attention**, for sequences with ``c`` new tokens after ``k`` cached ones::

      flops = 4 x hidden x layers x (c x k + c (c + 1) / 2)       (causal QK^T and PV)
      bytes = kv_bytes_per_token x (k + c)                          (K and V read/written)
      t_attn = smax( sum flops / (F x eta_attn),  sum bytes / (BW x eta_bw) )

  A prompt of ``P`` tokens (``k = 0``) costs ``2 x hidden x layers x P (P + 1)`` FLOPs,
  compute bound; a decode step (``c = 1``, ``k = C``) reads the whole KV cache, memory
  bound.
* **Per-step overhead** ``t_0``: kernel launches and the small element-wise kernels
  (norms, rotary embedding, activation, residual adds: about ten per layer).

A step costs ``t_0 + t_lin + t_attn_prefill + t_attn_decode``. ``F`` is the peak dense
FLOP/s times the clock scale (a throttled device computes slower, its memory does not),
``BW`` the peak memory bandwidth, and ``smax(a, b) = (a^p + b^p)^(1/p)`` a smooth
maximum (``p = roofline_exponent``; ``p = inf`` is the hard roofline ``max``): where both
limits are close, a real kernel is slower than either alone.

The parameters (:data:`DEFAULT_PARAMETERS`) were calibrated once against Vidur's
profiles of Llama-2-7B on A100, H100 and A40 (``data/vidur_llama2_7b_cost_examples.csv``,
MIT): every point is matched within 10 % (:func:`validate_against_vidur`;
``docs/simulator.md`` has the table).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import numbers
import os
import re
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from ..errors import ConfigError, InvalidArgumentError
from ..specs import AcceleratorSpec, kv_bytes_per_token, kv_cache_tokens, lookup

__all__ = [
    "ModelSpec",
    "LLAMA2_7B",
    "LLAMA3_8B",
    "MODELS",
    "model_spec",
    "CostModel",
    "DEFAULT_PARAMETERS",
    "default_attention_efficiency",
    "ValidationRow",
    "VIDUR_GPUS",
    "validate_against_vidur",
    "validation_table_markdown",
]

_GIB = 2**30

ArrayLike = Union[int, float, Sequence[int], Sequence[float], np.ndarray]


def _positive_real(name: str, value: object, *, upper: Optional[float] = None, error: type = ConfigError) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v <= 0 or (upper is not None and v > upper):
        bound = f"in (0, {upper:g}]" if upper is not None else "> 0"
        raise error(f"{name} must be a finite number {bound}, got {value!r}")
    return v


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer, as far as its cost goes.

    Attributes:
        name: a label, e.g. ``"Llama-2-7B"``.
        params: total parameter count (embeddings and LM head included).
        layers: transformer blocks.
        hidden: model width (query heads x head dimension).
        kv_heads: key/value heads per layer (fewer than the query heads with grouped-query
            attention).
        head_dim: dimension of one head.
        dtype_bytes: bytes per weight and per KV-cache element (2 for fp16/bf16).

    Raises:
        ConfigError: a field out of range (the message names it and its value).
    """

    name: str
    params: float
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    dtype_bytes: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"ModelSpec.name must be a non-empty str, got {self.name!r}")
        _positive_real("ModelSpec.params", self.params)
        _positive_real("ModelSpec.dtype_bytes", self.dtype_bytes)
        for field in ("layers", "hidden", "kv_heads", "head_dim"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ConfigError(f"ModelSpec.{field} must be an integer >= 1, got {v!r}")
        if self.kv_heads * self.head_dim > self.hidden:
            raise ConfigError(
                f"ModelSpec {self.name!r}: kv_heads x head_dim ({self.kv_heads} x {self.head_dim}) "
                f"exceeds hidden ({self.hidden})"
            )

    @property
    def weight_bytes(self) -> float:
        """Bytes of weights: ``params x dtype_bytes``."""
        return float(self.params) * float(self.dtype_bytes)

    @property
    def weights_gib(self) -> float:
        """Weights in GiB."""
        return self.weight_bytes / _GIB

    @property
    def kv_bytes_per_token(self) -> float:
        """Bytes of KV cache per token: ``2 x layers x kv_heads x head_dim x dtype_bytes``."""
        return kv_bytes_per_token(self.layers, self.kv_heads, self.head_dim, self.dtype_bytes)


#: Llama-2-7B (Touvron et al. 2023): 6.74 B parameters, 32 layers, width 4096, 32 heads of
#: 128 (multi-head attention: 32 KV heads), fp16. 512 KiB of KV cache per token.
LLAMA2_7B = ModelSpec("Llama-2-7B", 6.738e9, 32, 4096, 32, 128, 2.0)

#: Llama-3-8B (Meta 2024): 8.03 B parameters, 32 layers, width 4096, 32 query heads of 128
#: and 8 KV heads (grouped-query attention), bf16. 128 KiB of KV cache per token.
LLAMA3_8B = ModelSpec("Llama-3-8B", 8.030e9, 32, 4096, 8, 128, 2.0)

#: The built-in models by name.
MODELS: dict[str, ModelSpec] = {m.name: m for m in (LLAMA2_7B, LLAMA3_8B)}


def model_spec(name: Union[str, ModelSpec]) -> ModelSpec:
    """A built-in :class:`ModelSpec` by name (case and punctuation ignored:
    ``"llama2-7b"``, ``"Llama-3-8B"``); a ModelSpec is returned as is.

    Raises:
        ConfigError: no built-in model has that name (the message lists them).
    """
    if isinstance(name, ModelSpec):
        return name
    if not isinstance(name, str):
        raise ConfigError(f"a model must be a ModelSpec or a name, got {type(name).__name__}")
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for m in MODELS.values():
        if re.sub(r"[^a-z0-9]", "", m.name.lower()) == key:
            return m
    raise ConfigError(f"unknown model {name!r} (known: {', '.join(MODELS)})")


# Accelerators whose attention kernels reach about half the share of peak that they reach
# on Ampere and Ada (see DEFAULT_PARAMETERS).
_HOPPER_OR_LATER = frozenset({"H100-SXM", "H100-PCIe", "H100-NVL", "H200", "B200"})

#: The calibrated defaults of :class:`CostModel` (see the module docstring, and
#: ``docs/simulator.md`` for the justification of each):
#:
#: * ``mfu`` 0.70: matrix multiplications of prefill-sized batches reach ~70 % of the dense
#:   peak on A100, H100 and A40 alike (Vidur's GEMM profiles give 64-68 % for the linear
#:   layers alone at 2,048 tokens; 0.70 absorbs the LM head and embeddings in ``params``).
#: * ``bandwidth_efficiency`` 0.86: streaming reads reach ~86 % of the datasheet bandwidth
#:   (STREAM-like kernels on HBM2e/HBM3/GDDR6 reach 80-92 %; Vidur's decode attention
#:   reads the KV cache at 81-92 % on all three GPUs).
#: * ``attention_efficiency`` 0.16 of peak (causal FLOPs) on Ampere/Ada and other parts,
#:   0.08 on Hopper and later: FlashAttention-2-class kernels use none of Hopper's new
#:   tensor-core instructions and reach about half the share of peak there that they reach
#:   on Ampere (the FlashAttention-3 paper: ~35 % of H100 vs up to ~70 % of A100). The
#:   absolute level, far below those kernel benchmarks, is what Vidur's serving-engine
#:   attention profiles show at head dimension 128.
#: * ``step_overhead_s`` 1.25 ms: ~10 small kernels per layer x 32 layers at a few
#:   microseconds each, plus the step's host-side launch latency.
#: * ``roofline_exponent`` 1.5: the smooth maximum's sharpness.
DEFAULT_PARAMETERS: dict[str, float] = {
    "mfu": 0.70,
    "bandwidth_efficiency": 0.86,
    "attention_efficiency": 0.16,
    "hopper_attention_efficiency": 0.08,
    "step_overhead_s": 1.25e-3,
    "roofline_exponent": 1.5,
}


def default_attention_efficiency(spec: AcceleratorSpec) -> float:
    """The default attention efficiency for an accelerator: 0.08 for Hopper and later
    (H100, H200, B200), 0.16 otherwise (see :data:`DEFAULT_PARAMETERS`)."""
    if spec.name in _HOPPER_OR_LATER:
        return DEFAULT_PARAMETERS["hopper_attention_efficiency"]
    return DEFAULT_PARAMETERS["attention_efficiency"]


def _counts(name: str, value: object, minimum: int) -> tuple[np.ndarray, bool]:
    """``value`` as a float64 array of whole numbers >= minimum, and whether it was a scalar.

    Raises:
        InvalidArgumentError: not numbers, not whole, or below ``minimum`` (naming the
            first bad element).
    """
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
    scalar = isinstance(value, numbers.Real)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be an integer >= {minimum} or an array of them, got {value!r}") from None
    if not scalar and np.asarray(value).dtype == np.bool_:
        raise InvalidArgumentError(f"{name} must be integers, got booleans")
    bad = ~np.isfinite(arr) | (arr < minimum) | (arr != np.floor(arr))
    if bad.any():
        if arr.ndim == 0:
            raise InvalidArgumentError(f"{name} must be an integer >= {minimum}, got {value!r}")
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        where = i[0] if len(i) == 1 else i
        raise InvalidArgumentError(f"{name}[{where}] must be an integer >= {minimum}, got {arr[i]:g}")
    return arr, scalar and arr.ndim == 0


def _nonneg_reals(name: str, value: object) -> tuple[np.ndarray, bool]:
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise InvalidArgumentError(f"{name} must be a number >= 0, got {value!r}")
    scalar = isinstance(value, numbers.Real)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{name} must be a number >= 0 or an array of them, got {value!r}") from None
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        if arr.ndim == 0:
            raise InvalidArgumentError(f"{name} must be a finite number >= 0, got {value!r}")
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        where = i[0] if len(i) == 1 else i
        raise InvalidArgumentError(f"{name}[{where}] must be a finite number >= 0, got {arr[i]:g}")
    return arr, scalar and arr.ndim == 0


def _plain_count(value: object, minimum: int) -> bool:
    """A plain Python int >= minimum (the fast path; anything else is validated by
    :func:`_counts`)."""
    return type(value) is int and value >= minimum


def _plain_real(value: object) -> bool:
    """A plain Python int or float, finite and >= 0."""
    return (type(value) is int and value >= 0) or (type(value) is float and math.isfinite(value) and value >= 0.0)


def _out(arr: np.ndarray, scalar: bool) -> Union[float, np.ndarray]:
    return float(arr) if scalar else arr


class CostModel:
    """Time of prefill, decode steps and whole requests of one model on one accelerator.

    Args:
        accelerator: an :class:`~capsched.specs.AcceleratorSpec`, or a name
            :func:`capsched.specs.lookup` knows (``"H100-SXM"``, ``"A100-SXM-80GB"``,
            ``"A40"``, ``"L4"``, ``"NVIDIA A100-SXM4-80GB"``...).
        model: a :class:`ModelSpec` or a built-in model's name (default Llama-2-7B).
        mfu: share of the peak dense FLOP/s that the linear layers reach when compute
            bound, in (0, 1].
        bandwidth_efficiency: share of the datasheet memory bandwidth reached streaming
            weights and KV cache, in (0, 1].
        attention_efficiency: share of peak FLOP/s reached by prefill attention (causal
            FLOPs), in (0, 1]; ``None``: :func:`default_attention_efficiency`.
        step_overhead_s: fixed time of every forward step in seconds, >= 0.
        roofline_exponent: sharpness ``p`` of the smooth maximum of the memory and compute
            times, >= 1 (``math.inf``: the plain ``max``).
        clock_scale: the device's clock as a share of its max clock, in (0, 1] (thermal
            or power throttling): compute time scales as ``1 / clock_scale``, memory time
            does not.

    Times are in seconds. Every timing method accepts numpy arrays (broadcast together)
    as well as scalars, and returns a float for scalars.

    Raises:
        ConfigError: a parameter out of range, or an unknown accelerator (then a
            :class:`~capsched.specs.UnknownAcceleratorError`, a KeyError) or model.
    """

    __slots__ = (
        "_spec", "_model", "_mfu", "_bw_eff", "_attn_eff", "_overhead", "_p", "_clock",
        "_peak", "_bw",
    )

    def __init__(
        self,
        accelerator: Union[AcceleratorSpec, str],
        model: Union[ModelSpec, str] = LLAMA2_7B,
        *,
        mfu: float = DEFAULT_PARAMETERS["mfu"],
        bandwidth_efficiency: float = DEFAULT_PARAMETERS["bandwidth_efficiency"],
        attention_efficiency: Optional[float] = None,
        step_overhead_s: float = DEFAULT_PARAMETERS["step_overhead_s"],
        roofline_exponent: float = DEFAULT_PARAMETERS["roofline_exponent"],
        clock_scale: float = 1.0,
    ) -> None:
        if isinstance(accelerator, AcceleratorSpec):
            spec = accelerator
        elif isinstance(accelerator, str):
            spec = lookup(accelerator)
        else:
            raise ConfigError(
                f"accelerator must be an AcceleratorSpec or a spec name, got {type(accelerator).__name__}"
            )
        self._spec = spec
        self._model = model_spec(model)
        self._mfu = _positive_real("mfu", mfu, upper=1.0)
        self._bw_eff = _positive_real("bandwidth_efficiency", bandwidth_efficiency, upper=1.0)
        self._attn_eff = (
            default_attention_efficiency(spec)
            if attention_efficiency is None
            else _positive_real("attention_efficiency", attention_efficiency, upper=1.0)
        )
        if isinstance(step_overhead_s, bool) or not isinstance(step_overhead_s, numbers.Real) or not (
            math.isfinite(step_overhead_s) and step_overhead_s >= 0
        ):
            raise ConfigError(f"step_overhead_s must be a finite number >= 0, got {step_overhead_s!r}")
        self._overhead: float = float(step_overhead_s)
        p = roofline_exponent
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or math.isnan(p) or p < 1:
            raise ConfigError(f"roofline_exponent must be a number >= 1 (or inf), got {roofline_exponent!r}")
        self._p: float = float(p)
        self._clock: float = _positive_real("clock_scale", clock_scale, upper=1.0)
        self._peak: float = spec.peak_tflops * 1e12
        self._bw: float = spec.memory_bandwidth_gbs * 1e9

    # -- parameters -------------------------------------------------------------------

    @property
    def spec(self) -> AcceleratorSpec:
        """The accelerator's spec."""
        return self._spec

    @property
    def model(self) -> ModelSpec:
        """The model served."""
        return self._model

    @property
    def mfu(self) -> float:
        """Share of peak FLOP/s reached by compute-bound linear layers."""
        return self._mfu

    @property
    def bandwidth_efficiency(self) -> float:
        """Share of peak memory bandwidth reached streaming weights and KV cache."""
        return self._bw_eff

    @property
    def attention_efficiency(self) -> float:
        """Share of peak FLOP/s reached by prefill attention."""
        return self._attn_eff

    @property
    def step_overhead_s(self) -> float:
        """Fixed time of every forward step, seconds."""
        return self._overhead

    @property
    def roofline_exponent(self) -> float:
        """Sharpness of the smooth maximum (inf: plain max)."""
        return self._p

    @property
    def clock_scale(self) -> float:
        """Clock as a share of the max clock (1.0: not throttled)."""
        return self._clock

    @property
    def effective_flops(self) -> float:
        """Peak dense FLOP/s at the current clock (``peak x clock_scale``)."""
        return self._peak * self._clock

    @property
    def effective_bandwidth(self) -> float:
        """Reachable memory bandwidth in bytes/s (``peak x bandwidth_efficiency``)."""
        return self._bw * self._bw_eff

    def parameters(self) -> dict[str, float]:
        """The efficiency parameters as keyword arguments of the constructor."""
        return {
            "mfu": self._mfu,
            "bandwidth_efficiency": self._bw_eff,
            "attention_efficiency": self._attn_eff,
            "step_overhead_s": self._overhead,
            "roofline_exponent": self._p,
            "clock_scale": self._clock,
        }

    def replace(self, **changes: float) -> CostModel:
        """A copy with some parameters changed (keyword names as in the constructor)."""
        unknown = set(changes) - set(self.parameters())
        if unknown:
            raise ConfigError(f"unknown CostModel parameter(s): {', '.join(sorted(unknown))}")
        return CostModel(self._spec, self._model, **{**self.parameters(), **changes})

    def with_clock_scale(self, clock_scale: float) -> CostModel:
        """A copy of this model running at ``clock_scale`` of the max clock."""
        return self.replace(clock_scale=clock_scale)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v:g}" for k, v in self.parameters().items())
        return f"CostModel({self._spec.name!r}, {self._model.name!r}, {params})"

    # -- building blocks ----------------------------------------------------------------

    def _smax(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Smooth maximum ``(a^p + b^p)^(1/p)``, computed as ``hi (1 + (lo/hi)^p)^(1/p)``."""
        hi: np.ndarray = np.maximum(a, b)
        if math.isinf(self._p):
            return hi
        lo = np.minimum(a, b)
        ratio: np.ndarray = np.divide(lo, hi, out=np.zeros(np.broadcast(lo, hi).shape), where=hi > 0)
        return hi * (1.0 + ratio**self._p) ** (1.0 / self._p)

    def _smax1(self, a: float, b: float) -> float:
        """Scalar :meth:`_smax` (the simulator's hot path avoids numpy overhead)."""
        hi, lo = (a, b) if a >= b else (b, a)
        if math.isinf(self._p) or hi <= 0:
            return hi
        out: float = hi * (1.0 + (lo / hi) ** self._p) ** (1.0 / self._p)  # float ** float is Any to mypy
        return out

    def _step1(self, tokens: float, prefill_flops: float, prefill_bytes: float, decode_flops: float, decode_bytes: float) -> float:
        """Scalar step time from its token count and attention work (0 tokens: 0)."""
        if tokens <= 0:
            return 0.0
        m = self._model
        f = self.effective_flops
        bw = self.effective_bandwidth
        t = self._overhead + self._smax1(m.weight_bytes / bw, 2.0 * m.params * tokens / (f * self._mfu))
        if prefill_flops > 0 or prefill_bytes > 0:
            t += self._smax1(prefill_flops / (f * self._attn_eff), prefill_bytes / bw)
        if decode_flops > 0 or decode_bytes > 0:
            t += self._smax1(decode_flops / (f * self._attn_eff), decode_bytes / bw)
        return t

    def _linear(self, tokens: np.ndarray) -> np.ndarray:
        """Linear layers for ``tokens`` tokens in one step (0 tokens: no step)."""
        m = self._model
        mem = m.weight_bytes / self.effective_bandwidth
        comp = 2.0 * m.params * tokens / (self.effective_flops * self._mfu)
        return np.where(tokens > 0, self._smax(np.full_like(comp, mem), comp), 0.0)

    def _attention(self, flops: np.ndarray, kv_bytes: np.ndarray) -> np.ndarray:
        return self._smax(flops / (self.effective_flops * self._attn_eff), kv_bytes / self.effective_bandwidth)

    def _attention_flops(self, new: Union[float, np.ndarray], cached: Union[float, np.ndarray]) -> Any:
        """Causal attention FLOPs of ``new`` tokens after ``cached`` ones (QK^T and PV):
        a float for floats, an array when either is an array."""
        m = self._model
        return 4.0 * m.hidden * m.layers * (new * cached + new * (new + 1) / 2.0)

    # -- timings ------------------------------------------------------------------------

    def step_time(
        self,
        prefill_tokens: Iterable[int] = (),
        decode_batch: int = 0,
        decode_context_tokens: float = 0.0,
        *,
        prefill_cached_tokens: Optional[Iterable[int]] = None,
    ) -> float:
        """Time of one forward step (one iteration of continuous batching).

        Args:
            prefill_tokens: new prompt tokens of each sequence being prefilled in this
                step (a whole prompt, or a chunk of one).
            decode_batch: sequences generating one token each in this step.
            decode_context_tokens: their average context (tokens in the KV cache).
            prefill_cached_tokens: for chunked prefill, the tokens of each prefilling
                sequence already in the KV cache (default: none).

        Returns:
            seconds; 0.0 for an empty step.

        Raises:
            InvalidArgumentError: a count out of range, or mismatched lengths.
        """
        new, _ = _counts("prefill_tokens", list(prefill_tokens), 1)
        if prefill_cached_tokens is None:
            cached = np.zeros_like(new)
        else:
            cached, _ = _counts("prefill_cached_tokens", list(prefill_cached_tokens), 0)
            if cached.shape != new.shape:
                raise InvalidArgumentError(
                    f"prefill_cached_tokens has {cached.size} entries, prefill_tokens {new.size}"
                )
        b, _ = _counts("decode_batch", decode_batch, 0)
        c, _ = _nonneg_reals("decode_context_tokens", decode_context_tokens)
        if b.ndim or c.ndim:
            raise InvalidArgumentError("step_time takes scalar decode_batch and decode_context_tokens")
        kvb = self._model.kv_bytes_per_token
        bf, cf = float(b), float(c)
        return self._step1(
            float(new.sum()) + bf,
            float(self._attention_flops(new, cached).sum()),
            kvb * float((new + cached).sum()),
            bf * float(self._attention_flops(1.0, cf)),
            kvb * bf * cf,
        )

    def prefill_time(self, prompt_tokens: ArrayLike, batch: ArrayLike = 1) -> Union[float, np.ndarray]:
        """Time to prefill ``batch`` prompts of ``prompt_tokens`` tokens each in one step.

        ``t_0 + t_lin(batch x P) + t_attn`` with ``2 x hidden x layers x P (P + 1)``
        attention FLOPs per prompt: compute bound but for short prompts, where reading
        the weights dominates.

        Raises:
            InvalidArgumentError: ``prompt_tokens`` or ``batch`` not an integer >= 1.
        """
        kvb = self._model.kv_bytes_per_token
        if _plain_count(prompt_tokens, 1) and _plain_count(batch, 1):
            p1, b1 = float(prompt_tokens), float(batch)  # type: ignore[arg-type]
            return self._step1(b1 * p1, b1 * float(self._attention_flops(p1, 0.0)), b1 * kvb * p1, 0.0, 0.0)
        p, s1 = _counts("prompt_tokens", prompt_tokens, 1)
        b, s2 = _counts("batch", batch, 1)
        t = self._overhead + self._linear(b * p) + self._attention(b * self._attention_flops(p, 0.0), b * kvb * p)
        return _out(np.asarray(t, dtype=np.float64), s1 and s2)

    def decode_step_time(self, batch: ArrayLike, context_tokens: ArrayLike) -> Union[float, np.ndarray]:
        """Time of one decode iteration of ``batch`` sequences whose average context is
        ``context_tokens`` tokens.

        ``t_0 + smax(weights / BW, 2 x params x batch / F) + smax(attention FLOPs / F,
        batch x context x kv_bytes_per_token / BW)``: memory bound (weights plus the KV
        cache read every step) unless the batch is very large.

        Raises:
            InvalidArgumentError: ``batch`` not an integer >= 1, or ``context_tokens``
                not a finite number >= 0.
        """
        kvb = self._model.kv_bytes_per_token
        if _plain_count(batch, 1) and _plain_real(context_tokens):
            b1, c1 = float(batch), float(context_tokens)  # type: ignore[arg-type]
            return self._step1(b1, 0.0, 0.0, b1 * float(self._attention_flops(1.0, c1)), b1 * c1 * kvb)
        b, s1 = _counts("batch", batch, 1)
        c, s2 = _nonneg_reals("context_tokens", context_tokens)
        t = self._overhead + self._linear(b) + self._attention(b * self._attention_flops(1.0, c), b * c * kvb)
        return _out(np.asarray(t, dtype=np.float64), s1 and s2)

    def service_time(
        self, prompt_tokens: ArrayLike, output_tokens: ArrayLike, batch: ArrayLike = 1
    ) -> Union[float, np.ndarray]:
        """Time to serve a request alone on an idle device (``batch`` identical requests
        together): its prefill, which yields the first output token, then
        ``output_tokens - 1`` decode steps whose context grows from ``P + 1`` to
        ``P + output_tokens - 1``.

        A decode step's time is linear in its context, so the sum is exactly
        ``(O - 1) x decode_step_time(batch, P + O / 2)``.

        Raises:
            InvalidArgumentError: a count not an integer >= 1.
        """
        p, s1 = _counts("prompt_tokens", prompt_tokens, 1)
        o, s2 = _counts("output_tokens", output_tokens, 1)
        b, s3 = _counts("batch", batch, 1)
        pre = np.asarray(self.prefill_time(p, b), dtype=np.float64)
        dec = np.asarray(self.decode_step_time(np.broadcast_to(b, np.broadcast(p, o, b).shape), p + o / 2.0))
        t = pre + (o - 1.0) * dec
        return _out(np.asarray(t, dtype=np.float64), s1 and s2 and s3)

    def kv_tokens(self, reserve_fraction: float = 0.1) -> int:
        """Tokens of KV cache that fit in device memory after the weights and a reserve
        (:func:`capsched.specs.kv_cache_tokens`; default 10 % reserved, as vLLM's
        ``gpu_memory_utilization=0.9``).

        Raises:
            ConfigError: the weights do not fit, or ``reserve_fraction`` not in [0, 1).
        """
        return kv_cache_tokens(
            self._spec.memory_gib, self._model.weights_gib, self._model.kv_bytes_per_token, reserve_fraction
        )


# -- validation against Vidur ------------------------------------------------------------

#: The accelerator rows of the spec table that Vidur's profiles were measured on (its
#: A100 and H100 profiles come from 80 GB SXM parts in DGX systems).
VIDUR_GPUS: dict[str, str] = {"a100": "A100-SXM-80GB", "h100": "H100-SXM", "a40": "A40"}

_VIDUR_FILE = "vidur_llama2_7b_cost_examples.csv"


class ValidationRow(NamedTuple):
    """One point of :func:`validate_against_vidur`: ``error = model / measured - 1``.
    Per-token rows are in ms per token."""

    what: str
    gpu: str
    measured_ms: float
    model_ms: float
    error: float


_PREFILL = re.compile(r"prefill P=(\d+) \(ms\)")
_PER_TOKEN = re.compile(r"prefill s/token at P=(\d+) \(us/token\)")
_DECODE = re.compile(r"decode step B=(\d+) C=(\d+) \(ms\)")


def validate_against_vidur(
    path: Union[str, os.PathLike[str], None] = None,
    *,
    model: Union[ModelSpec, str] = LLAMA2_7B,
    **parameters: float,
) -> list[ValidationRow]:
    """Compare the cost model with Vidur's Llama-2-7B figures.

    Args:
        path: the ``derived_llama2_7b_cost_examples.csv`` file; default the copy embedded
            in the package.
        model: the model the figures are for.
        **parameters: :class:`CostModel` parameters to use instead of the defaults.

    Returns:
        a row per (point, GPU) in file order, then GPU order (a100, h100, a40).

    Raises:
        ConfigError: the file is malformed (the message gives its line and column).
    """
    if path is None:
        text = resources.files("capsched.sim").joinpath("data", _VIDUR_FILE).read_text(encoding="utf-8")
        name = _VIDUR_FILE
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        name = os.fspath(path)
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or header[0] != "what":
        raise ConfigError(f"{name}:1: expected a header starting with 'what', got {header!r}")
    gpus = [g for g in header[1:] if g in VIDUR_GPUS]
    if not gpus:
        raise ConfigError(f"{name}:1: no GPU column ({', '.join(VIDUR_GPUS)}) in the header {header!r}")
    models = {g: CostModel(VIDUR_GPUS[g], model, **parameters) for g in gpus}
    out: list[ValidationRow] = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise ConfigError(f"{name}:{lineno}: {len(row)} fields, the header has {len(header)}")
        what = row[0]
        for g in gpus:
            col = header.index(g)
            try:
                measured = float(row[col])
            except ValueError:
                raise ConfigError(f"{name}:{lineno}: column {g!r} is not a number: {row[col]!r}") from None
            cm = models[g]
            m = _PREFILL.fullmatch(what)
            if m:
                predicted = cm.prefill_time(int(m.group(1))) * 1e3
            elif (m := _PER_TOKEN.fullmatch(what)) is not None:
                n = int(m.group(1))
                predicted = cm.prefill_time(n) / n * 1e3
                measured /= 1e3
            elif (m := _DECODE.fullmatch(what)) is not None:
                predicted = cm.decode_step_time(int(m.group(1)), int(m.group(2))) * 1e3
            else:
                raise ConfigError(f"{name}:{lineno}: unrecognised point {what!r}")
            out.append(ValidationRow(what, g, measured, float(predicted), float(predicted) / measured - 1.0))
    return out


def validation_table_markdown(rows: Sequence[ValidationRow]) -> str:
    """``rows`` as a Markdown table (point, GPU, Vidur, model, error), with the largest
    absolute error on the last line."""
    lines = ["| point | GPU | Vidur (ms) | model (ms) | error |", "|---|---|---:|---:|---:|"]
    for r in rows:
        what = r.what.replace(" (us/token)", " (ms/token)")
        digits = 4 if "/token" in what else 1
        lines.append(
            f"| {what} | {VIDUR_GPUS.get(r.gpu, r.gpu)} | {r.measured_ms:.{digits}f} | "
            f"{r.model_ms:.{digits}f} | {r.error * 100:+.1f} % |"
        )
    if rows:
        worst = max(rows, key=lambda r: abs(r.error))
        lines.append("")
        lines.append(
            f"Largest error: {worst.error * 100:+.1f} % ({worst.what}, {VIDUR_GPUS.get(worst.gpu, worst.gpu)}); "
            f"mean absolute error {np.mean([abs(r.error) for r in rows]) * 100:.1f} % over {len(rows)} points."
        )
    return "\n".join(lines)
