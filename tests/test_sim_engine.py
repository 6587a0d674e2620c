"""The simulator's engine, policies and metrics (capsched.sim.engine/policies/metrics/run)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from capsched.errors import ConfigError
from capsched.sim import DEFAULT_FLEET, Fleet, parse_fleet
from capsched.sim.engine import (
    DONE,
    EXPIRED,
    FAILED,
    Fault,
    Simulation,
    Slowdown,
    deadlines_for,
    parse_fault,
    parse_slowdown,
    simulate,
)
from capsched.sim.metrics import goodput
from capsched.sim.policies import POLICIES, RoundRobin, parse_policies
from capsched.sim.run import SimConfig, run_experiment
from capsched.sim.workload import FixedLengths, Workload, builtin_trace, poisson


@pytest.fixture(scope="module")
def small():
    w = builtin_trace("azure-conv").head(300).shift_to_zero()
    s = w.summary()
    devices = DEFAULT_FLEET.build(s["prompt_mean"], s["output_mean"])
    cap = sum(d.rate for d in devices)
    return devices, w.scale_to_rate(0.6 * cap)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_request_ends_exactly_once(small, policy):
    devices, w = small
    r = simulate(devices, w, policy, seed=1)
    assert r.status.size == len(w)
    assert set(np.unique(r.status)) <= {DONE, FAILED, EXPIRED}
    done = r.status == DONE
    assert np.all(np.isfinite(r.finish_s[done])) and np.all(np.isnan(r.finish_s[~done]))
    assert np.all(r.finish_s[done] > r.arrival_s[done])
    assert np.all(r.first_token_s[done] <= r.finish_s[done])
    assert np.all(r.device[done] >= 0)
    assert sum(r.busy_s) > 0
    if policy == "capsched":
        s = r.scheduler_stats
        assert s["conservation_ok"]  # the real Scheduler's books
        assert s["accepted"] == len(w)
        assert s["completed"] == int(done.sum())
        assert s["expired"] == int((r.status == EXPIRED).sum())
        assert s["in_flight"] == 0 and s["queued"] == 0


def test_step_time_fast_path_matches_cost_model(small):
    devices, w = small
    sim = Simulation(devices, w, "least_load")
    sim._setup()
    d = sim.devs[0]
    d.n_dec, d.ctx_sum = 7, 7 * 900
    joiners = [0, 1, 2]
    expected = d.cm.step_time([sim.P[j] for j in joiners], 7, 900.0)
    assert sim._step_time(d, joiners) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("policy", ["random", "power_of_two_choices", "capsched"])
def test_deterministic_for_a_seed(small, policy):
    devices, w = small
    a = simulate(devices, w, policy, seed=7)
    b = simulate(devices, w, policy, seed=7)
    assert np.array_equal(a.status, b.status)
    assert np.array_equal(a.finish_s, b.finish_s, equal_nan=True)
    assert np.array_equal(a.device, b.device)


def test_random_policies_depend_on_the_seed(small):
    devices, w = small
    a = simulate(devices, w, "random", seed=1)
    b = simulate(devices, w, "random", seed=2)
    assert not np.array_equal(a.device, b.device)


def test_round_robin_binds_in_turn():
    p = RoundRobin(np.random.default_rng(0))
    up = [True] * 4
    assert [p.choose([0] * 4, up) for _ in range(6)] == [0, 1, 2, 3, 0, 1]
    # A down device is skipped (health check), nothing else is known.
    assert [p.choose([9, 0, 0, 0], [True, False, True, True]) for _ in range(3)] == [2, 3, 0]


def test_round_robin_spreads_requests_evenly_regardless_of_speed():
    fleet = parse_fleet("H100-SXM:1,L4:1")
    devices = fleet.build(1000, 100)
    w = poisson(2.0, n=40, lengths=FixedLengths(200, 20), seed=3)
    r = simulate(devices, w, "round_robin")
    assert np.bincount(r.device, minlength=2).tolist() == [20, 20]


def test_least_load_is_plain_fewest_outstanding():
    from capsched.sim.policies import LeastLoad

    p = LeastLoad(np.random.default_rng(0))
    assert p.choose([3, 1, 1, 5], [True] * 4) == 1  # ties: first in device order
    assert p.choose([3, 1, 1, 5], [True, False, True, True]) == 2


def test_fault_fails_running_requests_and_they_are_retried(small):
    devices, w = small
    t = float(w.arrival_s[len(w) // 3])
    fault = Fault(devices[0].name, t, 5.0)
    for policy in ("least_load", "capsched"):
        r = simulate(devices, w, policy, faults=[fault])
        assert r.retries > 0, policy
        assert np.all(r.tries[r.status == DONE] >= 1)
        assert (r.tries > 1).any(), policy  # some request ran twice
        assert (r.status == DONE).sum() >= 0.9 * len(w), policy
        # Nothing completed on the failed device while it was down.
        done_on_0 = (r.device == 0) & (r.status == DONE)
        assert not np.any((r.finish_s[done_on_0] > t) & (r.finish_s[done_on_0] < t + 5.0)), policy
        if policy == "capsched":
            assert r.scheduler_stats["retried"] > 0
            assert r.scheduler_stats["conservation_ok"]


def test_clock_drop_slows_the_device_and_capsched_is_told(small, monkeypatch):
    devices, w = small
    base = simulate(devices, w, "round_robin")
    slow = simulate(devices, w, "round_robin", slowdowns=[Slowdown(devices[0].name, 0.0, 1e6, 0.3)])
    assert slow.busy_s[0] > base.busy_s[0]  # prefill is compute bound: slower at a lower clock

    import capsched.scheduler as sched_mod

    calls = []
    orig = sched_mod.Scheduler.set_clock

    def spy(self, device, clock_mhz, max_clock_mhz=None, *, now=None):
        calls.append((device, clock_mhz, max_clock_mhz, now))
        return orig(self, device, clock_mhz, max_clock_mhz, now=now)

    monkeypatch.setattr(sched_mod.Scheduler, "set_clock", spy)
    r = simulate(devices, w, "capsched", slowdowns=[Slowdown(devices[0].name, 1.0, 2.0, 0.5)])
    assert [c[0] for c in calls] == [devices[0].name, devices[0].name]
    assert calls[0][1] == pytest.approx(0.5 * calls[0][2]) and calls[1][1] == pytest.approx(calls[1][2])
    assert r.scheduler_stats["conservation_ok"]


def test_overlapping_faults_keep_the_device_down_until_the_last_ends():
    # The end of the first of two overlapping faults used to bring the device back.
    devices = parse_fleet("H100-SXM:1").build(1000, 200)
    w = poisson(5.0, n=200, seed=0)
    name = devices[0].name
    for policy in ("least_load", "capsched"):
        r = simulate(devices, w, policy, faults=[Fault(name, 1.0, 5.0), Fault(name, 3.0, 10.0)])
        assert not np.any((r.finish_s > 1.0) & (r.finish_s < 13.0)), policy
        assert not [iv for iv in r.busy_intervals[0] if iv[1] > 1.0 and iv[0] < 13.0], policy
        assert (r.status == DONE).sum() > 0, policy  # and it does come back
        # The same two faults in the other order, and one repeated, change nothing.
        again = simulate(devices, w, policy, faults=[Fault(name, 3.0, 10.0), Fault(name, 1.0, 5.0)])
        assert np.array_equal(again.finish_s, r.finish_s, equal_nan=True), policy


def test_overlapping_slowdowns_hold_the_deepest_in_progress(monkeypatch):
    devices = parse_fleet("H100-SXM:1").build(1000, 200)
    w = poisson(5.0, n=200, seed=0)
    name = devices[0].name
    outer = Slowdown(name, 1.0, 30.0, 0.3)
    nested = simulate(devices, w, "round_robin", slowdowns=[outer, Slowdown(name, 3.0, 3.0, 0.2)])
    alone = simulate(devices, w, "round_robin", slowdowns=[outer])
    cut = simulate(devices, w, "round_robin", slowdowns=[Slowdown(name, 1.0, 5.0, 0.3), Slowdown(name, 3.0, 3.0, 0.2)])
    # The inner, deeper one slows it further; its end does not end the outer one.
    def mean_latency(r):
        return float(np.nanmean(r.finish_s - w.arrival_s))

    assert mean_latency(nested) > mean_latency(alone) > 1.3 * mean_latency(cut)

    import capsched.scheduler as sched_mod

    scales = []
    orig = sched_mod.Scheduler.set_clock

    def spy(self, device, clock_mhz, max_clock_mhz=None, *, now=None):
        scales.append(round(clock_mhz / max_clock_mhz, 6))
        return orig(self, device, clock_mhz, max_clock_mhz, now=now)

    monkeypatch.setattr(sched_mod.Scheduler, "set_clock", spy)
    simulate(devices, w, "capsched", slowdowns=[outer, Slowdown(name, 3.0, 3.0, 0.2)])
    assert scales == [0.3, 0.2, 0.3, 1.0]


def test_kv_and_slot_limits_hold():
    fleet = Fleet((("L4", 1),), max_num_seqs=4)
    devices = fleet.build(1000, 100)
    w = poisson(50.0, n=60, lengths=FixedLengths(1000, 50), seed=0)
    for policy in ("least_load", "capsched"):
        sim = Simulation(devices, w, policy)
        seen = []
        orig = sim._maybe_start

        def wrapped(d, now, orig=orig):
            orig(d, now)
            seen.append(len(d.running) + len(d.joiners))

        sim._maybe_start = wrapped
        r = sim.run()
        assert max(seen) <= 4
        # Overloaded: the baseline runs everything late; capsched drops what expired.
        assert np.isin(r.status, [DONE] if policy == "least_load" else [DONE, EXPIRED]).all(), policy


def test_capsched_uses_the_real_scheduler(small, monkeypatch):
    import capsched.scheduler as sched_mod

    steps = []
    orig = sched_mod.Scheduler.step

    def spy(self, *a, **k):
        res = orig(self, *a, **k)
        steps.append(len(res.dispatched))
        return res

    monkeypatch.setattr(sched_mod.Scheduler, "step", spy)
    devices, w = small
    r = simulate(devices, w, "capsched")
    assert sum(steps) == r.scheduler_stats["dispatched"] >= len(w) - (r.status == EXPIRED).sum()


def test_goodput_is_the_highest_contiguous_passing_load():
    assert goodput([(0.3, 0.99), (0.5, 0.95), (0.7, 0.85), (0.9, 0.95)]) == 0.5
    assert goodput([(0.3, 0.5)]) == 0.0


def test_parsers_reject_bad_input():
    with pytest.raises(ConfigError, match="unknown accelerator"):
        parse_fleet("H999:2")
    with pytest.raises(ConfigError, match="count"):
        parse_fleet("H100-SXM:x")
    with pytest.raises(ConfigError):
        parse_fleet("H100-SXM:0")
    with pytest.raises(ConfigError, match="unknown policy"):
        parse_policies("fastest")
    assert parse_policies("p2c,capsched") == ("power_of_two_choices", "capsched")
    assert parse_fault("L4-0@3+4") == Fault("L4-0", 3.0, 4.0)
    assert parse_slowdown("L4-0@3+4:0.5") == Slowdown("L4-0", 3.0, 4.0, 0.5)
    with pytest.raises(ConfigError):
        parse_slowdown("L4-0@3+4:1.5")
    with pytest.raises(ConfigError):
        parse_fault("L4-0@3")


def test_experiment_summary_and_determinism():
    cfg = SimConfig(loads=(0.4, 1.2), policies=("least_load", "capsched"), requests=200, seed=3)
    a = run_experiment(cfg)
    b = run_experiment(cfg)
    da, db = a.to_dict(), b.to_dict()
    for d in (da, db):
        d.pop("wall_s")
        for run in d["runs"]:
            run.pop("wall_s")
    assert da == db
    assert len(a.runs) == 4
    m = a.runs[0]
    assert m.completed + m.failed + m.expired == m.requests == 200
    assert 0 <= m.slo_attainment <= 1 and m.latency_p50_s <= m.latency_p99_s
    assert set(m.utilization) == {d for d in a.device_rates}
    assert a.capacity_rps > 0


def test_a_failing_device_trips_its_breaker_and_its_work_moves(small):
    devices, w = small
    t = float(w.arrival_s[len(w) // 4])
    r = simulate(devices, w, "capsched", faults=[Fault(devices[0].name, t, 30.0)])
    s = r.scheduler_stats
    assert s["breaker_trips"] >= 1 and s["retried"] > 0 and s["conservation_ok"]
    # While the device was down (and its breaker open) its work ran elsewhere.
    ran_elsewhere = (r.tries > 1) & (r.status == DONE) & (r.device != 0)
    assert ran_elsewhere.any()


def test_a_scheduler_restart_from_its_checkpoint_keeps_the_accounting(small):
    devices, w = small
    t = float(w.arrival_s[len(w) // 2])
    sim = Simulation(devices, w, "capsched", restart_at=t)
    r = sim.run()
    assert sim.restarts == 1 and sim.requeued_on_restart > 0
    s = r.scheduler_stats
    # Every request ends exactly once, in the simulator and in the restored scheduler's books.
    assert s["accepted"] == len(w) and s["conservation_ok"]
    assert s["completed"] == int((r.status == DONE).sum())
    assert s["completed"] + s["expired"] + s["failed"] == len(w)
    assert s["in_flight"] == 0 and s["queued"] == 0
    base = simulate(devices, w, "capsched")
    assert (r.status == DONE).sum() >= 0.95 * (base.status == DONE).sum()


@pytest.mark.parametrize("policy", ["least_load", "round_robin", "capsched"])
def test_agent_chains_complete_in_dependency_order(small, policy):
    devices, w = small
    K = 3
    r = simulate(devices, w, policy, chain=K)
    n = len(w)
    assert set(np.unique(r.status)) <= {DONE, FAILED, EXPIRED}
    for s0 in range(0, n, K):
        steps = list(range(s0, min(s0 + K, n)))
        assert np.all(r.arrival_s[steps] == r.arrival_s[s0])  # the chain arrives as one
        for a, b in zip(steps, steps[1:]):
            if r.status[b] == DONE:
                assert r.status[a] == DONE and r.finish_s[a] <= r.finish_s[b], (policy, a, b)
            if r.status[a] != DONE:
                assert r.status[b] != DONE, (policy, a, b)
            assert r.deadline_s[b] > r.deadline_s[a]
    assert (r.status == DONE).mean() > 0.9, policy
    if policy == "capsched":
        s = r.scheduler_stats
        assert s["accepted"] == n and s["conservation_ok"]


def test_a_fleet_over_the_schedulers_device_limit_is_refused_at_parse_time():
    """L4:100000000 was accepted and then ran out of memory building the devices."""
    with pytest.raises(ConfigError, match=r"100,000,000 devices in all .*limit of 65,536"):
        parse_fleet("L4:100000000")
    with pytest.raises(ConfigError, match="65,537 devices in all"):  # the total counts, not each group
        parse_fleet("L4:65536,H100-SXM:1")
    with pytest.raises(ConfigError, match="65,537 devices in all"):
        Fleet((("L4", 65535), ("H100-SXM", 2)))
    assert parse_fleet("L4:65536").size == 65536


def test_an_accelerator_listed_twice_is_one_group_with_unique_device_names():
    fleet = parse_fleet("L4:1,H100-SXM:1,l4:2")
    assert fleet.groups == (("L4", 3), ("H100-SXM", 1))
    names = [d.name for d in fleet.build(1000, 200)]
    assert names == ["L4-0", "L4-1", "L4-2", "H100-SXM-0"]


def test_all_with_other_policies_is_refused_clearly():
    for text in ("all,capsched", "capsched, all"):
        with pytest.raises(ConfigError, match="'all' already names every policy; give it alone"):
            parse_policies(text)
    assert parse_policies("all") == POLICIES


@pytest.fixture(scope="module")
def tiny():
    w = builtin_trace("azure-conv").head(40).shift_to_zero()
    devices = Fleet((("H100-SXM", 1), ("L4", 1))).build(1000, 200)
    return devices, w.scale_to_rate(5.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(seed=-1), "seed must be an integer >= 0, got -1"),
        (dict(seed=1.5), "seed must be an integer >= 0, got 1.5"),
        (dict(seed="7"), "seed must be an integer >= 0"),
        (dict(max_retries=-1), r"max_retries must be an integer in 0..1000, got -1"),
        (dict(max_retries="3"), "max_retries must be an integer"),
        (dict(faults=["L4-0@1+2"]), "a fault must be a Fault"),
        (dict(faults="L4-0@1+2"), "faults must be a sequence of Fault"),
        (dict(faults=[Fault("Z-9", 1.0, 2.0)]), "unknown device 'Z-9'"),
        (dict(slowdowns=[Fault("L4-0", 1.0, 2.0)]), "a slowdown must be a Slowdown"),
        (dict(deadlines="soon"), "deadlines must be 40 numbers"),
        (dict(deadlines=np.full(39, 1e9)), r"deadlines has shape \(39,\)"),
        (dict(deadlines=np.full(40, np.nan)), r"deadlines\[0\] must be a finite time"),
        (dict(deadlines=np.full(40, -1.0)), r"deadlines\[0\] must be a finite time >= the request's arrival"),
        (dict(capsched_policy="fastest"), "unknown capsched_policy 'fastest'"),
        (dict(capsched_config={"no_such_field": 1}), "capsched_config: .*no_such_field"),
        (dict(capsched_config={"max_retries": -1}), "capsched_config: max_retries"),
        (dict(capsched_config=[("fair_share", True)]), "capsched_config must be a dict"),
        (dict(capsched_request={"priority": 2.0}), "capsched_request: priority"),
        (dict(capsched_request={"deadline": 3.0}), "'deadline' is set by the simulator"),
        (dict(continuous="yes"), "continuous must be True, False or None"),
    ],
)
def test_simulation_checks_its_arguments_before_it_runs(tiny, kwargs, message):
    """These were accepted and crashed later (numpy ValueError, AttributeError, a
    TypeError in the capsched run after the baselines) or were used as given."""
    devices, w = tiny
    for policy in ("round_robin", "capsched"):
        with pytest.raises(ConfigError, match=message):
            Simulation(devices, w, policy, **kwargs)
        with pytest.raises(ConfigError, match=message):
            simulate(devices, w, policy, **kwargs)


def test_fault_slowdown_deadlines_for_and_simulate_check_their_arguments(tiny):
    devices, w = tiny
    with pytest.raises(ConfigError, match="START must be >= 0"):
        Fault("L4-0", float("nan"), 1.0)
    with pytest.raises(ConfigError, match="START \\+ DURATION must be a finite time"):
        Fault("L4-0", 1e308, 1e308)
    with pytest.raises(ConfigError, match=r"CLOCK_SCALE must be in \(0, 1\]"):
        Slowdown("L4-0", 1.0, 2.0, 0.0)
    with pytest.raises(ConfigError, match="device must be a device name"):
        Fault("", 1.0, 2.0)
    with pytest.raises(ConfigError, match="the fleet has no device"):
        deadlines_for(w, [])
    with pytest.raises(ConfigError, match="factor must be a finite number > 0"):
        deadlines_for(w, devices, factor=float("inf"))
    with pytest.raises(ConfigError, match="workload must be a Workload"):
        deadlines_for([1, 2], devices)
    with pytest.raises(ConfigError, match="unknown keyword argument 'sed'"):
        simulate(devices, w, "round_robin", sed=1)
    twice = [devices[0], devices[0]]
    with pytest.raises(ConfigError, match="two devices are named 'H100-SXM-0'"):
        Simulation(twice, w, "round_robin")


def test_simconfig_shares_the_simulation_checks():
    for kwargs, message in [
        (dict(faults=("L4-0@1+2",)), "a fault must be a Fault"),
        (dict(capsched_config={"max_retries": 5000}), "capsched_config: max_retries"),
        (dict(capsched_policy="nope"), "unknown capsched_policy"),
        (dict(seed=True), "seed must be an integer >= 0, got True"),
        (dict(policies=("capsched", "capsched")), "listed twice"),
    ]:
        with pytest.raises(ConfigError, match=message):
            SimConfig(**kwargs)


def _with_huge(w, idx, prompt=9_000_000):
    p = w.prompt_tokens.copy()
    p[list(idx)] = prompt
    return Workload(w.arrival_s, p, w.output_tokens, "huge")


@pytest.mark.parametrize("policy", POLICIES)
def test_a_request_no_device_can_hold_fails_under_every_policy(tiny, policy):
    """capsched's Scheduler refused it at submit, which aborted the whole experiment
    after the baselines had run."""
    devices, w = tiny
    w = _with_huge(w, [5, 17])
    r = simulate(devices, w, policy, seed=2)
    assert r.unservable == 2
    assert r.status[5] == FAILED and r.status[17] == FAILED
    assert np.isnan(r.finish_s[5]) and r.tries[5] == 0  # never started anywhere
    assert (r.status == DONE).sum() >= 30


@pytest.mark.parametrize("policy", ["round_robin", "least_load", "capsched"])
def test_an_unservable_chain_step_fails_it_and_the_rest_of_its_chain(tiny, policy):
    devices, w = tiny
    w = _with_huge(w, [7])  # chains of 3: 6, 7, 8
    r = simulate(devices, w, policy, chain=3)
    assert r.unservable == 1
    assert list(r.status[6:9]) == [DONE, FAILED, FAILED]
    assert r.status[3] == DONE and r.status[9] == DONE


def test_run_experiment_with_an_unservable_request_completes_and_warns(tmp_path):
    path = tmp_path / "mix.jsonl"
    with open(path, "w") as f:
        for i in range(30):
            f.write(json.dumps({"timestamp": i * 100, "input_length": 9_000_000 if i == 4 else 500,
                                "output_length": 50}) + "\n")
    warnings = []
    exp = run_experiment(SimConfig(trace=str(path), loads=(0.5,), requests=40), warn=warnings.append)
    assert len(exp.runs) == len(POLICIES)
    for r in exp.runs:
        assert r.failed >= 1 and r.completed + r.failed + r.expired == 30
    for res in exp.results.values():
        assert res.status[4] == FAILED and res.unservable == 1
    assert exp.to_dict()["unservable_requests"] == 1
    assert any("has only 30 requests: running 30, not 40" in m for m in warnings)
    assert any("1 of the 30 requests need more KV tokens than any device holds" in m and "request 4" in m
               for m in warnings)
    # The capacity is that of the servable requests (the huge one would drag it to ~0).
    assert exp.capacity_rps > 10
