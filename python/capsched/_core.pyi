# Type stubs for the compiled core. tests/test_stubs.py checks them against the module:
# the same names both ways, the same settable/read-only attributes, and each method's
# parameters, defaults and types as pybind11's docstring signature gives them.
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_TOKENS: int
MAX_DEPENDENCIES: int
MAX_BATCH_SIZE: int
MAX_TENANT_WEIGHT: float
MAX_DEVICES: int
MAX_DEADLINE_LEVELS: int
CAPACITY_SCALE: float
MAX_CLASSES: int
UNLIMITED_TOKENS: int

class IndexedHeap:
    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def reserve(self, n: int) -> None: ...
    def contains(self, handle: int) -> bool: ...
    def push(self, handle: int, key: float, seq: int = 0) -> None: ...
    def pop(self) -> int: ...
    def top(self) -> tuple[int, float, int]: ...
    def update(self, handle: int, key: float, seq: int = 0) -> None: ...
    def erase(self, handle: int) -> bool: ...
    def clear(self) -> None: ...
    def check_invariants(self) -> bool: ...

class BucketQueue:
    def __init__(self) -> None: ...
    def __len__(self) -> int: ...
    def reserve(self, n: int) -> None: ...
    def contains(self, handle: int) -> bool: ...
    def push(self, handle: int, key: float, seq: int = 0) -> None: ...
    def pop(self) -> int: ...
    def top(self) -> tuple[int, float, int]: ...
    def update(self, handle: int, key: float, seq: int = 0) -> None: ...
    def erase(self, handle: int) -> bool: ...
    def clear(self) -> None: ...
    def check_invariants(self) -> bool: ...

class CoreConfig:
    policy: str
    weight_urgency: float
    weight_resource: float
    weight_deadline: float
    resource_scale_tokens: float
    deadline_levels: int
    aging_priority: float
    aging_weighted: float
    aging_srtf: float
    aging_edf: float
    no_deadline_horizon: float
    fit_margin: float
    score_compute: float
    score_memory: float
    energy_aware: bool
    pelt_period: float
    default_work_per_token: float
    dl_bandwidth_limit: float
    defer_late: bool
    wait_for_fit: bool
    max_batch_tokens: int
    preferred_batch_sizes: list[int]
    max_queue_delay: float
    latency_target: float
    preemption: bool
    fair_share: bool
    fair_input_weight: float
    fair_output_weight: float
    max_batch_size: int
    max_retries: int
    breaker_failures: int
    breaker_cooldown: float
    breaker_degrade: bool
    max_queued: int
    max_queued_per_tenant: int
    max_dependents: int
    retry_base: float
    retry_cap: float
    retry_seed: int
    dynamic_batching: bool
    def __init__(self) -> None: ...

class DeviceSpec:
    capacity: float
    max_inflight_batches: int
    max_clock: float
    cur_clock: float
    kv_tokens: int
    energy_per_token: float
    prefill_s_per_token: float
    decode_step_s: float
    decode_s_per_seq: float
    tenants: list[int]
    pool: int
    def __init__(self) -> None: ...

_StepTuple = tuple[
    list[int],  # batch devices
    list[int],  # batch offsets (one more than batches)
    list[int],  # request ids
    list[int],  # expired
    list[int],  # failed
    list[str],  # failure reasons
    float,  # now
    list[int],  # migrated
    list[int],  # migrated from
    list[int],  # preempted
    list[int],  # preempted from
    float,  # next_step_at
    int,  # held
]

_StepArraysTuple = tuple[
    npt.NDArray[np.uint32],  # batch devices
    npt.NDArray[np.uint64],  # batch offsets (one more than batches)
    npt.NDArray[np.uint64],  # request ids
    npt.NDArray[np.uint64],  # expired
    list[int],  # failed
    list[str],  # failure reasons
    float,  # now
    list[int],  # migrated
    list[int],  # migrated from
    list[int],  # preempted
    list[int],  # preempted from
    float,  # next_step_at
    int,  # held
]

# (max_new_tokens, priority, timeout, deadline, sched_class, batchable, uclamp_min, uclamp_max)
_Spec = tuple[int, float, float, float, int, bool, float, float]

class Core:
    def __init__(self, config: CoreConfig, devices: list[DeviceSpec]) -> None: ...
    def reserve(self, n: int) -> None: ...
    def submit(
        self,
        prompt_tokens: int,
        max_new_tokens: int,
        priority: float,
        timeout: float,
        deadline: float,
        tenant: int,
        request_class: int,
        sched_class: int,
        batchable: bool,
        uclamp_min: float,
        uclamp_max: float,
        pool: int,
        fallback_pool: int,
        depends_on: npt.NDArray[np.uint64] | None,
        now: float,
        /,
    ) -> int: ...
    def submit_spec(
        self, prompt_tokens: int, spec: _Spec, tenant: int, request_class: int, now: float, /
    ) -> int: ...
    def submit_many(
        self,
        prompt_tokens: npt.NDArray[np.int64],
        max_new_tokens: npt.NDArray[np.int64],
        priority: npt.NDArray[np.float64],
        timeout: npt.NDArray[np.float64],
        deadline: npt.NDArray[np.float64],
        now: float,
    ) -> npt.NDArray[np.uint64]: ...
    def step(self, now: float) -> _StepTuple: ...
    def step_continuous(
        self, now: float, free_slots: npt.NDArray[np.int64], free_kv: npt.NDArray[np.int64]
    ) -> _StepTuple: ...
    def step_arrays(self, now: float) -> _StepArraysTuple: ...
    def step_continuous_arrays(
        self, now: float, free_slots: npt.NDArray[np.int64], free_kv: npt.NDArray[np.int64]
    ) -> _StepArraysTuple: ...
    def estimate_service(self, device: int, prompt_tokens: float, steps: float, batch: float) -> float: ...
    def preemption_info(self, id: int) -> tuple[int, float]: ...
    def complete(self, id: int, now: float, output_tokens: int = -1, /) -> None: ...
    def complete_plain(self, id: object, now: object, output_tokens: object, /) -> Any: ...
    def complete_many(self, ids: npt.NDArray[np.uint64], now: float) -> None: ...
    def fail(self, id: int, now: float, retryable: bool, error: str) -> bool: ...
    def set_clock(self, device: int, cur: float, max: float, now: float) -> None: ...
    def set_pressure(self, device: int, pressure: float, now: float) -> None: ...
    def class_estimate(self, request_class: int) -> tuple[bool, float, float, float]: ...
    def class_util(self, request_class: int) -> float: ...
    def set_tenant_weight(self, tenant: int, weight: float) -> None: ...
    def tenant_weight(self, tenant: int) -> float: ...
    def tenant_counter(self, tenant: int) -> float: ...
    def fair_virtual_time(self) -> float: ...
    def cancel(self, id: int) -> bool: ...
    def export_state(self, columnar: bool = False) -> dict[str, Any]: ...
    def import_state(self, state: dict[str, Any]) -> None: ...
    def requeue_in_flight(self, now: float) -> int: ...
    def status(self, id: int) -> int: ...
    def check_invariants(self) -> bool: ...
    @property
    def num_devices(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...
