"""The long-run soak (bench/soak.py) at CI scale, its oracle, and the clock behaviour it
relies on (issue 8, part 3; docs/soak.md).

The soak driver lives in bench/ (``python bench/soak.py --requests 10_000_000``); these
tests load it from there and run it on a few hundred thousand requests, asserting the
same oracle: every accepted request ended exactly once, the tallies agree with the
scheduler's stats and Prometheus counters, resident memory after warm-up stays within the
documented bound, Python objects do not grow. No timing is asserted.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from capsched import Device, InferenceRequest, Scheduler
from capsched.errors import ConfigError, DependencyError, InvalidArgumentError
from capsched.sim.faults import (
    ClockDropRates,
    DeviceFaultRates,
    SimulatedClockSource,
    SimulatedDeviceFaults,
)

SOAK_PATH = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
HAS_PROC = os.path.exists("/proc/self/statm")


def load_soak() -> ModuleType:
    name = "capsched_bench_soak"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SOAK_PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # (dataclasses look their module up)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def soak() -> ModuleType:
    return load_soak()


def run_in_fresh_process(requests: int, mode: str = "batch") -> Any:
    """``run_soak(ci_config(...))`` in a fresh Python process, its report back (pickled).
    The memory checks measure the process: in the test run's own process, after two
    thousand other tests (their leftover threads and heap), resident memory grew past
    the bound now and then with nothing of the soak's to show for it."""
    code = (
        "import pickle, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "import test_soak as t\n"
        "soak = t.load_soak()\n"
        f"report = soak.run_soak(t.ci_config(soak, {int(requests)}, mode={mode!r}))\n"
        "sys.stdout.buffer.write(pickle.dumps(report))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=900)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-4000:]
    return pickle.loads(r.stdout)


def ci_config(soak: ModuleType, requests: int, seed: int = 1, mode: str = "batch") -> Any:
    # faults and clock drops more frequent than in the 10M run so that a short run
    # (about 150 virtual seconds) sees every kind
    return soak.SoakConfig(
        requests=requests,
        seed=seed,
        mode=mode,
        chunk=16_384,
        device_faults=DeviceFaultRates(down_every_s=60.0, down_for_s=(10.0, 40.0)),
        clock_drops=ClockDropRates(jump=0.002, jump_s=15.0, backward=0.01),
        throttle_every_s=15.0,
        bad_input_every=500,
    )


# --------------------------------------------------------------------------- the soak


def test_soak_ci_scale_accounting_exact_and_memory_flat(soak: ModuleType) -> None:
    report = run_in_fresh_process(250_000)
    failed = soak.failed_checks(report)
    assert not failed, failed
    names = {c["name"] for c in report["checks"]}
    if HAS_PROC:
        assert {"RSS: growth after warm-up within bound", "RSS: slope after warm-up within bound"} <= names
    if soak.heap_bytes() is not None:  # glibc
        assert "malloc'd bytes: growth after warm-up within bound" in names
    assert "Python objects do not grow" in names
    out, ev = report["outcomes"], report["events"]
    # every way to end happened, and the books add up to the accepted count
    assert min(out.values()) > 0, out
    assert sum(out.values()) == report["accepted"] == report["stats"]["accepted"]
    assert ev["retried"] > 0 and ev["rejected"] > 0 and ev["failed_dependency"] > 0
    assert ev["batches_failed_down"] > 0 and report["stats"]["breaker_trips"] > 0
    # devices whose breaker tripped got work again once they were back (probe, close)
    tripped = [n for n, b in report["breakers"].items() if b["trips"] > 0]
    assert tripped and any(report["device_batches_after_first_down"][n] > 0 for n in tripped)
    # clock drops of every kind were driven through, and the checks of the documented
    # clock behaviour ran
    assert all(report["clock_readings"][k] > 0 for k in ("stall", "jump", "backward"))
    assert ev["backward_checked"] > 0 and ev["nonfinite_checked"] > 0 and ev["bad_input_checked"] > 0
    assert ev["submitted_single"] > 0 and ev["completed_single_calls"] > 0 and ev["throttles"] > 0


def test_soak_continuous_mode_with_preemption(soak: ModuleType) -> None:
    report = run_in_fresh_process(100_000, mode="continuous")
    failed = soak.failed_checks(report)
    assert not failed, failed
    ev = report["events"]
    assert ev["preempted"] > 0 and ev["preempted"] == report["stats"]["preempted"]
    assert ev["submitted_strict"] > 0 and ev["submitted_background"] > 0
    assert min(report["outcomes"].values()) > 0 and report["stats"]["breaker_trips"] > 0


def test_soak_replays_with_its_seed(soak: ModuleType) -> None:
    a = soak.run_soak(ci_config(soak, 20_000, seed=7))
    b = soak.run_soak(ci_config(soak, 20_000, seed=7))
    assert a["outcomes"] == b["outcomes"] and a["events"] == b["events"]
    assert a["virtual_s"] == b["virtual_s"]
    c = soak.run_soak(ci_config(soak, 20_000, seed=8))
    assert c["events"] != a["events"]


class _HidesAnExpiry(Scheduler):
    """A scheduler whose step result loses one expired id: the oracle must notice."""

    hidden: list[int] = []

    def step(self, now: Any = None, **kw: Any) -> Any:
        r = super().step(now, **kw)
        if r.expired and not self.hidden:
            self.hidden.append(r.expired[0])
            r.__dict__["expired"] = r.expired[1:]
        return r


def test_soak_oracle_catches_a_lost_outcome(soak: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    _HidesAnExpiry.hidden = []
    monkeypatch.setattr(soak, "Scheduler", _HidesAnExpiry)
    report = soak.run_soak(ci_config(soak, 20_000))
    assert _HidesAnExpiry.hidden
    failed = {c["name"] for c in soak.failed_checks(report)}
    assert "every accepted id retired (ended exactly once)" in failed
    assert "ledger tallies = stats()" in failed


class _DropsABatch(Scheduler):
    """A scheduler whose step result loses one batch: its requests stay in flight and
    the server never hears of them, so the queue never drains."""

    dropped: list[int] = []

    def step(self, now: Any = None, **kw: Any) -> Any:
        r = super().step(now, **kw)
        if r.batches and not self.dropped:
            self.dropped.extend(r.batches[0].request_ids)
            r.__dict__["batches"] = r.batches[1:]
        return r


def test_soak_names_requests_that_never_end(soak: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    _DropsABatch.dropped = []
    monkeypatch.setattr(soak, "Scheduler", _DropsABatch)
    with pytest.raises(soak.SoakError, match=r"the queue does not drain: (\d+) requests live") as info:
        soak.run_soak(dataclasses.replace(ci_config(soak, 5_000), stuck_after_s=100.0))
    dropped = _DropsABatch.dropped
    assert dropped and f"{len(dropped)} requests live" in str(info.value)
    assert f"e.g. {min(dropped)}: in_flight" in str(info.value)


def test_dependency_failed_by_cascade_is_refused_before_the_step_reports_it() -> None:
    """What the soak's ledger must allow for: a request that failed because its own
    dependency failed has ended at once (a new dependent is refused), though the server
    hears of it only in the next step's ``failed`` list."""
    s = Scheduler(["gpu0"])
    a = s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    b = s.submit(InferenceRequest(prompt_tokens=10, depends_on=(a,)), now=0.0)
    assert s.step(1.0).dispatched == [a]
    assert s.fail(a, now=2.0, error="boom") is False
    assert s.status(b) == "failed"
    with pytest.raises(DependencyError, match=f"request {b}, which already ended as failed"):
        s.submit(InferenceRequest(prompt_tokens=10, depends_on=(b,)), now=2.0)
    r = s.step(3.0)
    assert [i for i, _ in r.failed] == [b] and str(a) in r.failed[0][1]
    st = s.stats()
    assert st["accepted"] == 2 and st["failed"] == 2 and st["conservation_ok"]


# --------------------------------------------------------------------------- a core bug the soak found


# Regression: a background request without a deadline used to be paced from its arrival,
# so past no_deadline_horizon its utilization was infinite and it fit no device (never
# dispatched, holding back the class); it is now paced from now (docs/placement.md).
@pytest.mark.parametrize("continuous", [False, True], ids=["batch", "continuous"])
def test_background_request_runs_after_the_no_deadline_horizon(continuous: bool) -> None:
    s = Scheduler(["gpu0"])
    rid = s.submit(InferenceRequest(prompt_tokens=100, sched_class="background"), now=0.0)
    later = s.submit(InferenceRequest(prompt_tokens=100, sched_class="background"), now=0.0)
    # the server's first step comes 61 s later (no_deadline_horizon is 60 s): the fleet is idle
    r = s.step(61.0, free_slots={"gpu0": 8}) if continuous else s.step(61.0)
    assert r.dispatched == [rid, later]


# --------------------------------------------------------------------------- the ledger


def test_ledger_rejects_double_unknown_and_duplicate_ends(soak: ModuleType) -> None:
    led = soak.IdLedger(capacity=4)
    led.issued(np.arange(1, 4, dtype=np.uint64))
    led.ended(np.array([2], dtype=np.uint64), soak.COMPLETED)
    with pytest.raises(soak.SoakError, match="request 2 ended twice: completed, then expired"):
        led.ended(np.array([3, 2], dtype=np.uint64), soak.EXPIRED)
    with pytest.raises(soak.SoakError, match="request 9 ended as failed but was never issued"):
        led.ended(np.array([9], dtype=np.uint64), soak.FAILED)
    with pytest.raises(soak.SoakError, match="listed twice"):
        led.ended(np.array([1, 1], dtype=np.uint64), soak.CANCELLED)
    with pytest.raises(soak.SoakError, match="out of sequence"):
        led.issued(np.array([5], dtype=np.uint64))
    assert led.retire() == 0  # id 1 is live
    led.ended_one(1, soak.FAILED)
    assert led.retire() == 2 and led.base == 3
    with pytest.raises(soak.SoakError, match="already retired"):
        led.ended_one(1, soak.CANCELLED)
    assert led.tally == {soak.COMPLETED: 1, soak.FAILED: 1, soak.EXPIRED: 0, soak.CANCELLED: 0}


def test_ledger_ring_grows_and_keeps_outcomes(soak: ModuleType) -> None:
    led = soak.IdLedger(capacity=8)
    led.issued(np.arange(1, 6, dtype=np.uint64))
    led.ended(np.array([2, 3, 4, 5], dtype=np.uint64), soak.EXPIRED)  # 1 stays live
    led.issued(np.arange(6, 40, dtype=np.uint64))  # span 39 > 8: the ring doubles to 64
    assert led.ring.size == 64 and led.max_span == 39
    assert [led.kind_of(i) for i in (1, 2, 5, 6)] == [0, soak.EXPIRED, soak.EXPIRED, 0]
    led.ended(np.arange(6, 40, dtype=np.uint64), soak.COMPLETED)
    led.ended_one(1, soak.CANCELLED)
    assert led.retire() == 39 and led.live_span == 0
    assert led.tally[soak.COMPLETED] == 34 and led.tally[soak.EXPIRED] == 4 and led.tally[soak.CANCELLED] == 1


# --------------------------------------------------------------------------- documented clock behaviour


def _busy_scheduler() -> tuple[Scheduler, int]:
    s = Scheduler([Device("gpu0", max_inflight_batches=1)], max_batch_size=1)
    first = s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    assert s.step(10.0).dispatched == [first]  # the only slot is now busy
    return s, first


def test_backward_now_is_treated_as_the_latest() -> None:
    """Documented (StepResult.now, cpp/include/capsched/scheduler.hpp): a ``now`` earlier
    than the latest seen is treated as the latest; nothing is refused."""
    s, first = _busy_scheduler()
    r = s.step(5.0)
    assert r.now == 10.0 and not r
    assert s.stats()["now"] == 10.0
    # a submit at an earlier time: its timeout counts from the latest time (10), not 5
    rid = s.submit(InferenceRequest(prompt_tokens=10, timeout=1.0), now=5.0)
    assert s.step(10.9).expired == []
    assert s.step(2.0).now == 10.9  # backwards again: still clamped
    assert s.step(11.05).expired == [rid]
    # a completion reported at an earlier time is accepted at the latest time
    s.complete(first, now=3.0)
    st = s.stats()
    assert st["now"] == 11.05 and st["completed"] == 1 and st["expired"] == 1 and st["conservation_ok"]


@pytest.mark.parametrize("bad", [float("nan"), math.inf, -math.inf])
def test_non_finite_now_is_refused_and_changes_nothing(bad: float) -> None:
    s, first = _busy_scheduler()
    before = s.stats()
    for call in (
        lambda: s.step(bad),
        lambda: s.submit(InferenceRequest(prompt_tokens=1), now=bad),
        lambda: s.complete(first, now=bad),
        lambda: s.fail(first, now=bad, retryable=True),
        lambda: s.submit_many([1, 2], now=bad),
    ):
        with pytest.raises(InvalidArgumentError, match=r"(?i)now must be a finite number.*(nan|inf)"):
            call()
    assert s.stats() == before
    assert s.status(first) == "in_flight"


# --------------------------------------------------------------------------- the simulated fault helpers


def test_simulated_clock_source_kinds() -> None:
    src = SimulatedClockSource(ClockDropRates(stall=0.05, stall_readings=3, jump=0.01, jump_s=10.0, backward=0.05), seed=3)
    t = 0.0
    prev_reading = -math.inf
    prev_true = 0.0
    kinds: dict[str, int] = {}
    for _ in range(5000):
        t += 0.01
        r = src.read(t)
        kinds[r.kind] = kinds.get(r.kind, 0) + 1
        assert r.true_s >= t and r.reading_s <= r.true_s
        if r.kind == "jump":
            assert 5.0 <= r.jumped_s < 15.0 and r.true_s == pytest.approx(t + r.jumped_s)
        else:
            assert r.true_s == t and r.jumped_s == 0.0
        if r.kind == "stall":
            assert r.reading_s == prev_reading
        if r.kind == "backward":
            assert prev_reading - 1.0 <= r.reading_s < prev_reading
        if r.kind == "ok":
            assert r.reading_s == t
        assert r.true_s >= prev_true
        t, prev_true, prev_reading = r.true_s, r.true_s, r.reading_s
    assert kinds == src.counts and all(kinds.get(k, 0) > 0 for k in ("ok", "stall", "jump", "backward"))
    # the same seed replays; another seed differs
    assert _readings(src.rates, 9) == _readings(src.rates, 9)
    assert _readings(src.rates, 9) != _readings(src.rates, 10)


def _readings(rates: ClockDropRates, seed: int) -> list[tuple[float, float, str]]:
    src, t, out = SimulatedClockSource(rates, seed=seed), 0.0, []
    for _ in range(500):
        r = src.read(t + 0.01)
        out.append((r.true_s, r.reading_s, r.kind))
        t = r.true_s
    return out


def test_simulated_clock_source_refuses_bad_input() -> None:
    src = SimulatedClockSource()
    src.read(5.0)
    with pytest.raises(ConfigError, match="runs backwards: 4.0 after 5.0"):
        src.read(4.0)
    with pytest.raises(ConfigError, match="must be finite, got nan"):
        src.read(float("nan"))
    with pytest.raises(ConfigError, match=r"stall must be a probability in \[0, 1\], got 1.5"):
        ClockDropRates(stall=1.5)
    with pytest.raises(ConfigError, match="stall_readings must be an integer >= 1, got 0"):
        ClockDropRates(stall_readings=0)
    with pytest.raises(ConfigError, match="jump_s must be a finite number > 0, got inf"):
        ClockDropRates(jump_s=math.inf)


def test_simulated_device_faults_windows() -> None:
    f = SimulatedDeviceFaults(["a", "b"], DeviceFaultRates(down_every_s=5.0, down_for_s=(1.0, 2.0)), seed=1)
    down_time = 0.0
    dt = 0.01
    for i in range(10_000):
        t = i * dt
        if f.is_down(0, t):
            end = f.down_until(0, t)
            assert t < end <= t + 2.0
            down_time += dt
        else:
            assert f.down_until(0, t) == t
    # about 1.5 s down in every 6.5 s
    assert 0.1 < down_time / 100.0 < 0.4 and f.windows_started[0] > 5
    fails, retry = f.draw_failures(10_000)
    assert fails.shape == retry.shape == (10_000,) and 0 < fails.sum() < 100
    assert 0.7 < f.draw_retryable(10_000).mean() < 0.9


def test_simulated_device_faults_refuse_bad_rates() -> None:
    with pytest.raises(ConfigError, match=r"down_for_s must be \(shortest, longest\), got \(5.0, 1.0\)"):
        DeviceFaultRates(down_for_s=(5.0, 1.0))
    with pytest.raises(ConfigError, match="request_fail must be a probability"):
        DeviceFaultRates(request_fail=-0.1)
    with pytest.raises(ConfigError, match="needs at least one device"):
        SimulatedDeviceFaults([])
