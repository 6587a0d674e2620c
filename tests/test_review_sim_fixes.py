"""Regressions from an independent review of the simulator and job commands: inputs that
passed validation and then failed half-way through a run (naming the wrong thing),
options accepted without effect, and misleading messages."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import subprocess
import sys

import pytest

from capsched.cli import main
from capsched.errors import ConfigError
from capsched.jobs import MAX_SCHEDULE_TIME, load_job, simulate_job
from capsched.sim.engine import MAX_SIM_TIME, Fault, Slowdown, Simulation
from capsched.sim.fleet import DEFAULT_FLEET, Fleet
from capsched.sim.policies import POLICIES, parse_policies
from capsched.sim.run import LOAD_RANGE, SimConfig, load_workload, run_experiment
from capsched.sim.workload import TraceFormatError, builtin_trace, load_trace


def _usage_error(argv, capsys, command="simulate"):
    """Run the command line; it must exit 2 with a one-line usage error (no traceback)."""
    with pytest.raises(SystemExit) as exc:
        main(argv, out=io.StringIO())
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"capsched {command}: error: ")
    return last


# -- 2, 3: refused before anything runs, naming the flag ------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-num-seqs", "70000"], "--max-num-seqs must be in 1..65536, got 70000"),
        (["--max-num-seqs", "0"], "--max-num-seqs must be in 1..65536, got 0"),
        (["--fault", "H100-SXM-0@1e16+5"], "bad fault 'H100-SXM-0@1e16+5': START + DURATION must be at most 1e+09 s"),
        (["--fault", "H100-SXM-0@0+1e16"], "bad fault 'H100-SXM-0@0+1e16': START + DURATION must be at most 1e+09 s"),
        (["--slowdown", "H100-SXM-0@1e16+5:0.5"], "bad slowdown 'H100-SXM-0@1e16+5:0.5': START + DURATION must be at most"),
        (["--restart-at", "1e16"], "--restart-at must be a time in seconds in 0..1e+09, got 1e+16"),
        (["--restart-at", "nan"], "--restart-at must be a time in seconds in 0..1e+09, got nan"),
        (["--load", "1e-300"], "--load: each load must be in 1e-06..1e+06"),
        (["--load", "1e-14"], "--load: each load must be in 1e-06..1e+06"),
        (["--load", "1e307"], "--load: each load must be in 1e-06..1e+06"),
        (["--load", "1e300"], "--load: each load must be in 1e-06..1e+06"),
        (["--load", "0.5,0.5"], "--load: '0.5' is listed twice"),
        (["--load", "0.5,0.50"], "--load: '0.50' is listed twice"),
    ],
)
def test_simulate_refuses_up_front_naming_the_flag(argv, message, capsys):
    assert message in _usage_error(["simulate", "--no-progress", "--requests", "20", *argv], capsys)


def test_a_load_that_spreads_the_trace_beyond_the_time_range_is_refused_before_any_run(capsys):
    # One L4 serving Llama-2-7B holds about 0.5 req/s: at 1e-6 of it, 2,000 arrivals
    # span ~4e9 s (the run used to fail half-way with the Scheduler's clock error).
    msg = _usage_error(["simulate", "--fleet", "L4:1", "--model", "Llama-2-7B", "--load", "1e-6",
                        "--policies", "least_load,capsched"], capsys)
    assert "--load 1e-06: the trace's 2000 arrivals would span" in msg and "beyond the simulator's 1e+09 s" in msg


def test_fleet_bounds_max_num_seqs_by_the_schedulers_batch_limit():
    with pytest.raises(ConfigError, match="max_num_seqs must be an integer in 1..65536, got 65537"):
        Fleet(DEFAULT_FLEET.groups, max_num_seqs=65537)
    assert Fleet(DEFAULT_FLEET.groups, max_num_seqs=65536).max_num_seqs == 65536


def test_events_and_restart_are_bounded_by_the_simulators_time_range():
    assert MAX_SIM_TIME == 1e9
    Fault("H100-SXM-0", MAX_SIM_TIME - 1, 1)
    with pytest.raises(ConfigError, match="START \\+ DURATION must be at most 1e\\+09 s"):
        Fault("H100-SXM-0", MAX_SIM_TIME, 1)
    with pytest.raises(ConfigError, match="START \\+ DURATION must be at most 1e\\+09 s"):
        Slowdown("H100-SXM-0", 1, 1e16, 0.5)
    with pytest.raises(ConfigError, match="restart_at must be a time in seconds in 0..1e\\+09, got 1e\\+16"):
        SimConfig(restart_at=1e16)
    w = builtin_trace().head(20).shift_to_zero()
    devices = DEFAULT_FLEET.build(1000, 200)
    with pytest.raises(ConfigError, match="last arrival is at 2e\\+09 s, after the simulator's time range"):
        Simulation(devices, w.scale_time(2e9 / w.duration_s), "least_load")


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("huge.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,5,5\n"
                     "2023-11-16 18:15:47.1,999999999999999999,5\n", ":3: field 'ContextTokens'"),
        ("huge.jsonl", '{"timestamp": 1, "input_length": 5, "output_length": 5}\n'
                       '{"timestamp": 2, "input_length": 5, "output_length": 10000001}\n', ":2: field 'output_length'"),
    ],
)
def test_trace_token_counts_beyond_max_tokens_are_refused_at_load(tmp_path, capsys, name, text, where):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(TraceFormatError, match="must be at most 10,000,000 tokens"):
        load_trace(str(p))
    msg = _usage_error(["simulate", "--no-progress", "--trace", str(p)], capsys)
    assert f"{p}{where} must be at most 10,000,000 tokens (capsched.MAX_TOKENS)" in msg
    # (the limit itself still loads)
    p.write_text(text.replace("999999999999999999", "10000000").replace("10000001", "10000000"))
    assert int(load_trace(str(p)).prompt_tokens.max()) <= 10_000_000


# -- 4: a Mooncake line with an integer Python will not convert -------------------------------


def test_mooncake_integer_of_5000_digits_is_a_trace_format_error(tmp_path, capsys):
    p = tmp_path / "big.jsonl"
    p.write_text('{"timestamp": 1, "input_length": 5, "output_length": 5}\n'
                 '{"timestamp": 1' + "0" * 5000 + ', "input_length": 5, "output_length": 5}\n')
    with pytest.raises(TraceFormatError, match=r"big\.jsonl:2: is not valid JSON: an integer of more than 4300 digits"):
        load_trace(str(p))
    assert "big.jsonl:2: is not valid JSON" in _usage_error(["simulate", "--no-progress", "--trace", str(p)], capsys)


# -- 5: a full capsched queue is a drop, not a crash after the baselines ----------------------


def test_queue_full_at_arrival_is_a_drop():
    exp = run_experiment(SimConfig(policies=("least_load", "capsched"), requests=120, loads=(1.5,),
                                   capsched_config={"max_queued": 1}))
    cap = next(r for r in exp.runs if r.policy == "capsched")
    assert cap.expired > 0  # refused at submit: dropped
    assert cap.completed + cap.failed + cap.expired == 120
    assert cap.extra["scheduler"]["conservation_ok"]


# -- 6, 7: SimConfig's list fields ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loads=0.5), "loads must be a tuple (or list), got 0.5"),
        (dict(loads="0.5"), "loads must be a tuple (or list), got '0.5'"),
        (dict(loads=()), "loads is empty"),
        (dict(loads=(True,)), "loads: a load must be a number in 1e-06..1e+06 (a share of fleet capacity), got True"),
        (dict(loads=(1e-7,)), "got 1e-07"),
        (dict(loads=(2e6,)), "got 2000000.0"),
        (dict(loads=(0.5, 0.5)), "loads: a load is listed twice in (0.5, 0.5)"),
        (dict(policies="capsched"), "policies must be a tuple (or list), got 'capsched'"),
        (dict(policies=()), "policies is empty"),
        (dict(policies=("capsched", 3)), "policies: unknown policy 3"),
    ],
)
def test_simconfig_checks_its_list_fields(kwargs, message):
    with pytest.raises(ConfigError) as exc:
        SimConfig(**kwargs)
    assert message in str(exc.value)


def test_simconfig_takes_lists_and_the_ends_of_the_load_range():
    c = SimConfig(loads=[LOAD_RANGE[0], 1, LOAD_RANGE[1]], policies=["capsched"])
    assert c.loads == (1e-6, 1.0, 1e6) and c.policies == ("capsched",)


# -- 8: options without effect; the configuration in the JSON ---------------------------------


@pytest.mark.parametrize("flag, value", [("--restart-at", "5"), ("--capsched-policy", "fcfs"),
                                         ("--capsched-class", "deadline"), ("--capsched-class", "normal")])
def test_capsched_options_without_capsched_are_refused(flag, value, capsys):
    msg = _usage_error(["simulate", "--requests", "20", "--policies", "least_load,random", flag, value], capsys)
    assert f"{flag} applies to the capsched policy only, and --policies 'least_load,random' does not include it" in msg


def test_late_fault_warns_and_json_records_the_whole_configuration(capsys):
    out = io.StringIO()
    code = main(["simulate", "--no-progress", "--requests", "40", "--load", "0.5", "--policies", "capsched",
                 "--fault", "H100-SXM-0@100000+5", "--restart-at", "1", "--chain", "2", "--json"], out=out)
    err = capsys.readouterr().err
    assert code == 0
    assert "warning: fault H100-SXM-0@100000+5 starts at 100000 s, after the last arrival" in err
    d = json.loads(out.getvalue())
    assert d["restart_at"] == 1.0 and d["chain"] == 2 and d["capsched_config"] == {}
    exp = run_experiment(SimConfig(policies=("capsched",), loads=(0.5,), requests=20,
                                   capsched_config={"wait_for_fit": False}))
    assert exp.to_dict()["capsched_config"] == {"wait_for_fit": False}


# -- 9: gamma:CV ------------------------------------------------------------------------------


def test_gamma_cv_beyond_100_is_refused_with_the_reason(capsys):
    msg = _usage_error(["simulate", "--trace", "gamma:1000"], capsys)
    assert "bad trace 'gamma:1000': the CV must be at most 100" in msg
    assert len(load_workload("gamma:100", 2000, 0)) == 2000  # the documented end works
    with pytest.raises(ConfigError, match="its 2 arrivals fell at one instant .* give a smaller CV or more --requests"):
        load_workload("gamma:100", 2, 0)  # (too few requests for so bursty a draw)


# -- 10: jobs -------------------------------------------------------------------------------


def _job(tmp_path, tasks, name="job.json"):
    p = tmp_path / name
    p.write_text(json.dumps(tasks))
    return str(p)


@pytest.mark.parametrize("action", ["validate", "submit"])
def test_job_schedule_time_validate_and_submit_agree(tmp_path, capsys, action):
    p = _job(tmp_path, [{"task_id": "a", "prompt_tokens": 10, "schedule_time": 1e15}])
    msg = _usage_error(["jobs", action, p], capsys, command=f"jobs {action}")
    assert "field 'schedule_time': must be in [0, 1e+12], got 1000000000000000.0" in msg
    ok = _job(tmp_path, [{"task_id": "a", "prompt_tokens": 10, "schedule_time": MAX_SCHEDULE_TIME}], "ok.json")
    run = simulate_job(load_job(ok))
    assert run.tasks[0].status == "completed" and run.makespan > MAX_SCHEDULE_TIME


def test_job_submit_names_file_and_task_of_a_request_no_device_holds(tmp_path, capsys):
    p = _job(tmp_path, [{"task_id": "ok", "prompt_tokens": 10},
                        {"task_id": "big", "prompt_tokens": 10_000_000, "max_new_tokens": 10_000_000}])
    msg = _usage_error(["jobs", "submit", p], capsys, command="jobs submit")
    assert f"error: {p}: task 'big': the request needs 20000000 KV tokens" in msg


@pytest.mark.parametrize("action", ["validate", "submit"])
@pytest.mark.parametrize("value", ["-1", "1e300", "nan", "inf", "1e16"])
def test_job_deadline_out_of_range_is_refused(tmp_path, capsys, action, value):
    p = _job(tmp_path, [{"task_id": "a", "prompt_tokens": 10}])
    msg = _usage_error(["jobs", action, p, "--deadline", value], capsys, command=f"jobs {action}")
    assert "--deadline must be a time in seconds in 0..1e+15 (the clock's range), got " in msg


# -- 11: case -------------------------------------------------------------------------------


def test_uppercase_gz_trace_is_decompressed(tmp_path):
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,5,5\n2023-11-16 18:15:47.1,6,7\n"
    p = tmp_path / "upper.CSV.GZ"
    p.write_bytes(gzip.compress(text.encode()))
    w = load_trace(str(p))
    assert w.prompt_tokens.tolist() == [5, 6] and w.duration_s == pytest.approx(1.0)


def test_policies_all_in_any_case():
    assert parse_policies("ALL") == POLICIES == parse_policies(" All ")
    with pytest.raises(ConfigError, match="'all' already names every policy; give it alone"):
        parse_policies("ALL,capsched")


# -- 12: an output that cannot be written ------------------------------------------------------


class _FullStream(io.StringIO):
    def write(self, s):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_an_unwritable_output_is_one_line_and_status_1(capsys):
    assert main(["specs"], out=_FullStream()) == 1
    err = capsys.readouterr().err
    assert err == "capsched specs: error: cannot write the output: No space left on device\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_dev_full_exits_1_without_traceback():
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "capsched", "specs"], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr == "capsched specs: error: cannot write the output: No space left on device\n"
