"""Fixes from a review of capsched.jobs: each test failed on the code before its fix."""

from __future__ import annotations

import io
import json
import math
import time

import pytest

from capsched import Device, Scheduler
from capsched.cli import main
from capsched.errors import InvalidArgumentError, InvalidRequestError
from capsched.jobs import (
    JobFileError,
    JobRunner,
    Task,
    expand_shards,
    parse_tasks,
    propagate_deadlines,
    read_job,
    topological_order,
)


# 1. poll(now) takes only a finite number: inf skipped every task, "5" was a TypeError
@pytest.mark.parametrize("now", [math.inf, -math.inf, math.nan, "5", True, 10**400, 1e300])
def test_poll_refuses_a_now_that_is_not_a_finite_number(now):
    s = Scheduler(["g0"])
    r = JobRunner(s, [Task("a", prompt_tokens=1), Task("b", prompt_tokens=1, depends_on=("a",))])
    with pytest.raises(InvalidArgumentError, match="now must be a finite number"):
        r.poll(now)
    assert r.skipped == {} and r.ids == {} and not r.done() and r.status("a") == "pending"
    assert [t for t, _ in r.poll(0.0)] == ["a", "b"]


# 2. a task needing more KV than any device holds submits nothing of its poll
def test_poll_checks_kv_before_submitting_anything():
    s = Scheduler([Device("g0", kv_tokens=1000)], policy="edf")
    r = JobRunner(s, [{"task_id": "a", "prompt_tokens": 10}, {"task_id": "b", "prompt_tokens": 5000}])
    with pytest.raises(InvalidRequestError, match=r"task 'b': .*5256 KV tokens.*nothing was submitted"):
        r.poll(0.0)
    assert r.ids == {} and s.stats()["accepted"] == 0 and r.status("a") == "pending"


def test_poll_kv_check_counts_a_prompt_with_the_scheduler_tokenizer():
    s = Scheduler([Device("g0", kv_tokens=300)])
    r = JobRunner(s, [Task("a", prompt_tokens=1), Task("b", prompt="word " * 400, max_new_tokens=1)])
    with pytest.raises(InvalidRequestError, match="task 'b'"):
        r.poll(0.0)
    assert r.ids == {}


# 3. JSONL lines end at \n only
@pytest.mark.parametrize("ch", ["\u2028", "\u2029", "\u0085"])  # (JSON escapes \x00-\x1f)
def test_jsonl_string_may_hold_unicode_line_breaks(tmp_path, ch):
    p = tmp_path / "j.jsonl"
    lines = [json.dumps({"task_id": "a", "prompt": f"x{ch}y"}, ensure_ascii=False),
             "", json.dumps({"task_id": "b", "prompt_tokens": 1, "depends_on": ["a"]}) + "\r", "{bad"]
    p.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")
    tasks = read_job(p)
    assert [t.prompt for t in tasks] == [f"x{ch}y", None] and [t.line for t in tasks] == [1, 3]
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(JobFileError, match="line 4"):
        read_job(p)


