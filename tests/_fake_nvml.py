"""A fake ``pynvml`` (nvidia-ml-py) module for discovery tests.

``make_module(gpus)`` returns a module object with the NVML functions capsched calls;
tests put it in ``sys.modules["pynvml"]`` with monkeypatch. The default fleet is an
H100 SXM (MIG off) and an A100 SXM4 40GB with MIG on and two instances (slots 0 and 3).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Optional

NVML_CLOCK_SM = 1
NVML_DEVICE_MIG_ENABLE = 1
NVML_DEVICE_MIG_DISABLE = 0
GPU_IDLE = 0x1
SW_THERMAL = 0x20


class NVMLError(Exception):
    """The fake's error: NVML's errors carry a numeric value."""

    def __init__(self, value: int = 999, text: str = "Unknown Error") -> None:
        super().__init__(text)
        self.value = value


class NVMLError_NotSupported(NVMLError):
    def __init__(self) -> None:
        super().__init__(3, "Not Supported")


class NVMLError_NotFound(NVMLError):
    def __init__(self) -> None:
        super().__init__(6, "Not Found")


@dataclasses.dataclass
class FakeMig:
    slot: int
    uuid: str
    name: str
    memory_mib: int
    sm_count: int
    gi: int
    ci: int


@dataclasses.dataclass
class FakeGpu:
    name: str
    uuid: str
    memory_mib: int
    clock: Optional[int]
    max_clock: Optional[int]
    power_mw: Optional[int] = None
    mig_mode: Optional[int] = NVML_DEVICE_MIG_DISABLE  # None: MIG not supported
    mig_slots: int = 7
    migs: list = dataclasses.field(default_factory=list)
    reasons: int = 0
    broken: bool = False  # every call on it fails (a lost GPU)


H100_UUID = "GPU-11111111-2222-3333-4444-555555555555"
A100_UUID = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
MIG0_UUID = "MIG-00000000-1111-2222-3333-444444444444"
MIG3_UUID = "MIG-33333333-1111-2222-3333-444444444444"


def default_gpus() -> list[FakeGpu]:
    """An H100 SXM (MIG off) and an A100-SXM4-40GB with MIG instances in slots 0 and 3."""
    return [
        FakeGpu("NVIDIA H100 80GB HBM3", H100_UUID, 81559, 1755, 1980, power_mw=700000),
        FakeGpu(
            "NVIDIA A100-SXM4-40GB",
            A100_UUID,
            40960,
            1410,
            1410,
            power_mw=400000,
            mig_mode=NVML_DEVICE_MIG_ENABLE,
            migs=[
                FakeMig(0, MIG0_UUID, "NVIDIA A100-SXM4-40GB MIG 3g.20gb", 19968, 42, 2, 0),
                FakeMig(3, MIG3_UUID, "NVIDIA A100-SXM4-40GB MIG 1g.5gb", 4864, 14, 9, 0),
            ],
        ),
    ]


def make_module(gpus: Optional[list[FakeGpu]] = None, *, init_error: Optional[Exception] = None) -> types.ModuleType:
    """A module that behaves like pynvml over ``gpus``; ``init_error`` makes nvmlInit raise it.

    ``module.calls`` counts calls by function name; ``module.inits`` is the number of
    nvmlInit calls not yet matched by nvmlShutdown.
    """
    gpus = default_gpus() if gpus is None else gpus
    m = types.ModuleType("pynvml")
    m.NVMLError = NVMLError
    m.NVMLError_NotSupported = NVMLError_NotSupported
    m.NVMLError_NotFound = NVMLError_NotFound
    m.NVML_CLOCK_SM = NVML_CLOCK_SM
    m.NVML_DEVICE_MIG_ENABLE = NVML_DEVICE_MIG_ENABLE
    m.NVML_DEVICE_MIG_DISABLE = NVML_DEVICE_MIG_DISABLE
    m.nvmlClocksEventReasonGpuIdle = GPU_IDLE
    m.gpus = gpus
    m.calls = {}
    m.inits = 0

    def count(fn):
        def wrapper(*args):
            m.calls[fn.__name__] = m.calls.get(fn.__name__, 0) + 1
            if fn.__name__ not in ("nvmlInit", "nvmlShutdown") and m.inits <= 0:
                raise NVMLError(1, "Uninitialized")
            return fn(*args)

        wrapper.__name__ = fn.__name__
        setattr(m, fn.__name__, wrapper)
        return wrapper

    def gpu(h) -> FakeGpu:
        if not isinstance(h, FakeGpu):
            raise NVMLError(2, "Invalid Argument")
        if h.broken:
            raise NVMLError(15, "GPU is lost")
        return h

    @count
    def nvmlInit():
        if init_error is not None:
            raise init_error
        m.inits += 1

    @count
    def nvmlShutdown():
        if m.inits <= 0:
            raise NVMLError(1, "Uninitialized")
        m.inits -= 1

    @count
    def nvmlDeviceGetCount():
        return len(gpus)

    @count
    def nvmlDeviceGetHandleByIndex(i):
        if not 0 <= i < len(gpus):
            raise NVMLError(2, "Invalid Argument")
        return gpus[i]

    @count
    def nvmlDeviceGetHandleByUUID(uuid):
        for g in gpus:
            if g.uuid == uuid:
                return g
        raise NVMLError_NotFound()

    @count
    def nvmlDeviceGetName(h):
        return h.name if isinstance(h, FakeMig) else gpu(h).name

    @count
    def nvmlDeviceGetUUID(h):
        return h.uuid if isinstance(h, FakeMig) else gpu(h).uuid

    @count
    def nvmlDeviceGetMemoryInfo(h):
        mib = h.memory_mib if isinstance(h, FakeMig) else gpu(h).memory_mib
        return types.SimpleNamespace(total=mib * 2**20, used=0, free=mib * 2**20)

    @count
    def nvmlDeviceGetClockInfo(h, kind):
        assert kind == NVML_CLOCK_SM
        if gpu(h).clock is None:
            raise NVMLError_NotSupported()
        return h.clock

    @count
    def nvmlDeviceGetMaxClockInfo(h, kind):
        assert kind == NVML_CLOCK_SM
        if gpu(h).max_clock is None:
            raise NVMLError_NotSupported()
        return h.max_clock

    @count
    def nvmlDeviceGetEnforcedPowerLimit(h):
        if gpu(h).power_mw is None:
            raise NVMLError_NotSupported()
        return h.power_mw

    @count
    def nvmlDeviceGetMigMode(h):
        if gpu(h).mig_mode is None:
            raise NVMLError_NotSupported()
        return [h.mig_mode, h.mig_mode]

    @count
    def nvmlDeviceGetMaxMigDeviceCount(h):
        return gpu(h).mig_slots if h.mig_mode is not None else 0

    @count
    def nvmlDeviceGetMigDeviceHandleByIndex(h, i):
        for mig in gpu(h).migs:
            if mig.slot == i:
                return mig
        raise NVMLError_NotFound()

    @count
    def nvmlDeviceGetAttributes(h):
        if not isinstance(h, FakeMig):
            raise NVMLError_NotSupported()
        return types.SimpleNamespace(
            multiprocessorCount=h.sm_count, memorySizeMB=h.memory_mib, gpuInstanceSliceCount=h.sm_count // 14
        )

    @count
    def nvmlDeviceGetGpuInstanceId(h):
        if not isinstance(h, FakeMig):
            raise NVMLError_NotSupported()
        return h.gi

    @count
    def nvmlDeviceGetComputeInstanceId(h):
        if not isinstance(h, FakeMig):
            raise NVMLError_NotSupported()
        return h.ci

    @count
    def nvmlDeviceGetCurrentClocksEventReasons(h):
        return gpu(h).reasons

    return m
