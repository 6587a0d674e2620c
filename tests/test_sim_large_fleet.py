"""The simulator on large fleets: the engine's running free-slot / idle bookkeeping (one
update per changed device, not a scan of the fleet per event) gives exactly what a full
rebuild at every step gives, and progress inside a run. No timing assertions."""

from __future__ import annotations

import io

import numpy as np
import pytest

from capsched.errors import ConfigError
from capsched.sim import DEFAULT_FLEET, parse_fleet
from capsched.sim import run as simrun
from capsched.sim.engine import PROGRESS_STEPS, Fault, Simulation, Slowdown
from capsched.sim.run import SimConfig, run_experiment
from capsched.sim.workload import builtin_trace


def _brute(devs):
    """The free slots, free KV and idle devices as the engine computed them before: a scan
    of every device."""
    slots, kv, idle = {}, {}, set()
    for d in devs:
        if d.up:
            free = d.max_seqs - d.outstanding
            if free > 0:
                slots[d.name] = free
                kv[d.name] = max(0, d.kv_budget - d.kv_used)
        if d.up and not d.busy and d.outstanding < d.max_seqs:
            idle.add(d.idx)
    return slots, kv, idle


class Checked(Simulation):
    """Asserts at every refresh that the running bookkeeping equals a full scan."""

    checks = 0

    def _refresh(self):
        super()._refresh()
        slots, kv, idle = _brute(self.devs)
        names = [d.name for d in self.devs]
        assert {names[i]: int(v) for i, v in enumerate(self._free_slots) if v >= 0} == slots
        assert {names[i]: int(v) for i, v in enumerate(self._free_kv) if v >= 0} == kv
        assert all((self._free_slots[i] >= 0) == (self._free_kv[i] >= 0) for i in range(len(names)))
        assert self._idle == idle
        Checked.checks += 1


class BruteForce(Simulation):
    """The fleet-size dependent path: every device refreshed at every step, and every
    device offered a start after each dispatch (as the engine did before)."""

    def _refresh(self):
        self._dirty.update(range(len(self.devs)))
        super()._refresh()

    def _start_pending(self, now):
        for d in self.devs:
            self._maybe_start(d, now)


def _workload(n, load, devices):
    w = builtin_trace("azure-conv").head(n).shift_to_zero()
    cap = sum(d.rate for d in devices)
    return w.scale_to_rate(load * cap)


def _same(a, b):
    for f in ("status", "finish_s", "first_token_s", "device", "tries", "arrival_s", "deadline_s"):
        assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), f
    assert a.busy_intervals == b.busy_intervals
    assert (a.end_s, a.iterations, a.retries, a.preempted, a.migrated, a.restarts) == (
        b.end_s, b.iterations, b.retries, b.preempted, b.migrated, b.restarts
    )
    assert a.scheduler_stats == b.scheduler_stats


CASES = {
    "plain": {},
    "overload": {"load": 1.5},
    "faults-slowdowns": {
        "faults": [Fault("A40-0", 2.0, 5.0), Fault("H100-SXM-1", 4.0, 3.0), Fault("A40-0", 3.0, 6.0)],
        "slowdowns": [Slowdown("H100-SXM-0", 1.0, 8.0, 0.3), Slowdown("L4-1", 0.5, 20.0, 0.5)],
    },
    "chain-restart": {"chain": 3, "restart_at": 3.0},
    "legacy-batch-mode": {"continuous": False},
    "preemption": {"capsched_config": {"preemption": True}, "capsched_request": {"priority": 1}, "load": 1.2},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_running_bookkeeping_matches_a_full_scan(case):
    kw = dict(CASES[case])
    load = kw.pop("load", 0.8)
    devices = DEFAULT_FLEET.build(900, 230)
    if any(f.device.startswith(("A40", "L4")) for f in kw.get("faults", []) + kw.get("slowdowns", [])):
        devices = parse_fleet("H100-SXM:2,A40:2,L4:2").build(900, 230)
    w = _workload(250, load, devices)
    try:
        fast = Checked(devices, w, "capsched", **kw).run()
    except ConfigError as exc:  # (an option this Scheduler does not have)
        pytest.skip(str(exc))
    brute = BruteForce(devices, w, "capsched", **kw).run()
    _same(fast, brute)
    plain = Simulation(devices, w, "capsched", **kw).run()
    _same(fast, plain)
    assert Checked.checks > 0


def test_baselines_unchanged_by_the_bookkeeping():
    devices = DEFAULT_FLEET.build(900, 230)
    w = _workload(200, 0.9, devices)
    faults = [Fault(devices[0].name, 1.0, 4.0)]
    for policy in ("round_robin", "least_load", "power_of_two_choices"):
        _same(Simulation(devices, w, policy, faults=faults).run(), BruteForce(devices, w, policy, faults=faults).run())


def test_a_4096_device_run_finishes():
    devices = parse_fleet("H100-SXM:4096").build(900, 230)
    w = _workload(20, 0.5, devices)
    r = Simulation(devices, w, "capsched").run()
    assert r.status.size == 20 and (r.status != 0).all()
    assert len(r.device_names) == 4096


def test_progress_callback_every_tenth_of_requests():
    devices = DEFAULT_FLEET.build(900, 230)
    w = _workload(95, 0.7, devices)
    seen = []
    with_cb = Simulation(devices, w, "capsched", progress=lambda e, t: seen.append((e, t))).run()
    assert [t for _, t in seen] == [95] * len(seen)
    ended = [e for e, _ in seen]
    assert ended == sorted(set(ended)) and len(ended) == PROGRESS_STEPS and ended[-1] == 95
    assert ended == [-(-k * 95 // PROGRESS_STEPS) for k in range(1, PROGRESS_STEPS + 1)]
    _same(with_cb, Simulation(devices, w, "capsched").run())  # the callback changes nothing
    with pytest.raises(ConfigError, match="progress"):
        Simulation(devices, w, "capsched", progress=3)


def test_in_run_progress_lines_only_with_progress_on(monkeypatch):
    monkeypatch.setattr(simrun, "LONG_RUN_S", 0.0)  # every run counts as long
    cfg = SimConfig(loads=(0.5,), policies=("least_load", "capsched"), requests=60)
    out = io.StringIO()
    run_experiment(cfg, progress=True, stream=out)
    lines = [ln for ln in out.getvalue().splitlines() if "requests ended" in ln]
    assert any("load 0.5 capsched" in ln for ln in lines) and any("load 0.5 least_load" in ln for ln in lines)
    assert any("60 of 60 requests ended (100%)" in ln for ln in lines)
    quiet = io.StringIO()
    run_experiment(cfg, progress=False, stream=quiet)
    assert quiet.getvalue() == ""
