"""PELT utilization signals and util_est, worked by hand (docs/placement.md).

Each test drives the real scheduler and the reference model (tests/reference/model.py)
with the same calls, checks the real ``stats()['devices'][i]['util_avg']`` (and
``class_estimate``) against a value worked out by hand, and checks that the reference
computes the very same number.

Facts used below. A period is ``pelt_period`` seconds (default 1/32 s) = 1024 units;
``y = 0.5 ** (1/32)``. A device's running scale is ``occupancy x clock_scale x
capacity_orig`` with ``occupancy = min(1, in flight / (max_batch_size x
max_inflight_batches))``. Starting from an idle signal (sum 0, no open period) and running
at scale ``s`` for exactly ``p`` whole periods gives ``util_avg = s x (1 - y^p)``; in
particular ``s / 2`` after 32 periods. An idle signal that starts on a period boundary
decays by ``y^p``: half every 32 periods. The first update of a signal only sets its
start time: in these tests that is the first ``step`` (or a ``set_clock`` before it).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from reference.model import (  # noqa: E402
    LOAD_AVG_MAX,
    PELT_Y,
    RefDeviceSpec,
    ReferenceScheduler,
    RefPelt,
)

capsched = pytest.importorskip("capsched")
from capsched import Config, Device, InferenceRequest, Scheduler  # noqa: E402

PERIOD = 1.0 / 32.0


class Twin:
    """The real scheduler and the reference, driven with the same calls."""

    def __init__(self, devices: List[Dict[str, Any]], max_batch_size: int,
                 config: Optional[Dict[str, Any]] = None, policy: str = "fcfs") -> None:
        config = dict(config or {})
        self.real = Scheduler([Device(f"dev{i}", **d) for i, d in enumerate(devices)],
                              policy=policy, max_batch_size=max_batch_size,
                              config=Config(**config))
        self.ref = ReferenceScheduler(
            None, None, policy, max_batch_size, config,
            devices=[RefDeviceSpec(name=f"dev{i}", **d) for i, d in enumerate(devices)])

    def submit(self, n: int, now: float, prompt_tokens: int = 10, max_new_tokens: int = 10,
               timeout: Optional[float] = None, **kw: Any) -> List[int]:
        ids = []
        for _ in range(n):
            rid = self.real.submit(InferenceRequest(prompt_tokens=prompt_tokens,
                                                    max_new_tokens=max_new_tokens,
                                                    timeout=timeout, **kw), now=now)
            assert self.ref.submit(prompt_tokens, max_new_tokens, 0.5, timeout, None, now,
                                   **kw) == rid
            ids.append(rid)
        return ids

    def step(self, now: float) -> List[tuple]:
        got = [(b.device_index, list(b.request_ids)) for b in self.real.step(now=now).batches]
        want, _, _ = self.ref.step(now)
        assert got == want
        return got

    def complete(self, ids: List[int], now: float) -> None:
        for rid in ids:
            self.real.complete(rid, now=now)
            self.ref.complete(rid, now)

    def set_clock(self, device: int, clock: float, now: float,
                  max_clock: Optional[float] = None) -> None:
        self.real.set_clock(f"dev{device}", clock, max_clock, now=now)
        self.ref.set_clock(device, clock, max_clock, now)

    def set_pressure(self, device: int, pressure: float, now: float) -> None:
        self.real.set_pressure(f"dev{device}", pressure, now=now)
        self.ref.set_pressure(device, pressure, now)

    def util(self, device: int) -> float:
        """The real util_avg, after checking that the reference has exactly the same."""
        got = self.real.stats()["devices"][device]["util_avg"]
        want = self.ref.devices[device].pelt.util_avg
        assert got == want, f"util_avg of device {device}: real {got!r}, reference {want!r}"
        return got

    def estimate(self, cls: Optional[str]) -> Optional[Dict[str, float]]:
        got = self.real.class_estimate(cls)
        assert got == self.ref.class_estimate(cls)
        return got


def test_pelt_constants() -> None:
    assert PELT_Y ** 32 == pytest.approx(0.5, rel=1e-15)
    assert LOAD_AVG_MAX == pytest.approx(1024.0 / (1.0 - 0.5 ** (1.0 / 32.0)), rel=0)
    # Linux truncates the same series to 47742 in integer arithmetic.
    assert 47742 < LOAD_AVG_MAX < 47789


@pytest.mark.parametrize("period", [1.0 / 32.0, 0.01, 1.0])
def test_busy_for_32_periods_from_idle_reaches_half_at_the_boundary(period: float) -> None:
    s = Twin([dict(capacity=1.0)], max_batch_size=4, config=dict(pelt_period=period))
    s.submit(4, now=0.0)
    assert [len(ids) for _, ids in s.step(0.0)] == [4]  # full: occupancy 4 / (4 x 1) = 1
    assert s.util(0) == 0.0  # the first update only set the start time
    s.step(16 * period)
    assert s.util(0) == pytest.approx(1024.0 * (1.0 - 0.5 ** 0.5), rel=1e-12)
    s.step(32 * period)
    assert s.util(0) == pytest.approx(512.0, rel=1e-12)
    # The same by one update over the whole 32 periods, and by the formula's segments.
    p = RefPelt(period)
    p.update(0.0, 0.0)
    p.update(32 * period, 1024.0)
    assert p.util_avg == pytest.approx(512.0, rel=1e-12)
    assert p.period_contrib == 0.0


def test_half_a_batch_slot_share_counts_half() -> None:
    # 2 of 4 batch slots busy: occupancy 1/2, so half the signal of a full device.
    full = Twin([dict(capacity=1.0)], max_batch_size=4)
    half = Twin([dict(capacity=1.0)], max_batch_size=4)
    full.submit(4, now=0.0)
    half.submit(2, now=0.0)
    for s in (full, half):
        s.step(0.0)
        s.step(32 * PERIOD)
    assert half.util(0) == full.util(0) / 2 == pytest.approx(256.0, rel=1e-12)


def test_always_busy_converges_to_capacity_orig() -> None:
    # big takes the first batch (the best score), small the second: both stay full.
    s = Twin([dict(capacity=4.0), dict(capacity=1.0)], max_batch_size=2)
    s.submit(4, now=0.0)
    assert s.step(0.0) == [(0, [1, 2]), (1, [3, 4])]
    st = s.real.stats()["devices"]
    assert (st[0]["capacity_orig"], st[1]["capacity_orig"]) == (1024.0, 256.0)
    # Steps at an irregular cadence (periods left open in between): 100 s = 3,200 periods.
    t = 0.0
    while t < 100.0:
        t = min(100.0, t + 0.37)
        s.step(t)
    assert s.util(0) == pytest.approx(1024.0, rel=1e-9)
    assert s.util(1) == pytest.approx(256.0, rel=1e-9)


def test_half_clock_halves_the_contribution() -> None:
    full = Twin([dict(capacity=1.0, max_clock_mhz=1000.0)], max_batch_size=2)
    slow = Twin([dict(capacity=1.0, max_clock_mhz=1000.0)], max_batch_size=2)
    slow.set_clock(0, 500.0, now=0.0)  # before any step: this sets the start time
    st = slow.real.stats()["devices"][0]
    assert (st["clock_scale"], st["capacity"], st["capacity_orig"]) == (0.5, 512.0, 1024.0)
    for s in (full, slow):
        s.submit(2, now=0.0)
        s.step(0.0)
        s.step(32 * PERIOD)
    assert full.util(0) == pytest.approx(512.0, rel=1e-12)
    assert slow.util(0) == full.util(0) / 2  # scale 512 instead of 1024: exactly half


def test_time_before_a_clock_change_counts_at_the_old_clock() -> None:
    # Half clock (scale 512) for 32 periods: 256. Then full clock (scale 1024) for 32
    # more: 256 y^32 + 1024 (1 - y^32) = 640 (512 if the first half counted at the new
    # clock, 384 if the second counted at the old one).
    s = Twin([dict(capacity=1.0, max_clock_mhz=1000.0)], max_batch_size=2)
    s.set_clock(0, 500.0, now=0.0)
    s.submit(2, now=0.0)
    s.step(0.0)
    s.set_clock(0, 1000.0, now=32 * PERIOD)
    assert s.util(0) == pytest.approx(256.0, rel=1e-12)  # set_clock updated it first
    s.step(64 * PERIOD)
    assert s.util(0) == pytest.approx(640.0, rel=1e-12)
    # Pressure cuts usable capacity but not the signal's scale; it too brings the signal
    # up to date before the change.
    s.set_pressure(0, 0.5, now=80 * PERIOD)
    assert s.real.stats()["devices"][0]["capacity"] == 512.0
    y16 = 0.5 ** 0.5
    assert s.util(0) == pytest.approx(640.0 * y16 + 1024.0 * (1 - y16), rel=1e-12)
    s.step(96 * PERIOD)
    assert s.util(0) == pytest.approx(640.0 * 0.5 + 1024.0 * 0.5, rel=1e-12)


def test_idle_device_decays_by_half_every_32_periods() -> None:
    s = Twin([dict(capacity=1.0)], max_batch_size=3)
    ids = s.submit(3, now=0.0)
    s.step(0.0)
    s.complete(ids, now=100.0)  # 3,200 periods busy: saturated; ends on a boundary
    busy = s.util(0)
    assert busy == pytest.approx(1024.0, rel=1e-12)
    s.step(101.0)  # 32 idle periods
    assert s.util(0) / busy == pytest.approx(0.5, rel=1e-12)
    s.step(102.0)
    assert s.util(0) / busy == pytest.approx(0.25, rel=1e-12)
    s.step(102.5)  # 16 more periods: y^16 = 2^-1/2
    assert s.util(0) / busy == pytest.approx(0.25 * 0.5 ** 0.5, rel=1e-12)
    # Half a period later the sum is unchanged (idle), but the open half period joins
    # the divisor: util_avg = sum / (LOAD_AVG_MAX - 1024 + 512).
    before = s.util(0)
    s.step(102.5 + PERIOD / 2)
    assert s.util(0) == pytest.approx(
        before * (LOAD_AVG_MAX - 1024.0) / (LOAD_AVG_MAX - 512.0), rel=1e-12)


def test_util_est_samples_and_ewma_worked_example() -> None:
    # a: capacity_orig 1024, max clock 1000 MHz; b: capacity_orig 512, pinned to tenant t.
    s = Twin([dict(capacity=4.0, max_clock_mhz=1000.0), dict(capacity=2.0, tenants=("t",))],
             max_batch_size=4)
    assert s.estimate("chat") is None
    r1, r2 = s.submit(2, now=0.0, prompt_tokens=600, max_new_tokens=400,
                      request_class="chat")
    assert s.step(0.0) == [(0, [r1, r2])]  # one batch of 2 on a
    # sample = service x clock_scale x capacity_orig / 1024 / batch size / tokens
    s.complete([r1], now=2.0)  # 2 x 1 x 1 / 2 / 1000
    assert s.estimate("chat") == {"ewma": 1e-3, "last": 1e-3, "estimate": 1e-3}
    s.set_clock(0, 500.0, now=2.0)
    s.complete([r2], now=3.0)  # 3 x 0.5 x 1 / 2 / 1000 = 7.5e-4 (the batch had 2)
    est = s.estimate("chat")
    assert est["last"] == pytest.approx(7.5e-4, rel=1e-15)
    assert est["ewma"] == pytest.approx(1e-3 + (7.5e-4 - 1e-3) / 4, rel=1e-15)  # 9.375e-4
    assert est["estimate"] == est["ewma"]  # max(ewma, last)
    # On the weaker device: capacity_orig 512 halves the invariant work.
    (r3,) = s.submit(1, now=3.0, prompt_tokens=500, max_new_tokens=500,
                     request_class="code", tenant="t")
    assert s.step(3.0) == [(1, [r3])]
    s.complete([r3], now=5.0)  # 2 x 1 x 0.5 / 1 / 1000
    assert s.estimate("code") == {"ewma": 1e-3, "last": 1e-3, "estimate": 1e-3}
    assert s.estimate("chat")["estimate"] == pytest.approx(9.375e-4, rel=1e-15)
    # A larger sample: the estimate follows the last sample at once, the EWMA by 1/4.
    (r4,) = s.submit(1, now=5.0, prompt_tokens=600, max_new_tokens=400,
                     request_class="code", tenant="t")
    s.step(5.0)
    s.complete([r4], now=10.0)  # 5 x 1 x 0.5 / 1 / 1000 = 2.5e-3
    est = s.estimate("code")
    assert est["last"] == pytest.approx(2.5e-3, rel=1e-15)
    assert est["ewma"] == pytest.approx(1e-3 + (2.5e-3 - 1e-3) / 4, rel=1e-15)
    assert est["estimate"] == est["last"]
    # The estimate drives a request's utilization: W = 2.5e-3 x 1000 = 2.5 s of work
    # with 5 s left: u = 1024 x 2.5 / 5 = 512.
    (r5,) = s.submit(1, now=10.0, prompt_tokens=600, max_new_tokens=400,
                     request_class="code", tenant="t", timeout=5.0)
    assert s.step(10.0) == [(1, [r5])]  # b, fallback: 1.25 x 512 does not fit 512
    st = s.real.stats()
    assert st["devices"][1]["placed_util"] == pytest.approx(512.0, rel=1e-12)
    assert st["placed_fallback"] == 1
    assert st["devices"][1]["placed_util"] == s.ref.devices[1].placed_util
    # Other classes are untouched; the default class has seen nothing.
    assert s.estimate(None) is None


def test_a_device_with_nothing_in_flight_is_still_updated_every_step() -> None:
    # dev1 never gets work, but every step brings its signal up to date (it stays 0);
    # dev0's signal moves at each step even though nothing changes on it.
    s = Twin([dict(capacity=2.0), dict(capacity=1.0)], max_batch_size=1)
    s.submit(1, now=0.0)
    assert s.step(0.0) == [(0, [1])]
    s.step(8 * PERIOD)
    first = s.util(0)
    assert first == pytest.approx(1024.0 * (1 - 0.5 ** 0.25), rel=1e-12)
    s.step(16 * PERIOD)
    assert s.util(0) == pytest.approx(1024.0 * (1 - 0.5 ** 0.5), rel=1e-12)
    assert s.util(1) == 0.0
    assert s.ref.devices[1].pelt.last == s.ref.devices[0].pelt.last == 16 * PERIOD
