"""Device discovery: which GPUs this machine has, and a live feed of their clocks.

:func:`discover` asks NVML through nvidia-ml-py (``import pynvml``; the optional
``nvml`` extra: ``pip install "capsched[nvml]"``) for each GPU's model, memory, SM
clocks and MIG slices. Without nvidia-ml-py, or when NVML cannot start, it runs
``nvidia-smi --query-gpu=...`` instead (whole GPUs only: MIG slices need NVML). With
neither, or with no GPU, it returns an empty list: having no GPU is not an error here.
:func:`discover_with_reason` also says why nothing was found.

``CUDA_VISIBLE_DEVICES`` is honoured as CUDA reads it: a comma-separated list of
indices, ``GPU-<uuid>`` and ``MIG-<uuid>`` entries (a uuid may be shortened to a unique
prefix), in the order listed; an entry that names no device ends the list (it and all
after it are ignored, as CUDA does); an empty value hides every device; unset shows all.

Names: the k-th visible GPU is ``"cuda:k"`` (indices in NVML's PCI bus order, which is
CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``); MIG slot j of it is ``"cuda:k/mig<j>"``.
They are logical names: a worker reaches a device through its ``uuid``.

:class:`ClockFeed` polls NVML's current and max SM clocks and passes them to a callback,
for example ``Scheduler.set_clock``, so that the scheduler sees throttling.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, Optional, cast

from .errors import CapschedError
from .specs import AcceleratorSpec, UnknownAcceleratorError, lookup

if TYPE_CHECKING:  # devices imports this module; import it lazily at run time
    from .devices import Device

__all__ = [
    "ClockFeed",
    "DiscoveredDevice",
    "MigDevice",
    "NVMLUnavailableError",
    "NVIDIA_SMI_QUERY",
    "discover",
    "discover_with_reason",
]

log = logging.getLogger(__name__)

#: The fields the ``nvidia-smi`` fallback asks for, in order.
NVIDIA_SMI_QUERY = "index,uuid,name,memory.total,clocks.sm,clocks.max.sm"
#: Seconds the ``nvidia-smi`` fallback may take.
NVIDIA_SMI_TIMEOUT_S = 10.0

_GIB = 2**30
_MIB = 2**20


class NVMLUnavailableError(CapschedError, RuntimeError):
    """NVML is needed (a :class:`ClockFeed` poll) but nvidia-ml-py is not installed or
    NVML did not start; the message says which."""


@dataclasses.dataclass(frozen=True)
class MigDevice:
    """One MIG slice (a GPU instance with its compute instance) of a discovered GPU.

    Attributes:
        index: the MIG slot on the parent GPU (NVML's MIG device index).
        uuid: ``"MIG-..."``; ``CUDA_VISIBLE_DEVICES=<uuid>`` gives a worker this slice.
        name: the logical name, ``"cuda:<k>/mig<index>"``.
        parent_uuid: the parent GPU's uuid.
        model: the parent GPU's model string, as NVML reports it.
        profile: the MIG profile, e.g. ``"1g.10gb"``, when NVML's name carries it.
        memory_total: the slice's memory in bytes.
        sm_count: the slice's SMs, if NVML reports them.
        sm_share: the slice's share of the parent's compute, in (0, 1]: its SMs over the
            parent's, else its memory over the parent's; ``None`` if neither is known.
        gpu_instance_id: NVML's GPU instance id, if known.
        compute_instance_id: NVML's compute instance id, if known.
        clock_sm_max_mhz: the parent's max SM clock (slices share the parent's clock).
        power_limit_w: the parent's enforced power limit in watts, if known.
    """

    index: int
    uuid: str
    name: str
    parent_uuid: str
    model: str
    profile: Optional[str]
    memory_total: int
    sm_count: Optional[int]
    sm_share: Optional[float]
    gpu_instance_id: Optional[int] = None
    compute_instance_id: Optional[int] = None
    clock_sm_max_mhz: Optional[float] = None
    power_limit_w: Optional[float] = None

    @property
    def spec(self) -> Optional[AcceleratorSpec]:
        """The parent's spec-table row, or ``None`` if its model is not in the table."""
        return _spec_or_none(self.model)

    def to_device(self, **overrides: Any) -> "Device":
        """A :class:`capsched.Device` for this slice: the parent's capacity (from the
        spec table, or 1.0 for an unknown model) times :attr:`sm_share`, this slice's
        memory, the parent's max clock, and the parent's power times the share.
        ``overrides`` replace any of Device's fields (e.g. ``kv_tokens=...``)."""
        from .devices import Device

        spec = self.spec
        share = self.sm_share
        if share is None:
            log.warning("MIG slice %s: its share of %s is unknown; it gets the whole GPU's capacity",
                        self.name, self.model)
            share = 1.0
        base = spec.peak_tflops if spec is not None else 1.0
        power = self.power_limit_w if self.power_limit_w is not None else (spec.tdp_w if spec else None)
        kwargs: dict[str, Any] = {
            "name": self.name,
            "capacity": base * share,
            "model": spec.name if spec is not None else None,
            "memory_gib": self.memory_total / _GIB if self.memory_total > 0 else None,
            "max_clock_mhz": self.clock_sm_max_mhz,
            "power_w": power * share if power is not None else None,
        }
        kwargs.update(overrides)
        return Device(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields, plus ``capacity`` (TFLOP/s, or ``None`` for an
        unknown model)."""
        d = dataclasses.asdict(self)
        spec = self.spec
        d["capacity"] = spec.peak_tflops * self.sm_share if spec is not None and self.sm_share else None
        return d


@dataclasses.dataclass(frozen=True)
class DiscoveredDevice:
    """One GPU that :func:`discover` found.

    Attributes:
        index: NVML's index (PCI bus order), as ``nvidia-smi`` shows it.
        uuid: ``"GPU-..."``.
        name: the logical name, ``"cuda:<k>"`` for the k-th visible GPU.
        model: the model string NVML reports, e.g. ``"NVIDIA H100 80GB HBM3"``.
        memory_total: memory in bytes.
        sm_count: SMs, from the spec table (NVML does not report a whole GPU's SM
            count); ``None`` for a model not in the table.
        clock_sm_mhz: the current SM clock in MHz (low while the GPU idles), if known.
        clock_sm_max_mhz: the max SM clock in MHz, if known.
        power_limit_w: the enforced power limit in watts, if known.
        mig_enabled: whether MIG mode is on (then :attr:`mig` lists the slices).
        mig: the visible MIG slices.
        source: ``"nvml"`` or ``"nvidia-smi"``: where the figures came from.
    """

    index: int
    uuid: str
    name: str
    model: str
    memory_total: int
    sm_count: Optional[int] = None
    clock_sm_mhz: Optional[float] = None
    clock_sm_max_mhz: Optional[float] = None
    power_limit_w: Optional[float] = None
    mig_enabled: bool = False
    mig: tuple[MigDevice, ...] = ()
    source: str = "nvml"

    @property
    def spec(self) -> Optional[AcceleratorSpec]:
        """The spec-table row of :attr:`model`, or ``None`` if it is not in the table."""
        return _spec_or_none(self.model)

    @property
    def capacity(self) -> Optional[float]:
        """The whole GPU's capacity in TFLOP/s from the spec table, or ``None``."""
        spec = self.spec
        return None if spec is None else spec.peak_tflops

    def to_device(self, **overrides: Any) -> "Device":
        """A :class:`capsched.Device` for the whole GPU.

        A model in the spec table gives the capacity (peak dense bf16 TFLOP/s) and the
        fields NVML did not measure; the measured memory, max clock and power limit are
        used where known. An unknown model gets capacity 1.0 (with a logged warning):
        pass ``capacity=...`` in ``overrides`` to place it by its real capacity. The
        current clock is not used (it is low whenever the GPU idles); feed clocks with
        :class:`ClockFeed`. ``overrides`` replace any of Device's fields.
        """
        from .devices import Device

        spec = self.spec
        if spec is None and "capacity" not in overrides:
            log.warning(
                "%s: model %r is not in capsched's spec table; it gets capacity 1.0 "
                "(give Device(name, capacity=...) to place it by its real capacity)",
                self.name, self.model,
            )
        kwargs: dict[str, Any] = {
            "name": self.name,
            "model": spec.name if spec is not None else None,
            "memory_gib": self.memory_total / _GIB if self.memory_total > 0 else None,
            "max_clock_mhz": self.clock_sm_max_mhz,
            "power_w": self.power_limit_w,
        }
        kwargs.update(overrides)
        return Device(**kwargs)

    def to_devices(self, **overrides: Any) -> list["Device"]:
        """The placement targets this GPU gives: one Device per visible MIG slice when
        MIG is on (the whole GPU cannot run work then), else ``[self.to_device()]``."""
        if self.mig_enabled:
            return [m.to_device(**overrides) for m in self.mig]
        return [self.to_device(**overrides)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields, plus ``spec`` (the spec name or ``None``) and
        ``capacity`` (TFLOP/s or ``None``); ``mig`` is a list of dicts."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["mig"] = [m.to_dict() for m in self.mig]
        spec = self.spec
        d["spec"] = spec.name if spec is not None else None
        d["capacity"] = self.capacity
        return d


def _spec_or_none(model: str) -> Optional[AcceleratorSpec]:
    try:
        return lookup(model)
    except (UnknownAcceleratorError, TypeError):
        return None


# ---------------------------------------------------------------------- discovery


@dataclasses.dataclass
class _Gpu:
    """What a backend found about one GPU, before CUDA_VISIBLE_DEVICES and naming."""

    index: int
    uuid: str
    model: str
    memory_total: int
    clock_sm_mhz: Optional[float]
    clock_sm_max_mhz: Optional[float]
    power_limit_w: Optional[float] = None
    mig_enabled: bool = False
    mig: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    source: str = "nvml"


def discover() -> list[DiscoveredDevice]:
    """The GPUs this process may use, in ``CUDA_VISIBLE_DEVICES`` order.

    NVML (nvidia-ml-py) first, then ``nvidia-smi``; with neither, or no GPU, ``[]``.
    Never raises because there is no GPU; see the module docstring for names and
    ``CUDA_VISIBLE_DEVICES``.
    """
    return discover_with_reason()[0]


def discover_with_reason() -> tuple[list[DiscoveredDevice], str]:
    """:func:`discover`, plus a sentence saying where the devices came from or why none
    were found (for messages such as ``capsched devices`` prints)."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None and not cvd.strip():
        return [], f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU"
    gpus, reason = _probe()
    if not gpus:
        return [], reason
    found = _apply_visible(gpus, cvd)
    if not found:
        return [], f"{reason}, but CUDA_VISIBLE_DEVICES={cvd!r} hides them all"
    return found, reason


def _probe() -> tuple[list[_Gpu], str]:
    why_not_nvml: str
    try:
        import pynvml
    except ImportError:
        why_not_nvml = "nvidia-ml-py (pynvml) is not installed"
    else:
        try:
            gpus = _nvml_gpus(pynvml)
        except Exception as exc:  # NVMLError (no driver, no GPU, ...) or a broken binding
            why_not_nvml = f"NVML did not start ({_describe(exc)})"
        else:
            if gpus:
                return gpus, f"NVML found {len(gpus)} GPU(s)"
            return [], "NVML found no GPU"
    log.debug("discovery: %s; trying nvidia-smi", why_not_nvml)
    gpus, why_not_smi = _nvidia_smi_gpus()
    if gpus:
        return gpus, f"nvidia-smi found {len(gpus)} GPU(s) ({why_not_nvml})"
    return [], f"{why_not_nvml}; {why_not_smi}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str:
    """Text from NVML or nvidia-smi: bytes as UTF-8, with anything that is not replaced
    (a name may come out garbled; a number that does not parse makes its row skipped)."""
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _try(fn: Callable[[], Any], errors: tuple[type[BaseException], ...]) -> Any:
    try:
        return fn()
    except errors:
        return None


def _nvml_error(pynvml: ModuleType) -> tuple[type[BaseException], ...]:
    err = getattr(pynvml, "NVMLError", None)
    return (err,) if isinstance(err, type) and issubclass(err, BaseException) else (Exception,)


def _nvml_gpus(pynvml: ModuleType) -> list[_Gpu]:
    """Every GPU NVML sees (ignoring CUDA_VISIBLE_DEVICES). Raises if NVML fails to start."""
    err = _nvml_error(pynvml)
    sm = getattr(pynvml, "NVML_CLOCK_SM", 1)
    mig_on = getattr(pynvml, "NVML_DEVICE_MIG_ENABLE", 1)
    pynvml.nvmlInit()
    try:
        out = []
        for i in range(int(pynvml.nvmlDeviceGetCount())):
            try:
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(pynvml.nvmlDeviceGetUUID(h))
                model = _text(pynvml.nvmlDeviceGetName(h))
                memory = int(pynvml.nvmlDeviceGetMemoryInfo(h).total)
            except err as exc:  # a lost or inaccessible GPU: leave it out, keep the rest
                log.warning("discovery: NVML GPU %d skipped: %s", i, _describe(exc))
                continue
            cur = _try(lambda: pynvml.nvmlDeviceGetClockInfo(h, sm), err)
            mx = _try(lambda: pynvml.nvmlDeviceGetMaxClockInfo(h, sm), err)
            power_mw = _try(lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(h), err)
            mode = _try(lambda: pynvml.nvmlDeviceGetMigMode(h), err)
            enabled = bool(mode) and mode[0] == mig_on
            gpu = _Gpu(
                index=i,
                uuid=uuid,
                model=model,
                memory_total=memory,
                clock_sm_mhz=float(cur) if cur else None,
                clock_sm_max_mhz=float(mx) if mx else None,
                power_limit_w=power_mw / 1000.0 if power_mw else None,
                mig_enabled=enabled,
            )
            if enabled:
                gpu.mig = _nvml_migs(pynvml, h, err)
            out.append(gpu)
        return out
    finally:
        _try(pynvml.nvmlShutdown, err)


def _nvml_migs(pynvml: ModuleType, h: Any, err: tuple[type[BaseException], ...]) -> list[dict[str, Any]]:
    slots = _try(lambda: pynvml.nvmlDeviceGetMaxMigDeviceCount(h), err) or 0
    migs = []
    for j in range(int(slots)):
        try:
            mh = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
        except err:  # an empty slot
            continue
        uuid = _try(lambda: _text(pynvml.nvmlDeviceGetUUID(mh)), err)
        if not uuid:
            continue
        attrs = _try(lambda: pynvml.nvmlDeviceGetAttributes(mh), err)
        mem = _try(lambda: int(pynvml.nvmlDeviceGetMemoryInfo(mh).total), err)
        if mem is None and attrs is not None:
            mem = int(getattr(attrs, "memorySizeMB", 0)) * _MIB
        name = _try(lambda: _text(pynvml.nvmlDeviceGetName(mh)), err) or ""
        m = re.search(r"(\d+g\.\d+gb(?:\+me)?)", name, re.IGNORECASE)
        sms = getattr(attrs, "multiprocessorCount", None) if attrs is not None else None
        migs.append(
            {
                "index": j,
                "uuid": uuid,
                "profile": m.group(1) if m else None,
                "memory_total": int(mem or 0),
                "sm_count": int(sms) if sms else None,
                "gpu_instance_id": _try(lambda: int(pynvml.nvmlDeviceGetGpuInstanceId(mh)), err),
                "compute_instance_id": _try(lambda: int(pynvml.nvmlDeviceGetComputeInstanceId(mh)), err),
            }
        )
    return migs


def _nvidia_smi_gpus() -> tuple[list[_Gpu], str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi is not on PATH"
    cmd = [exe, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]
    try:
        # (bytes, decoded below: text=True decodes by the locale inside run() and raised
        # UnicodeDecodeError on output that is not valid in it)
        proc = subprocess.run(cmd, capture_output=True, timeout=NVIDIA_SMI_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return [], f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT_S:g} s"
    except (OSError, subprocess.SubprocessError) as exc:
        return [], f"nvidia-smi could not run ({_describe(exc)})"
    stdout, stderr = _text(proc.stdout), _text(proc.stderr)
    if proc.returncode != 0:
        msg = (stderr or stdout).strip().splitlines()
        return [], f"nvidia-smi failed (exit {proc.returncode}{': ' + msg[0] if msg else ''})"
    gpus = []
    for row in csv.reader(stdout.splitlines(), skipinitialspace=True):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 6:
            log.warning("discovery: unexpected nvidia-smi line %r skipped", ",".join(row))
            continue
        idx, uuid, model, mem, cur, mx = (c.strip() for c in row)
        index = _number(idx)
        if index is None:
            log.warning("discovery: unexpected nvidia-smi line %r skipped", ",".join(row))
            continue
        mem_mib = _number(mem)
        gpus.append(
            _Gpu(
                index=int(index),
                uuid=uuid,
                model=model,
                memory_total=int(mem_mib * _MIB) if mem_mib else 0,
                clock_sm_mhz=_number(cur),
                clock_sm_max_mhz=_number(mx),
                source="nvidia-smi",
            )
        )
    if not gpus:
        return [], "nvidia-smi listed no GPU"
    return gpus, ""


def _number(text: str) -> Optional[float]:
    """A number from nvidia-smi's CSV, or None for "[N/A]", "[Not Supported]" and the
    like, and for a negative or non-finite value (no field it is asked for can be one)."""
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _apply_visible(gpus: list[_Gpu], cvd: Optional[str]) -> list[DiscoveredDevice]:
    """Select and order GPUs (and MIG slices) by CUDA_VISIBLE_DEVICES, then name them."""
    # Each selected GPU with the MIG slot indices visible on it (None = all of them).
    chosen: dict[int, Optional[list[int]]] = {}
    by_pos = {pos: g for pos, g in enumerate(gpus)}
    if cvd is None:
        chosen = {pos: None for pos in by_pos}
    else:
        for token in (t.strip() for t in cvd.split(",")) if cvd.strip() else ():
            hit = _resolve(token, gpus)
            if hit is None:
                log.warning(
                    "CUDA_VISIBLE_DEVICES=%r: %r names no device; it and the entries after it "
                    "are ignored, as CUDA does", cvd, token,
                )
                break
            pos, slot = hit
            if slot is None:
                chosen[pos] = None
            else:
                slots = chosen.setdefault(pos, [])
                if slots is not None and slot not in slots:
                    slots.append(slot)
    out = []
    for k, (pos, slots) in enumerate(chosen.items()):
        g = by_pos[pos]
        name = f"cuda:{k}"
        spec = _spec_or_none(g.model)
        parent_sms = spec.sm_count if spec is not None else None
        migs = []
        for m in g.mig:
            if slots is not None and m["index"] not in slots:
                continue
            if parent_sms and m["sm_count"]:
                share: Optional[float] = min(1.0, m["sm_count"] / parent_sms)
            elif g.memory_total > 0 and m["memory_total"] > 0:
                share = min(1.0, m["memory_total"] / g.memory_total)
            else:
                share = None
            migs.append(
                MigDevice(
                    index=m["index"],
                    uuid=m["uuid"],
                    name=f"{name}/mig{m['index']}",
                    parent_uuid=g.uuid,
                    model=g.model,
                    profile=m["profile"],
                    memory_total=m["memory_total"],
                    sm_count=m["sm_count"],
                    sm_share=share,
                    gpu_instance_id=m["gpu_instance_id"],
                    compute_instance_id=m["compute_instance_id"],
                    clock_sm_max_mhz=g.clock_sm_max_mhz,
                    power_limit_w=g.power_limit_w,
                )
            )
        if slots is not None:  # keep the order CUDA_VISIBLE_DEVICES gave
            migs.sort(key=lambda m: slots.index(m.index))
        out.append(
            DiscoveredDevice(
                index=g.index,
                uuid=g.uuid,
                name=name,
                model=g.model,
                memory_total=g.memory_total,
                sm_count=parent_sms,
                clock_sm_mhz=g.clock_sm_mhz,
                clock_sm_max_mhz=g.clock_sm_max_mhz,
                power_limit_w=g.power_limit_w,
                mig_enabled=g.mig_enabled,
                mig=tuple(migs),
                source=g.source,
            )
        )
    return out


def _resolve(token: str, gpus: list[_Gpu]) -> Optional[tuple[int, Optional[int]]]:
    """(position in gpus, MIG slot or None) that a CUDA_VISIBLE_DEVICES entry names."""
    if re.fullmatch(r"\d+", token):
        i = int(token)
        for pos, g in enumerate(gpus):
            if g.index == i:
                return pos, None
        return None
    low = token.lower()
    if low.startswith("gpu-"):
        hits = [pos for pos, g in enumerate(gpus) if g.uuid.lower().startswith(low)]
        return (hits[0], None) if len(hits) == 1 else None
    if low.startswith("mig-gpu-"):  # the pre-R470 form MIG-GPU-<uuid>/<gi>/<ci>
        m = re.fullmatch(r"mig-(gpu-[0-9a-f-]+)/(\d+)/(\d+)", low)
        if not m:
            return None
        for pos, g in enumerate(gpus):
            if g.uuid.lower() == m.group(1):
                for s in g.mig:
                    if (s["gpu_instance_id"], s["compute_instance_id"]) == (int(m.group(2)), int(m.group(3))):
                        return pos, s["index"]
        return None
    if low.startswith("mig-"):
        mig_hits: list[tuple[int, Optional[int]]] = [
            (pos, s["index"]) for pos, g in enumerate(gpus) for s in g.mig if s["uuid"].lower().startswith(low)
        ]
        return mig_hits[0] if len(mig_hits) == 1 else None
    return None


# ---------------------------------------------------------------------- clock feed


class ClockFeed:
    """Polls NVML's SM clocks of discovered GPUs and passes them to a callback.

    Each poll calls ``on_clock(device_name, cur_mhz, max_mhz)`` once per placement target:
    the GPU's name, or each of its MIG slices' names (slices share the GPU's clock), so
    the names match :meth:`DiscoveredDevice.to_devices` and ``devices="auto"``. That is
    the signature of ``Scheduler.set_clock``::

        found = capsched.devices.discover()
        scheduler = capsched.Scheduler("auto")
        feed = ClockFeed(found, scheduler.set_clock)
        feed.start(interval_s=1.0)        # a daemon thread; feed.stop() ends it

    ``cur_mhz`` is the current SM clock, capped at the max. A GPU that is idle runs at a
    low clock that says nothing about what it could do; with ``idle_as_max`` (the
    default) a GPU whose NVML clock reasons include "GPU idle" is reported at its max
    clock, so that only real throttling (thermal, power, a clock cap) lowers capacity.

    Args:
        devices: what :func:`discover` returned (or some of it).
        on_clock: the callback.
        idle_as_max: report an idle GPU at its max clock (default True).
        names: optional mapping from discovered names to the names the scheduler uses.
        on_error: called with the exception when a poll in the background thread fails
            (NVML error, or the callback raised); by default the error is logged.
    """

    def __init__(
        self,
        devices: Sequence[DiscoveredDevice],
        on_clock: Callable[[str, float, float], Any],
        *,
        idle_as_max: bool = True,
        names: Optional[Mapping[str, str]] = None,
        on_error: Optional[Callable[[BaseException], Any]] = None,
    ) -> None:
        if not callable(on_clock):
            raise TypeError(f"on_clock must be callable (name, cur_mhz, max_mhz), got {on_clock!r}")
        self._devices = list(devices)
        for d in self._devices:
            if not isinstance(d, DiscoveredDevice):
                raise TypeError(f"ClockFeed takes DiscoveredDevice objects (from discover()), got {d!r}")
        self._on_clock = on_clock
        self._idle_as_max = bool(idle_as_max)
        self._names = dict(names or {})
        self._on_error = on_error
        self._nvml: Optional[ModuleType] = None
        self._handles: dict[str, Any] = {}
        self._lock = threading.Lock()  # one poll at a time
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- NVML

    def _init(self) -> ModuleType:
        if self._nvml is not None:
            return self._nvml
        try:
            import pynvml
        except ImportError as exc:
            raise NVMLUnavailableError(
                "ClockFeed needs NVML: pip install nvidia-ml-py (capsched's 'nvml' extra)"
            ) from exc
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            raise NVMLUnavailableError(f"ClockFeed: NVML did not start ({_describe(exc)})") from exc
        self._nvml = pynvml
        return cast(ModuleType, pynvml)

    def _read(self, pynvml: ModuleType, d: DiscoveredDevice) -> Optional[tuple[float, float]]:
        h = self._handles.get(d.uuid)
        if h is None:
            h = self._handles[d.uuid] = pynvml.nvmlDeviceGetHandleByUUID(d.uuid)
        sm = getattr(pynvml, "NVML_CLOCK_SM", 1)
        cur = float(pynvml.nvmlDeviceGetClockInfo(h, sm))
        mx = float(pynvml.nvmlDeviceGetMaxClockInfo(h, sm))
        if not mx > 0 or not cur > 0:
            return None
        if self._idle_as_max and self._idle(pynvml, h):
            cur = mx
        return min(cur, mx), mx

    @staticmethod
    def _idle(pynvml: ModuleType, h: Any) -> bool:
        fn = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        if fn is None:
            return False
        idle_bit: Any = getattr(pynvml, "nvmlClocksEventReasonGpuIdle", None)
        if idle_bit is None:
            idle_bit = getattr(pynvml, "nvmlClocksThrottleReasonGpuIdle", 0x1)
        try:
            return bool(int(fn(h)) & int(idle_bit))
        except _nvml_error(pynvml):
            return False

    # -- polling

    def poll_once(self) -> list[tuple[str, float, float]]:
        """Read every device's clocks once and call ``on_clock`` for each target.

        A device NVML cannot read this time is skipped (and logged). Returns the
        ``(name, cur_mhz, max_mhz)`` triples passed to the callback.

        Raises:
            NVMLUnavailableError: nvidia-ml-py is missing or NVML did not start.
            Exception: whatever ``on_clock`` raised.
        """
        with self._lock:
            pynvml = self._init()
            err = _nvml_error(pynvml)
            readings = []
            for d in self._devices:
                try:
                    r = self._read(pynvml, d)
                except err as exc:
                    self._handles.pop(d.uuid, None)
                    log.warning("ClockFeed: %s (%s) not read: %s", d.name, d.uuid, _describe(exc))
                    continue
                if r is None:
                    continue
                targets = [m.name for m in d.mig] if d.mig_enabled else [d.name]
                for t in targets:
                    readings.append((self._names.get(t, t), r[0], r[1]))
        for name, cur, mx in readings:
            self._on_clock(name, cur, mx)
        return readings

    def start(self, interval_s: float = 1.0) -> None:
        """Poll every ``interval_s`` seconds (> 0) in a daemon thread until :meth:`stop`.

        Raises:
            RuntimeError: the feed is already running.
            ValueError: a bad interval.
        """
        if (
            isinstance(interval_s, bool)
            or not isinstance(interval_s, (int, float))
            or not 0 < interval_s <= threading.TIMEOUT_MAX  # (beyond it the thread's wait raises)
        ):
            raise ValueError(
                f"interval_s must be a number of seconds > 0 and <= {threading.TIMEOUT_MAX:g}, got {interval_s!r}"
            )
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("this ClockFeed is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(float(interval_s),), name="capsched-clock-feed", daemon=True
        )
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:
                if self._on_error is not None:
                    try:
                        self._on_error(exc)
                    except Exception:  # never let the thread die of its error handler
                        log.exception("ClockFeed: on_error raised")
                else:
                    log.warning("ClockFeed: poll failed: %s", _describe(exc))
            self._stop.wait(interval_s)

    def stop(self, timeout: Optional[float] = 5.0) -> None:
        """Stop the thread (waiting up to ``timeout`` seconds for it) and release NVML."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
        self._thread = None
        with self._lock:
            if self._nvml is not None:
                _try(self._nvml.nvmlShutdown, _nvml_error(self._nvml))
                self._nvml = None
                self._handles.clear()

    @property
    def running(self) -> bool:
        """Whether the background thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "ClockFeed":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
