"""``capsched simulate``: smoke runs, JSON, errors (exit status 2, no traceback)."""

from __future__ import annotations

import builtins
import io
import json
import os

import pytest

from capsched.cli import main


def _run(argv, capsys):
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


def test_simulate_json_smoke(capsys):
    code, out, _ = _run(["simulate", "--requests", "120", "--load", "0.5,1.5", "--json"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["requests"] == 120 and d["loads"] == [0.5, 1.5]
    assert {r["policy"] for r in d["runs"]} == {"round_robin", "random", "least_load", "power_of_two_choices", "capsched"}
    assert set(d["goodput_load"]) == set(d["policies"])
    for r in d["runs"]:
        assert r["completed"] + r["failed"] + r["expired"] == 120
    assert d["fleet"] == [["H100-SXM", 2], ["A100-SXM-80GB", 2], ["L4", 4]]


def test_simulate_is_deterministic_for_a_seed(capsys):
    argv = ["simulate", "--requests", "100", "--load", "0.7", "--policies", "random,p2c,capsched", "--seed", "5", "--json"]
    a = json.loads(_run(argv, capsys)[1])
    b = json.loads(_run(argv, capsys)[1])
    for d in (a, b):
        d.pop("wall_s")
        for r in d["runs"]:
            r.pop("wall_s")
    assert a == b


def test_simulate_table_and_out_dir(tmp_path, capsys):
    code, out, err = _run(
        ["simulate", "--requests", "80", "--load", "0.6", "--policies", "least_load,capsched", "--out", str(tmp_path),
         "--fleet", "H100-SXM:1,L4:2", "--fault", "L4-0@1+2", "--slowdown", "H100-SXM-0@0.5+1:0.5"],
        capsys,
    )
    assert code == 0
    assert "least_load" in out and "capsched" in out and "Goodput" in out and "SLO" in out
    assert os.path.exists(tmp_path / "results.json")
    d = json.loads((tmp_path / "results.json").read_text())
    assert d["faults"] == [{"device": "L4-0", "start_s": 1.0, "duration_s": 2.0}]


def test_simulate_without_matplotlib_or_tqdm(tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_extras(name, *args, **kwargs):
        if name.split(".")[0] in ("matplotlib", "tqdm"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_extras)
    code, out, err = _run(
        ["simulate", "--requests", "60", "--load", "0.5", "--policies", "least_load", "--out", str(tmp_path)], capsys
    )
    assert code == 0
    assert "matplotlib is not installed" in err
    assert "[1/1] load 0.5 least_load" in err  # plain progress lines
    assert os.listdir(tmp_path) == ["results.json"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--fleet", "H999:2"], "unknown accelerator"),
        (["--fleet", "H100-SXM:two"], "count"),
        (["--load", "0"], "> 0"),
        (["--load", "-0.5"], "> 0"),
        (["--load", "abc"], "not a number"),
        (["--policies", "fastest"], "unknown policy"),
        (["--trace", "/no/such/trace.csv"], "unknown trace"),
        (["--model", "GPT-9"], "unknown model"),
        (["--fault", "L4-0@x"], "bad fault"),
        (["--fault", "Z-9@1+2"], "unknown device"),
        (["--requests", "1"], "--requests"),
        (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
        (["--trace", "gamma:-1"], "cv must be a finite number > 0, got -1.0"),
        (["--trace", "gamma:1e-200"], "bad trace 'gamma:1e-200': cv must be in [1e-06, 10000]"),  # ZeroDivisionError
        (["--trace", "gamma:1e200"], "bad trace 'gamma:1e200': cv must be in [1e-06, 10000]"),
        (["--fleet", "L4:100000000"], "100,000,000 devices in all (L4:100000000), more than the Scheduler's limit"),
        (["--policies", "all,capsched"], "'all' already names every policy; give it alone"),
        (["--out", ""], "--out must name a directory, got ''"),
    ],
)
def test_simulate_bad_input_exits_2_without_traceback(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--requests", "20", *argv], out=io.StringIO())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert err.startswith("usage: capsched simulate")


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("latin1.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n\xff\n", "is not UTF-8 text"),
        ("notgzip.csv.gz", b"plain text", "is not a complete gzip file"),
        ("binary.jsonl", b'{"timestamp": 1, "input_length": 5, "output_length": 5}\n\xfe\n', "is not UTF-8 text"),
        ("superscript.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1,10,\u00b2\n".encode(),
         "must be a whole number of tokens"),
        ("hugecount.csv", b"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.1," + b"9" * 30 + b",5\n",
         "must be below 10**18 tokens"),
        ("bigfield.csv", b'TIMESTAMP,ContextTokens,GeneratedTokens\n"' + b"x" * 200_000 + b'",1,1\n',
         "is not a readable CSV file"),
        ("deep.jsonl", b"[" * 100_000 + b"\n", "nested too deeply"),
        ("bigts.jsonl", b'{"timestamp": ' + b"9" * 400 + b', "input_length": 5, "output_length": 5}\n',
         "must be a number of milliseconds"),
    ],
)
def test_simulate_unreadable_trace_file_exits_2_without_traceback(tmp_path, name, data, message, capsys):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--requests", "20", "--trace", str(path)], out=io.StringIO())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and name in err
    assert "Traceback" not in err


def test_a_closed_pipe_ends_quietly():
    """``capsched specs --json | head``: the reader goes away; no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "capsched", "specs", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child writes (it is still importing)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(60) in (0, 141)
    assert "Traceback" not in err and "BrokenPipeError" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--inflight-batches", "0"], "inflight_batches must be an integer >= 1, got 0"),
        (["--log-level", "LOUD"], "invalid choice: 'loud'"),
    ],
)
def test_serve_bad_input_exits_2_without_traceback(argv, message, capsys):
    """``capsched serve`` checks its arguments before it starts anything (these two were
    a silent fallback to the fleet's default and a KeyError from uvicorn)."""
    pytest.importorskip("uvicorn")
    with pytest.raises(SystemExit) as exc:
        main(["serve", *argv], out=io.StringIO())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _trace(path, prompts):
    with open(path, "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"timestamp": i * 200, "input_length": p, "output_length": 40}) + "\n")
    return str(path)


def test_out_naming_a_file_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    """It failed only after the whole run (IsADirectoryError/FileExistsError), losing the results."""
    from capsched.sim import run as simrun

    def no_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(simrun, "run_experiment", no_run)
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    (tmp_path / "outdir" / "results.json").mkdir(parents=True)
    for out, message in [(afile, "exists and is not a directory"), (afile / "sub", "is not a directory"),
                         (tmp_path / "outdir", "results.json exists and is not a regular file")]:
        with pytest.raises(SystemExit) as exc:
            main(["simulate", "--requests", "20", "--out", str(out)], out=io.StringIO())
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert message in err and str(out) in err and "Traceback" not in err
    assert afile.read_text() == "keep me"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_out_that_cannot_be_created_is_refused_before_the_run_even_as_root(capsys, monkeypatch):
    """/proc is writable to os.access as root: the error came after the whole run, exit 1."""
    from capsched.sim import run as simrun

    def no_run(*args, **kwargs):
        raise AssertionError("the run started")

    monkeypatch.setattr(simrun, "run_experiment", no_run)
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--requests", "20", "--out", "/proc/capsched-no-such/x"], out=io.StringIO())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--out '/proc/capsched-no-such/x': cannot" in err and "Traceback" not in err


def test_out_overwrites_an_earlier_results_json(tmp_path, capsys):
    (tmp_path / "results.json").write_text("old")
    code, out, _ = _run(["simulate", "--requests", "30", "--load", "0.5", "--policies", "least_load", "--out",
                         str(tmp_path / "."), "--no-progress"], capsys)
    assert code == 0
    assert json.loads((tmp_path / "results.json").read_text())["requests"] == 30


def test_an_unservable_request_counts_as_failed_for_every_policy_and_the_table_prints(tmp_path, capsys):
    """It aborted the experiment after the baselines had run, with nothing printed."""
    path = _trace(tmp_path / "mix.jsonl", [600] * 6 + [9_000_000] + [600] * 13)
    code, out, err = _run(["simulate", "--trace", path, "--load", "0.5", "--json", "--no-progress"], capsys)
    assert code == 0
    d = json.loads(out)
    assert d["unservable_requests"] == 1
    assert {r["policy"] for r in d["runs"]} == set(d["policies"]) and len(d["runs"]) == 5
    for r in d["runs"]:
        assert r["failed"] >= 1 and r["completed"] + r["failed"] + r["expired"] == 20
    assert "warning: 1 of the 20 requests need more KV tokens than any device holds" in err
    assert "request 6 needs 9,000,040" in err and "Traceback" not in err


def test_requests_above_the_trace_length_warn_on_stderr(tmp_path, capsys):
    path = _trace(tmp_path / "short.jsonl", [500] * 8)
    code, out, err = _run(["simulate", "--trace", path, "--requests", "50", "--load", "0.5", "--policies",
                           "least_load", "--no-progress"], capsys)
    assert code == 0
    assert "warning: trace " in err and "has only 8 requests: running 8, not 50" in err
    assert ", 8 requests" in out


def test_json_keeps_progress_on_stderr_unless_no_progress(capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.split(".")[0] == "tqdm":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    argv = ["simulate", "--requests", "30", "--load", "0.5", "--policies", "least_load", "--json"]
    code, out, err = _run(argv, capsys)
    assert code == 0 and json.loads(out)["requests"] == 30  # stdout stays pure JSON
    assert "[1/1] load 0.5 least_load" in err
    code, out, err = _run(argv + ["--no-progress"], capsys)
    assert code == 0 and err == ""