# 4. a task_id with a lone surrogate is refused, not a UnicodeEncodeError in the CLI
@pytest.mark.parametrize("action", ["validate", "submit"])
def test_cli_refuses_a_surrogate_task_id(tmp_path, action, capsys):
    p = tmp_path / "s.jsonl"
    p.write_text('{"task_id": "ok", "prompt_tokens": 1}\n{"task_id": "\\ud800", "prompt_tokens": 1}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["jobs", action, str(p)], out=io.StringIO())
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "line 2 (task 1), field 'task_id'" in err and "UTF-8" in err


def test_parse_tasks_refuses_a_surrogate_task_id_and_dependency():
    with pytest.raises(JobFileError, match=r"\(task 0\), field 'task_id'.*UTF-8"):
        parse_tasks([{"task_id": "\ud800", "prompt_tokens": 1}])
    with pytest.raises(JobFileError, match=r"\(task 1\), field 'depends_on'.*UTF-8"):
        parse_tasks([{"task_id": "a", "prompt_tokens": 1}, {"task_id": "b", "prompt_tokens": 1, "depends_on": ["\udfff"]}])


# 5. a payload that is not JSON data is a JobFileError naming the task and 'payload'
def _deep(n):
    x = y = []
    for _ in range(n):
        y.append([])
        y = y[0]
    return x


def _circular():
    c = []
    c.append(c)
    return c


@pytest.mark.parametrize("payload, msg", [
    ({1, 2}, "must be JSON data"), (b"x", "must be JSON data"), ({1: 2, (1,): 3}, "must be JSON data"),
    (_deep(100_000), "nested too deeply"), (_circular(), "circular"), (float("nan"), "not finite"),
])
def test_payload_not_json_data(payload, msg):
    with pytest.raises(JobFileError, match=rf"\(task 1\), field 'payload': .*{msg}"):
        parse_tasks([{"task_id": "x", "prompt_tokens": 1}, {"task_id": "a", "payload": payload}])
    with pytest.raises(JobFileError, match=rf"\(task 1\), field 'payload': .*{msg}"):
        JobRunner(Scheduler(["g0"]), [{"task_id": "x", "prompt_tokens": 1}, {"task_id": "a", "payload": payload}])


# 6. a JSON job file's line numbers are found in linear time
def test_json_element_lines_linear(tmp_path):
    n = 100_000
    p = tmp_path / "big.json"
    p.write_text("[" + ",".join(json.dumps({"task_id": f"t{i}", "prompt_tokens": 1}) for i in range(n)) + "]\n")
    t0 = time.perf_counter()
    tasks = read_job(p)
    assert time.perf_counter() - t0 < 20  # (82 s before)
    assert len(tasks) == n and tasks[-1].line == 1
    p.write_text("[\n" + ",\n\n".join(json.dumps({"task_id": f"t{i}", "prompt_tokens": 1}) for i in range(5)) + "\n]")
    assert [t.line for t in read_job(p)] == [2, 4, 6, 8, 10]


# 7. Task objects built in Python are checked as a file's tasks are
@pytest.mark.parametrize("kw, field", [
    (dict(task_id="c", prompt_tokens=1, depends_on="ab"), "depends_on"),
    (dict(task_id="c", prompt_tokens=1, deadline=math.nan), "deadline"),
    (dict(task_id="c", prompt_tokens=1, schedule_time=math.nan), "schedule_time"),
    (dict(task_id="c", prompt_tokens=1, duration_estimate=math.nan), "duration_estimate"),
    (dict(task_id="c", prompt_tokens=1, shards=-3), "shards"),
    (dict(task_id="c", prompt_tokens=1, shards=0), "shards"),
    (dict(task_id=5, prompt_tokens=1), "task_id"),
    (dict(task_id="a#1", prompt_tokens=1), "task_id"),
    (dict(task_id="c", prompt_tokens=1, priority=7.0), "priority"),
    (dict(task_id="c", prompt_tokens=True), "prompt_tokens"),
    (dict(task_id="c", prompt_tokens=1, depends_on=("a", "a")), "depends_on"),
    (dict(task_id="c", prompt_tokens=1, depends_on=("c",)), "depends_on"),
    (dict(task_id="c"), "prompt"),
    (dict(task_id="c", prompt="x", payload={"a": 1}), "payload"),
    (dict(task_id="c", payload={1, 2}), "payload"),
])
def test_task_objects_are_validated(kw, field):
    with pytest.raises(JobFileError, match=f"field '{field}'"):
        Task(**kw)


def test_valid_task_objects_still_work():
    t = Task("b", prompt_tokens=2.0, depends_on=["a"], deadline=50, shards=2)
    assert t.depends_on == ("a",) and t.prompt_tokens == 2 and type(t.prompt_tokens) is int
    assert Task("p", payload={"k": "v"}).prompt_tokens is not None
    tasks = expand_shards([Task("a", prompt_tokens=1), t])
    assert [x.task_id for x in tasks] == ["a", "b#0", "b#1"]
    s = Scheduler(["g0"])
    r = JobRunner(s, [Task("a", prompt_tokens=1), t])
    assert [x for x, _ in r.poll(0.0)] == ["a", "b#0", "b#1"]


@pytest.mark.parametrize("fn", [topological_order, propagate_deadlines, expand_shards])
def test_graph_functions_refuse_dicts(fn):
    with pytest.raises(JobFileError, match=r"\(task 0\).*Task objects"):
        fn([{"task_id": "a", "prompt_tokens": 1}])


# 8. status() of an unknown task is the documented KeyError
def test_status_unknown_is_documented_keyerror():
    r = JobRunner(Scheduler(["g0"]), [Task("a", prompt_tokens=1)])
    with pytest.raises(KeyError):
        r.status("zz")
    assert "KeyError" in JobRunner.status.__doc__
