"""A table of known accelerators and the capacity each is given.

Every row is an :class:`AcceleratorSpec` with the vendor's figures (the comment on each
row names the datasheet or whitepaper they come from). :func:`lookup` finds a row from a
spec name, an alias, or the string NVML/``nvidia-smi`` reports (``"NVIDIA H100 80GB
HBM3"``, ``"NVIDIA A100-SXM4-80GB"``, ``"Tesla T4"``), case-insensitively.

Capacity
--------
A device's capacity is its **peak dense bf16 throughput in TFLOP/s** (fp16 for parts
without bf16: T4, V100): :func:`capacity`. It is the product

    capacity = work per clock x max clock
             = :attr:`AcceleratorSpec.flops_per_clock` x :attr:`AcceleratorSpec.max_clock_mhz`

so that a device running below its max clock (thermal or power throttling, a clock
cap) has ``capacity x clock / max_clock`` left: this is the frequency invariance the
scheduler applies when it is told the current clock. Vendors quote the peak at their
*boost* clock, which for some parts is lower than the max SM clock NVML reports (H100
SXM: peak quoted at 1830 MHz, NVML max 1980 MHz). The table keeps the datasheet peak and
the max clock NVML reports, and *defines* work per clock as their ratio, so capacity at
max clock is exactly the datasheet peak and any clock below it scales linearly. Only
ratios between devices matter to the scheduler (it normalises the strongest to 1024).

Memory is given in GiB as the datasheet states it: vendors' "80 GB" HBM parts are made of
binary-sized stacks (80 GB = 5 x 16 GiB). NVML reports a little less (the driver reserves
some), and discovery uses the measured figure when it has one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
import re
from typing import Optional

from .errors import CapschedError, ConfigError

__all__ = [
    "AcceleratorSpec",
    "SPECS",
    "UnknownAcceleratorError",
    "capacity",
    "kv_bytes_per_token",
    "kv_cache_tokens",
    "lookup",
    "known_names",
]


class UnknownAcceleratorError(CapschedError, KeyError):
    """:func:`lookup` was given a name that matches no row of the table.

    Attributes:
        name: the name looked up.
        suggestions: the closest spec names (may be empty).
    """

    def __init__(self, name: str, suggestions: "list[str] | tuple[str, ...]" = ()) -> None:
        self.name = name
        self.suggestions = tuple(suggestions)
        hint = f"; did you mean {', '.join(map(repr, self.suggestions))}?" if self.suggestions else ""
        super().__init__(f"unknown accelerator {name!r}{hint} (known: {', '.join(known_names())})")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class AcceleratorSpec:
    """One accelerator model's vendor figures.

    Attributes:
        name: the canonical spec name, e.g. ``"H100-SXM"``.
        aliases: other names for it, including the strings NVML reports
            (``"NVIDIA H100 80GB HBM3"``).
        vendor: ``"nvidia"``, ``"amd"`` or ``"intel"``.
        peak_tflops: peak dense (no structured sparsity) bf16 tensor throughput in
            TFLOP/s; fp16 for parts without bf16 (T4, V100), see ``dtype``.
        dtype: ``"bf16"`` or ``"fp16"``: what ``peak_tflops`` counts.
        memory_bandwidth_gbs: peak memory bandwidth in GB/s (10^9 bytes per second).
        memory_gib: device memory in GiB (see the module docstring).
        tdp_w: board power (TDP / max power) in watts.
        max_clock_mhz: the max SM (or compute engine) clock in MHz, as NVML reports it
            where known, else the vendor's peak engine clock; ``None`` if unpublished.
        sm_count: streaming multiprocessors (NVIDIA), compute units (AMD), ``None`` where
            the part has no such unit or it is unpublished.
    """

    name: str
    aliases: tuple[str, ...]
    vendor: str
    peak_tflops: float
    dtype: str
    memory_bandwidth_gbs: float
    memory_gib: float
    tdp_w: float
    max_clock_mhz: Optional[float]
    sm_count: Optional[int]

    @property
    def flops_per_clock(self) -> Optional[float]:
        """Work per clock cycle: ``peak_tflops * 1e12 / (max_clock_mhz * 1e6)`` FLOP per
        cycle, so that ``flops_per_clock x max clock = peak``; ``None`` without a max clock."""
        if self.max_clock_mhz is None:
            return None
        return self.peak_tflops * 1e6 / self.max_clock_mhz

    @property
    def capacity(self) -> float:
        """Capacity at max clock in TFLOP/s (= :func:`capacity` of this spec)."""
        return capacity(self)


# name, aliases (NVML/nvidia-smi strings and common spellings), vendor,
# dense bf16 TFLOP/s, dtype, bandwidth GB/s, memory GiB, TDP W, max SM clock MHz, SMs
_ROWS: tuple[AcceleratorSpec, ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet (SXM5: 989 dense bf16, 3.35 TB/s, 80 GB, 700 W);
    # SMs from the NVIDIA H100 (Hopper) architecture whitepaper; max SM clock as NVML reports.
    AcceleratorSpec("H100-SXM", ("NVIDIA H100 80GB HBM3", "H100 SXM5", "H100-SXM5-80GB"),
                    "nvidia", 989.4, "bf16", 3350, 80, 700, 1980, 132),
    # NVIDIA H100 Tensor Core GPU datasheet (PCIe: 756 dense bf16, 2.0 TB/s, 80 GB, 350 W);
    # 114 SMs per the Hopper whitepaper; max SM clock as NVML reports.
    AcceleratorSpec("H100-PCIe", ("NVIDIA H100 PCIe", "H100 PCIe", "H100-PCIE-80GB"),
                    "nvidia", 756.0, "bf16", 2000, 80, 350, 1755, 114),
    # NVIDIA H100 NVL product brief (1671 sparse = 835.5 dense bf16, 3.9 TB/s, 94 GB HBM3,
    # 350-400 W configurable: the top of the range is used); full GH100 SM count of H100 SXM.
    AcceleratorSpec("H100-NVL", ("NVIDIA H100 NVL", "H100 NVL"),
                    "nvidia", 835.5, "bf16", 3900, 94, 400, 1785, 132),
    # NVIDIA H200 Tensor Core GPU datasheet (SXM: 989 dense bf16, 4.8 TB/s, 141 GB, 700 W);
    # same GH100 die and SM count as H100 SXM; NVML max SM clock 1980 MHz.
    AcceleratorSpec("H200", ("NVIDIA H200", "H200 SXM", "H200-SXM", "NVIDIA H200 141GB HBM3e"),
                    "nvidia", 989.4, "bf16", 4800, 141, 700, 1980, 132),
    # NVIDIA HGX B200 / DGX B200 datasheet (per GPU: 2.25 PF dense bf16, 8 TB/s, 180 GB,
    # 1000 W); 148 SMs as the CUDA driver reports; max clock approximate (not in datasheet).
    AcceleratorSpec("B200", ("NVIDIA B200", "B200 SXM", "B200-SXM"),
                    "nvidia", 2250.0, "bf16", 8000, 180, 1000, 1965, 148),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB: 312 bf16, 2039 GB/s, 400 W);
    # 108 SMs per the NVIDIA A100 (Ampere) architecture whitepaper; max SM clock 1410 MHz.
    AcceleratorSpec("A100-SXM-80GB", ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB", "A100 80GB SXM"),
                    "nvidia", 312.0, "bf16", 2039, 80, 400, 1410, 108),
    # NVIDIA A100 Tensor Core GPU datasheet (SXM4 40GB: 312 bf16, 1555 GB/s, 400 W).
    AcceleratorSpec("A100-40GB", ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB", "A100-SXM-40GB"),
                    "nvidia", 312.0, "bf16", 1555, 40, 400, 1410, 108),
    # NVIDIA A100 Tensor Core GPU datasheet (PCIe 80GB: 312 bf16, 1935 GB/s, 300 W).
    AcceleratorSpec("A100-PCIe", ("NVIDIA A100 80GB PCIe", "A100 80GB PCIe", "A100-PCIE-80GB", "A100-PCIe-80GB"),
                    "nvidia", 312.0, "bf16", 1935, 80, 300, 1410, 108),
    # NVIDIA A100 PCIe product brief, 40 GB version (312 bf16, 1555 GB/s, 250 W).
    AcceleratorSpec("A100-PCIe-40GB", ("NVIDIA A100-PCIE-40GB", "A100 40GB PCIe"),
                    "nvidia", 312.0, "bf16", 1555, 40, 250, 1410, 108),
    # NVIDIA L40S datasheet (362 dense bf16, 864 GB/s, 48 GB GDDR6, 350 W); 142 SMs per the
    # Ada Lovelace architecture whitepaper; 2520 MHz is the boost clock (NVML max may be higher).
    AcceleratorSpec("L40S", ("NVIDIA L40S",),
                    "nvidia", 362.05, "bf16", 864, 48, 350, 2520, 142),
    # NVIDIA L4 Tensor Core GPU datasheet (121 dense bf16, 300 GB/s, 24 GB, 72 W); 58 SMs
    # per the Ada whitepaper; 2040 MHz boost clock.
    AcceleratorSpec("L4", ("NVIDIA L4",),
                    "nvidia", 121.0, "bf16", 300, 24, 72, 2040, 58),
    # NVIDIA A40 datasheet (149.7 dense bf16, 696 GB/s, 48 GB GDDR6, 300 W); 84 SMs (336
    # tensor cores / 4); 1740 MHz boost clock.
    AcceleratorSpec("A40", ("NVIDIA A40",),
                    "nvidia", 149.7, "bf16", 696, 48, 300, 1740, 84),
    # AWS EC2 G5 (A10G) product page and NVIDIA GA102 whitepaper: 80 SMs, 1710 MHz boost,
    # 600 GB/s, 24 GB, 300 W; tensor throughput is GeForce-class (fp32-accumulate at half
    # rate), ~70 dense bf16 TFLOP/s, which matches measured GEMM throughput.
    AcceleratorSpec("A10G", ("NVIDIA A10G",),
                    "nvidia", 70.0, "bf16", 600, 24, 300, 1710, 80),
    # NVIDIA A10 Tensor Core GPU datasheet (125 dense bf16, 600 GB/s, 24 GB, 150 W); 72 SMs,
    # 1695 MHz boost clock.
    AcceleratorSpec("A10", ("NVIDIA A10",),
                    "nvidia", 125.0, "bf16", 600, 24, 150, 1695, 72),
    # NVIDIA T4 Tensor Core GPU datasheet (65 fp16 mixed precision, no bf16; 320 GB/s, 16 GB,
    # 70 W); 40 SMs per the Turing whitepaper; NVML max SM clock 1590 MHz.
    AcceleratorSpec("T4", ("Tesla T4", "NVIDIA T4"),
                    "nvidia", 65.0, "fp16", 320, 16, 70, 1590, 40),
    # NVIDIA V100 Tensor Core GPU datasheet (SXM2 32GB: 125 fp16 tensor, no bf16; 900 GB/s,
    # 300 W); 80 SMs per the Volta whitepaper; NVML max SM clock 1530 MHz.
    AcceleratorSpec("V100-SXM", ("Tesla V100-SXM2-32GB", "V100-SXM2-32GB", "V100 SXM2"),
                    "nvidia", 125.0, "fp16", 900, 32, 300, 1530, 80),
    # NVIDIA V100 Tensor Core GPU datasheet (SXM2 16GB).
    AcceleratorSpec("V100-SXM-16GB", ("Tesla V100-SXM2-16GB", "V100-SXM2-16GB"),
                    "nvidia", 125.0, "fp16", 900, 16, 300, 1530, 80),
    # NVIDIA Ada Lovelace (AD102) architecture whitepaper, GeForce RTX 4090: 165.2 dense
    # bf16/fp16 with fp32 accumulate, 1008 GB/s, 24 GB GDDR6X, 450 W, 128 SMs, 2520 MHz boost
    # (NVML's max SM clock is higher: the card boosts past its rated clock).
    AcceleratorSpec("RTX-4090", ("NVIDIA GeForce RTX 4090", "GeForce RTX 4090", "RTX 4090", "4090"),
                    "nvidia", 165.2, "bf16", 1008, 24, 450, 2520, 128),
    # AMD Instinct MI300X data sheet (1307.4 dense bf16, 5.3 TB/s, 192 GB HBM3, 750 W,
    # 304 CUs, 2100 MHz peak engine clock).
    AcceleratorSpec("MI300X", ("AMD Instinct MI300X", "Instinct MI300X", "AMD MI300X"),
                    "amd", 1307.4, "bf16", 5300, 192, 750, 2100, 304),
    # AMD Instinct MI250X data sheet (383 bf16, 3.2 TB/s, 128 GB HBM2e, 560 W, 220 CUs,
    # 1700 MHz peak engine clock).
    AcceleratorSpec("MI250X", ("AMD Instinct MI250X", "Instinct MI250X", "AMD MI250X"),
                    "amd", 383.0, "bf16", 3276.8, 128, 560, 1700, 220),
    # Intel Gaudi 3 AI accelerator white paper / Hot Chips 2024 table of Gaudi generations:
    # Gaudi 2 432 bf16 TFLOP/s (MME), 96 GB HBM2e, 2.46 TB/s, 600 W (OAM); clock unpublished;
    # 24 TPCs + 2 MMEs, no SM equivalent.
    AcceleratorSpec("Gaudi2", ("Intel Gaudi 2", "Gaudi 2", "HL-225", "Habana Gaudi2"),
                    "intel", 432.0, "bf16", 2460, 96, 600, None, None),
)

#: The table, keyed by canonical spec name (in the order above).
SPECS: dict[str, AcceleratorSpec] = {s.name: s for s in _ROWS}


def _key(name: str) -> str:
    """Normalise a name for matching: lower case, vendor words and punctuation dropped."""
    s = name.lower().strip()
    s = re.sub(r"\b(nvidia|tesla|geforce|amd|instinct|intel|habana)\b", " ", s)
    return re.sub(r"[^a-z0-9]+", "", s)


def _build_index() -> dict[str, AcceleratorSpec]:
    index: dict[str, AcceleratorSpec] = {}
    for spec in _ROWS:
        for n in (spec.name, *spec.aliases):
            k = _key(n)
            other = index.get(k)
            if other is not None and other is not spec:  # pragma: no cover - a table bug
                raise RuntimeError(f"spec table: {n!r} is ambiguous ({other.name} / {spec.name})")
            index[k] = spec
    return index


_INDEX = _build_index()


def known_names() -> list[str]:
    """The canonical spec names, in table order."""
    return list(SPECS)


def lookup(name: str) -> AcceleratorSpec:
    """Find an accelerator's spec by name, alias, or the string NVML reports.

    Matching ignores case, punctuation, spaces and vendor words (``NVIDIA``, ``Tesla``,
    ``GeForce``, ``AMD``, ``Instinct``, ``Intel``, ``Habana``): ``"h100 sxm"``,
    ``"NVIDIA H100 80GB HBM3"`` and ``"H100-SXM"`` all give the H100 SXM row. A name NVML
    might decorate with a memory size or form factor not in the table (``"NVIDIA L4 24GB"``)
    or a MIG profile (``"NVIDIA A100-SXM4-40GB MIG 1g.5gb"``) after a space or punctuation
    is matched too; nothing else is guessed (``"NVIDIA H100 NVL"`` is not taken for an
    H100 SXM, nor ``"A100 80GB"`` for an A10 with "080GB": it names two rows, so it is
    refused with both suggested).

    Raises:
        UnknownAcceleratorError: no row matches (a ``KeyError``); the message lists the
            closest spec names.
        TypeError: ``name`` is not a str.
    """
    if not isinstance(name, str):
        raise TypeError(f"an accelerator name must be a str, got {type(name).__name__}")
    k = _key(name)
    spec = _INDEX.get(k)
    if spec is not None:
        return spec
    # A known name followed only by a memory size, memory type or MIG profile
    # ("NVIDIA L4 24GB", "NVIDIA A100-SXM4-40GB MIG 1g.5gb"); the longest such name wins.
    # Anything else after it ("H100 NVL", "L40" vs "L4", "A100X" vs "A10") is not guessed.
    # The decoration must be a separate token (a space or punctuation before it), or the
    # model's own digits would be read as a size: "A100 80GB" is not an A10 + "080GB".
    cuts = _token_ends(name)
    best = None
    for kk, s in _INDEX.items():
        if (k.startswith(kk) and len(kk) in cuts and _DECORATION.fullmatch(k[len(kk):])
                and (best is None or len(kk) > len(best[0]))):
            best = (kk, s)
    if best is not None:
        return best[1]
    raise UnknownAcceleratorError(name, _suggest(name))


def _token_ends(name: str) -> set[int]:
    """The offsets in ``_key(name)`` where a token of ``name`` ends (a separator follows)."""
    s = name.lower().strip()
    s = re.sub(r"\b(nvidia|tesla|geforce|amd|instinct|intel|habana)\b", " ", s)
    ends: set[int] = set()
    n = 0
    for part in re.split(r"[^a-z0-9]+", s):
        n += len(part)
        ends.add(n)
    return ends


_DECORATION = re.compile(r"(\d+gb)?(hbm\d*e?|gddr\d*x?)?(mig[0-9a-z]*)?")


def _suggest(name: str) -> list[str]:
    k = _key(name)
    keys = list(_INDEX)
    starting = [kk for kk in keys if k and kk.startswith(k)]  # "H100" -> H100-SXM, H100-PCIe
    close = starting + difflib.get_close_matches(k, keys, n=6, cutoff=0.5)
    out: list[str] = []
    for c in close:
        n = _INDEX[c].name
        if n not in out:
            out.append(n)
    return out[:3]


def capacity(spec: AcceleratorSpec, clock_mhz: Optional[float] = None) -> float:
    """A spec's capacity in TFLOP/s: peak dense bf16 (fp16) throughput.

    ``capacity = work per clock x clock``: at the max clock (``clock_mhz=None``) this is
    exactly ``spec.peak_tflops``; at a lower clock it scales linearly, ``peak x clock /
    max_clock`` (see the module docstring for why work per clock is defined as
    peak / max clock).

    Raises:
        ConfigError: ``clock_mhz`` is not a finite number > 0, or is given for a spec
            with no known max clock.
    """
    if not isinstance(spec, AcceleratorSpec):
        raise TypeError(f"capacity() takes an AcceleratorSpec, got {type(spec).__name__}")
    if clock_mhz is None:
        return float(spec.peak_tflops)
    c = _positive("clock_mhz", clock_mhz)
    fpc = spec.flops_per_clock
    if fpc is None:
        raise ConfigError(f"{spec.name} has no known max clock, so capacity at {clock_mhz!r} MHz is unknown")
    cap = fpc * c / 1e6
    if not math.isfinite(cap):
        raise ConfigError(f"clock_mhz {clock_mhz!r} is too large: the capacity of {spec.name} at it overflows a float")
    return cap


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = _float_or_nan(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ConfigError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {_short(value)}")
    return v


def _float_or_nan(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (OverflowError, ValueError, TypeError):  # an int beyond a float's range
        return math.nan


def _short(value: object) -> str:
    r = repr(value)
    return r if len(r) <= 40 else f"{r[:20]}... ({len(r)} characters)"


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: float = 2) -> float:
    """Bytes of KV cache one token takes: ``2 (K and V) x layers x kv_heads x head_dim x
    dtype_bytes``. For Llama-2-7B (32 layers, 32 KV heads of 128, fp16): 524,288 bytes.

    Raises:
        ConfigError: a count is not an integer >= 1, or ``dtype_bytes`` is not > 0, or
            the product is too large for a float.
    """
    for n, v in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ConfigError(f"{n} must be an integer >= 1, got {_short(v)}")
    d = _positive("dtype_bytes", dtype_bytes)
    out = _float_or_nan(2 * int(layers) * int(kv_heads) * int(head_dim)) * d
    if not math.isfinite(out):
        raise ConfigError(
            f"KV bytes per token (2 x layers {_short(layers)} x kv_heads {_short(kv_heads)} x head_dim "
            f"{_short(head_dim)} x dtype_bytes {dtype_bytes!r}) is too large for a float"
        )
    return out


def kv_cache_tokens(
    memory_gib: float,
    weights_gib: float,
    kv_bytes_per_token: float,
    reserve_fraction: float = 0.1,
) -> int:
    """How many tokens of KV cache fit on a device (for :class:`capsched.Device`'s
    ``kv_tokens``).

    ``floor((memory_gib x (1 - reserve_fraction) - weights_gib) x 2^30 / kv_bytes_per_token)``:
    the memory left after the reserve (activations, the CUDA context, fragmentation;
    default 10%, as vLLM's ``gpu_memory_utilization=0.9``) and the model's weights, in
    whole tokens.

    Args:
        memory_gib: device memory in GiB (> 0).
        weights_gib: the model's weights on this device in GiB (>= 0).
        kv_bytes_per_token: bytes of KV cache per token (> 0), e.g. from
            :func:`kv_bytes_per_token`.
        reserve_fraction: share of memory kept free, in [0, 1).

    Raises:
        ConfigError: a value out of range, weights that do not fit in the memory left
            after the reserve (the message gives both figures), or a token count too large
            for a float.
    """
    mem = _positive("memory_gib", memory_gib)
    w = _positive("weights_gib", weights_gib, allow_zero=True)
    per = _positive("kv_bytes_per_token", kv_bytes_per_token)
    r = reserve_fraction
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not (0.0 <= _float_or_nan(r) < 1.0):
        raise ConfigError(f"reserve_fraction must be a number in [0, 1), got {_short(reserve_fraction)}")
    usable = mem * (1.0 - float(r))
    if w >= usable:
        raise ConfigError(
            f"the weights ({w:g} GiB) do not fit in the {usable:g} GiB left of {mem:g} GiB "
            f"after reserving {float(r):.0%}: no room for a KV cache"
        )
    tokens = (usable - w) * 2**30 / per
    if not math.isfinite(tokens):
        raise ConfigError(
            f"the KV cache of {usable - w:g} GiB at {per:g} bytes per token is too many tokens for a float"
        )
    return int(math.floor(tokens))
