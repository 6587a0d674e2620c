"""Regressions from a second review of the simulator: a long chain that crashed the
engine, a near-zero slowdown that stretched latencies past the time range (and
iterations that kept the clock they started with), baselines that failed servable long
requests, arrivals handled before a fault at the same instant, plot files that
overwrote each other, and a JSON trace error naming the wrong column."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from capsched.cli import main
from capsched.errors import ConfigError
from capsched.sim import parse_fleet
from capsched.sim.engine import DONE, FAILED, MIN_CLOCK_SCALE, Fault, Slowdown, parse_slowdown, simulate
from capsched.sim.plots import load_tag, plot_names, utilization_load
from capsched.sim.policies import BASELINES, LeastLoad, PowerOfTwoChoices, RandomChoice, RoundRobin
from capsched.sim.run import SimConfig, check_out_dir
from capsched.sim.workload import TraceFormatError, Workload, load_trace

BASELINE_NAMES = ("round_robin", "random", "least_load", "power_of_two_choices")


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--no-progress"] + argv, out=io.StringIO())
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("capsched simulate: error: ")
    return last


def _workload(arrivals, prompts, outputs):
    return Workload(np.array(arrivals, dtype=float), np.array(prompts), np.array(outputs), name="t")


# -- 2: a chain of 1000 steps whose first step fails ----------------------------------


@pytest.mark.parametrize("policy", ["least_load", "round_robin"])
def test_a_failed_first_step_of_a_1000_step_chain_fails_the_rest_without_recursion(policy):
    devices = parse_fleet("H100-SXM:1").build(1000, 100)
    n = 1000
    w = _workload(np.arange(n) * 0.01, [9_000_000] + [500] * (n - 1), [50] * n)
    r = simulate(devices, w, policy, chain=1000)  # RecursionError before
    assert (r.status == FAILED).all()
    assert r.unservable == 1


def test_a_long_chain_whose_steps_complete_runs_in_order():
    devices = parse_fleet("H100-SXM:1").build(1000, 100)
    n = 1000
    w = _workload(np.zeros(n), [50] * n, [2] * n)
    r = simulate(devices, w, "least_load", chain=1000)
    assert (r.status == DONE).all()
    assert np.all(np.diff(r.finish_s) > 0)  # each step after the one before


# -- 3: the slowdown's clock scale has a floor; running iterations are re-timed --------


def test_a_clock_scale_below_the_floor_is_refused_naming_it(capsys):
    assert MIN_CLOCK_SCALE == 0.01
    last = _usage_error(["--slowdown", "H100-SXM-0@0+10:1e-300", "--requests", "20"], capsys)
    assert "CLOCK_SCALE" in last and "at least 0.01" in last and "1e-300" in last
    with pytest.raises(ConfigError, match=r"at least 0\.01 .*got 0\.005"):
        Slowdown("H100-SXM-0", 0.0, 1.0, 0.005)
    with pytest.raises(ConfigError, match="1e-300"):
        parse_slowdown("H100-SXM-0@0+10:1e-300")
    assert Slowdown("H100-SXM-0", 0.0, 1.0, 0.01).clock_scale == 0.01


@pytest.mark.parametrize("policy", ["least_load", "capsched"])
def test_an_iteration_in_progress_is_retimed_when_the_clock_changes(policy):
    # One request, one iteration (output 1 token): a compute-bound 8,000-token prefill.
    devices = parse_fleet("H100-SXM:1").build(1000, 100)
    name = devices[0].name
    w = _workload([0.0], [8000], [1])

    def finish(slowdowns):
        r = simulate(devices, w, policy, slowdowns=slowdowns)
        assert r.status[0] == DONE
        return float(r.finish_s[0])

    base = finish([])
    slow = finish([Slowdown(name, 0.0, 1e6, 0.5)])  # the whole iteration at half clock
    assert slow > 1.3 * base
    # Slowed from half-way: the second half of the work runs at the slow clock.
    assert finish([Slowdown(name, base / 2, 1e6, 0.5)]) == pytest.approx(base / 2 + slow / 2, rel=1e-9)
    # A brief, deep slowdown at the start: the iteration gets its speed back when it
    # ends (it used to keep the 1 % clock to its end: ~100 x the time).
    # (capsched may wait out the 0.1 ms rather than start the iteration at 1 %.)
    brief = finish([Slowdown(name, 0.0, 1e-4, 0.01)])
    assert base < brief <= base + 1e-4 + 1e-12


# -- 4: baselines bind a long request only to devices that can hold it ------------------


@pytest.mark.parametrize("policy", BASELINE_NAMES)
def test_baselines_bind_a_long_request_only_where_it_fits(policy):
    devices = parse_fleet("H100-SXM:1,L4:1").build(1000, 100)
    assert devices[1].kv_tokens < 100_010 <= devices[0].kv_tokens
    n = 12
    w = _workload(np.arange(n) * 5.0, [100_000] * n, [10] * n)
    r = simulate(devices, w, policy)
    assert (r.status == DONE).all(), r.status  # some failed at once on the L4 before
    assert (r.device == 0).all()
    assert r.unservable == 0 and r.retries == 0


def test_a_request_no_device_can_hold_still_fails_under_every_baseline():
    devices = parse_fleet("H100-SXM:1,L4:1").build(1000, 100)
    w = _workload([0.0, 1.0, 2.0], [100, 600_000, 100], [10, 10, 10])
    for policy in BASELINE_NAMES:
        r = simulate(devices, w, policy)
        assert r.status.tolist() == [DONE, FAILED, DONE], policy
        assert r.unservable == 1


def test_binding_policies_choose_among_eligible_devices():
    rng = np.random.default_rng(0)
    up = [True] * 4
    only = [False, True, False, True]
    rr = RoundRobin(rng)
    assert [rr.choose([0] * 4, up, only) for _ in range(3)] == [1, 3, 1]
    assert rr.choose([0] * 4, up) == 2  # the turn goes on from the last chosen
    assert rr.choose([0] * 4, [False, False, True, True], [True, True, False, False]) == 0  # none up: eligible
    assert LeastLoad(rng).choose([0, 5, 0, 3], up, only) == 3
    assert LeastLoad(rng).choose([0, 5, 0, 3], [True, True, True, False], only) == 1
    for cls in (RandomChoice, PowerOfTwoChoices):
        p = cls(np.random.default_rng(1))
        assert {p.choose([0] * 4, up, only) for _ in range(40)} == {1, 3}
    assert set(BASELINES) == set(BASELINE_NAMES)


# -- 5: a fault that begins at an arrival's instant is handled first --------------------


@pytest.mark.parametrize("policy", ["least_load", "capsched"])
def test_a_fault_at_the_arrival_instant_comes_first(policy):
    devices = parse_fleet("H100-SXM:1").build(1000, 100)
    name = devices[0].name
    w = _workload([0.0, 1.0], [100, 100], [5, 5])
    r = simulate(devices, w, policy, faults=[Fault(name, 0.0, 10.0)], deadlines=np.array([100.0, 100.0]))
    # The device was down from t = 0: nothing started on it and failed; both ran after.
    assert r.retries == 0
    assert r.tries.tolist() == [1, 1]
    assert r.status.tolist() == [DONE, DONE]
    assert (r.first_token_s >= 10.0).all()


def test_a_fault_ending_at_an_arrival_instant_has_the_device_back_for_it():
    devices = parse_fleet("H100-SXM:1,L4:1").build(1000, 100)
    w = _workload([5.0, 5.0], [100, 100], [5, 5])
    r = simulate(devices, w, "least_load", faults=[Fault(devices[0].name, 0.0, 5.0)])
    assert r.device.tolist() == [0, 1]  # the H100 (first) was up again at 5 s: one each


# -- 6: plot names unique per load; the utilization load; plot paths checked -----------


def test_load_tags_are_unique_and_short_where_they_can_be():
    assert [load_tag(x) for x in (0.3, 0.5, 1.0, 1.5, 1e-6)] == ["0.3", "0.5", "1", "1.5", "1e-06"]
    a, b = load_tag(0.5000001), load_tag(0.5000002)
    assert a != b and float(a) == 0.5000001 and float(b) == 0.5000002
    names = plot_names([0.5000001, 0.5000002], ["least_load"])
    assert len(set(names)) == len(names)
    assert utilization_load([0.3, 0.9, 1.5]) == 0.9
    assert utilization_load([3.0, 1.5]) == 1.5  # every load above 1: the lowest


def test_two_loads_that_format_alike_write_two_plots(tmp_path):
    pytest.importorskip("matplotlib")  # (the sim extra; the test extra has no matplotlib)
    out = tmp_path / "o"
    main(["simulate", "--no-progress", "--policies", "least_load", "--load", "0.5000001,0.5000002",
          "--requests", "30", "--out", str(out)], out=io.StringIO())
    cdfs = sorted(p for p in os.listdir(out) if p.startswith("latency_cdf_load"))
    assert cdfs == ["latency_cdf_load0.5000001.png", "latency_cdf_load0.5000002.png"]
    assert "utilization_least_load_load0.5000002.png" in os.listdir(out)


def test_a_directory_where_a_plot_goes_is_refused_before_the_run(tmp_path, capsys):
    out = tmp_path / "o"
    (out / "latency_cdf_load0.5.png").mkdir(parents=True)
    last = _usage_error(["--policies", "least_load", "--load", "0.5", "--requests", "20", "--out", str(out)], capsys)
    assert "latency_cdf_load0.5.png exists and is not a regular file" in last
    cfg = SimConfig(loads=(0.5,), policies=("least_load",), requests=20)
    with pytest.raises(ConfigError, match="latency_cdf_load0.5.png"):
        check_out_dir(str(out), cfg)
    with pytest.raises(ConfigError, match="latency_cdf_load0.5.png"):
        check_out_dir(str(out))
    other = tmp_path / "p"
    (other / "utilization_capsched_load0.9.png").mkdir(parents=True)
    with pytest.raises(ConfigError, match="utilization_capsched_load0.9.png"):
        check_out_dir(str(other), SimConfig(loads=(0.3, 0.9, 1.5), requests=20))
    check_out_dir(str(other), SimConfig(loads=(0.3,), requests=20))  # not one of its plots


# -- nit: a truncated JSON line's column ----------------------------------------------


def test_a_truncated_mooncake_line_reports_its_real_column(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text('{"timestamp": 0, "input_length": 5, "output_length": 3}\n{"timestamp": 1, "input_length": 5\n')
    with pytest.raises(TraceFormatError, match=r":2: is not valid JSON: Expecting ',' delimiter at column 35"):
        load_trace(str(p))
