"""capsched.jobs: job files (JSON/JSONL), their errors, topological order, deadline
propagation, shards, JobRunner through a real Scheduler, and ``capsched jobs``."""

from __future__ import annotations

import io
import json
import math

import pytest

import capsched
from capsched import InferenceRequest, Scheduler
from capsched.cli import main
from capsched.errors import ConfigError, DependencyError
from capsched.jobs import (
    MAX_SHARDS,
    MAX_SCHEDULE_TIME,
    MAX_TIME,
    JobCycleError,
    JobFileError,
    JobRunner,
    Task,
    expand_shards,
    load_job,
    parse_tasks,
    propagate_deadlines,
    read_job,
    simulate_job,
    topological_order,
)


def _jsonl(tmp_path, *lines, name="job.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _json(tmp_path, obj, name="job.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    return p


def _tasks(*specs):
    """Task objects from (task_id, deps[, duration[, deadline]])."""
    out = []
    for spec in specs:
        tid, deps, *rest = spec
        dur = rest[0] if rest else 0.0
        dl = rest[1] if len(rest) > 1 else None
        out.append(Task(tid, prompt_tokens=10, depends_on=tuple(deps), duration_estimate=dur, deadline=dl))
    return out


# --------------------------------------------------------------------------- parsing


def test_parse_good_jsonl(tmp_path):
    p = _jsonl(
        tmp_path,
        '{"task_id": "a", "prompt": "Summarise this", "priority": 0.9, "tenant": "batch", "request_class": "sum"}',
        "",
        '{"task_id": "b", "payload": {"rows": [1, 2, 3], "q": "总结"}, "depends_on": ["a"], "schedule_time": 5}',
        '{"task_id": "c", "prompt_tokens": 300, "max_new_tokens": 64.0, "deadline": 100, "duration_estimate": 2.5}',
    )
    a, b, c = read_job(p)
    assert (a.task_id, a.prompt, a.prompt_tokens, a.priority, a.tenant, a.request_class) == (
        "a", "Summarise this", None, 0.9, "batch", "sum")
    assert (a.line, b.line, c.line) == (1, 3, 4)
    assert (a.index, b.index, c.index) == (0, 1, 2)
    text = json.dumps({"rows": [1, 2, 3], "q": "总结"}, ensure_ascii=False, separators=(",", ":"))
    assert b.prompt_tokens == capsched.estimate_tokens(text) and b.payload == {"rows": [1, 2, 3], "q": "总结"}
    assert b.depends_on == ("a",) and b.schedule_time == 5.0
    assert (c.prompt_tokens, c.max_new_tokens, c.deadline, c.duration_estimate) == (300, 64, 100.0, 2.5)
    assert isinstance(c.max_new_tokens, int)


def test_parse_good_json_list_and_object(tmp_path):
    tasks = [{"task_id": "x", "prompt_tokens": 1}, {"task_id": "y", "prompt_tokens": 2, "depends_on": ["x"]}]
    a = read_job(_json(tmp_path, tasks, "list.json"))
    b = read_job(_json(tmp_path, {"tasks": tasks}, "obj.json"))
    assert [t.task_id for t in a] == [t.task_id for t in b] == ["x", "y"]
    # lines where each element starts (json.dumps indent=2: '[', '  {', ...)
    assert [t.line for t in a] == [2, 6]
    assert [t.line for t in b] == [3, 7]
    assert parse_tasks(tasks) == a  # the same from Python data
    assert read_job(_json(tmp_path, [], "empty.json")) == []


# (JSONL line text, field, message fragment)
BAD_TASKS = [
    ('{"task_id": "a", "prompt_tokens": 1, "colour": "red"}', "colour", "unknown field"),
    ('{"prompt_tokens": 1}', "task_id", "missing"),
    ('{"task_id": 7, "prompt_tokens": 1}', "task_id", "must be a string"),
    ('{"task_id": "", "prompt_tokens": 1}', "task_id", "1..256"),
    ('{"task_id": "a#1", "prompt_tokens": 1}', "task_id", "'#'"),
    ('{"task_id": "a"}', "prompt", "give prompt, payload or prompt_tokens"),
    ('{"task_id": "a", "prompt": 5}', "prompt", "must be a string"),
    ('{"task_id": "a", "prompt": "x", "payload": {}}', "payload", "not both"),
    ('{"task_id": "a", "payload": [NaN]}', "payload", "not finite"),
    ('{"task_id": "a", "prompt_tokens": -1}', "prompt_tokens", "0..10,000,000"),
    ('{"task_id": "a", "prompt_tokens": 1.5}', "prompt_tokens", "must be an integer"),
    ('{"task_id": "a", "prompt_tokens": true}', "prompt_tokens", "must be an integer"),
    ('{"task_id": "a", "prompt_tokens": 1, "max_new_tokens": 0}', "max_new_tokens", "1..10,000,000"),
    ('{"task_id": "a", "prompt_tokens": 1, "priority": "high"}', "priority", "must be a number"),
    ('{"task_id": "a", "prompt_tokens": 1, "priority": 2}', "priority", "[0, 1]"),
    ('{"task_id": "a", "prompt_tokens": 1, "priority": NaN}', "priority", "finite"),
    ('{"task_id": "a", "prompt_tokens": 1, "schedule_time": Infinity}', "schedule_time", "finite"),
    ('{"task_id": "a", "prompt_tokens": 1, "schedule_time": -1}', "schedule_time", "must be in [0, 1e+12], got -1"),
    ('{"task_id": "a", "prompt_tokens": 1, "deadline": 1e400}', "deadline", "finite"),
    ('{"task_id": "a", "prompt_tokens": 1, "duration_estimate": -0.5}', "duration_estimate", "must be in [0, 1e+15], got -0.5"),
    ('{"task_id": "a", "prompt_tokens": 1, "shards": 0}', "shards", "1..1,024"),
    ('{"task_id": "a", "prompt_tokens": 1, "shards": 2000}', "shards", "1..1,024"),
    ('{"task_id": "a", "prompt_tokens": 1, "depends_on": "b"}', "depends_on", "must be a list"),
    ('{"task_id": "a", "prompt_tokens": 1, "depends_on": [1]}', "depends_on", "must be a string"),
    ('{"task_id": "a", "prompt_tokens": 1, "depends_on": ["a"]}', "depends_on", "depends on itself"),
    ('{"task_id": "a", "prompt_tokens": 1, "tenant": 3}', "tenant", "must be a string"),
    ('{"task_id": "a", "prompt_tokens": 1, "prompt_tokens": 2}', "prompt_tokens", "given twice"),
    ('["a"]', None, "must be a JSON object"),
]


@pytest.mark.parametrize("line,field,fragment", BAD_TASKS)
def test_every_bad_task_names_file_line_and_field(tmp_path, line, field, fragment):
    p = _jsonl(tmp_path, '{"task_id": "ok", "prompt_tokens": 1}', "", line)
    with pytest.raises(JobFileError) as exc:
        read_job(p)
    e = exc.value
    assert isinstance(e, ConfigError)
    assert e.path == str(p) and e.line == 3 and e.field == field and e.index == 1
    msg = str(e)
    assert msg.startswith(f"{p}, line 3 (task 1)")
    if field is not None:
        assert f"field {field!r}" in msg
    assert fragment in msg


@pytest.mark.parametrize("line,field,fragment", BAD_TASKS)
def test_the_same_errors_in_a_json_file_name_the_element_line(tmp_path, line, field, fragment):
    p = tmp_path / "job.json"
    p.write_text('[\n  {"task_id": "ok", "prompt_tokens": 1},\n\n  ' + line + "\n]\n", encoding="utf-8")
    with pytest.raises(JobFileError) as exc:
        read_job(p)
    assert (exc.value.line, exc.value.field, exc.value.index) == (4, field, 1)
    assert fragment in str(exc.value)


def test_job_level_errors(tmp_path):
    dup = _jsonl(tmp_path, '{"task_id": "a", "prompt_tokens": 1}', '{"task_id": "a", "prompt_tokens": 2}')
    with pytest.raises(JobFileError, match=r"line 2 \(task 1\), field 'task_id': duplicate task_id 'a' \(first at line 1\)"):
        read_job(dup)
    unknown = _jsonl(tmp_path, '{"task_id": "a", "prompt_tokens": 1, "depends_on": ["zz"]}', name="u.jsonl")
    with pytest.raises(JobFileError) as exc:
        read_job(unknown)
    assert (exc.value.line, exc.value.field) == (1, "depends_on") and "unknown dependency 'zz'" in str(exc.value)
    bad_json = _jsonl(tmp_path, '{"task_id": "a", "prompt_tokens": 1}', '{"task_id": "b",', name="b.jsonl")
    with pytest.raises(JobFileError, match="line 2: not valid JSON") as exc:
        read_job(bad_json)
    assert exc.value.field is None
    bad_whole = tmp_path / "w.json"
    bad_whole.write_text('[\n {"task_id": "a"\n', encoding="utf-8")
    with pytest.raises(JobFileError, match="not valid JSON"):
        read_job(bad_whole)
    with pytest.raises(JobFileError, match="a job is a list of tasks"):
        read_job(_json(tmp_path, "tasks", "s.json"))
    with pytest.raises(JobFileError, match="exactly one field, 'tasks'") as exc:
        read_job(_json(tmp_path, {"tasks": [], "name": "x"}, "o.json"))
    assert exc.value.field == "name"
    with pytest.raises(JobFileError, match="cannot read the file"):
        read_job(tmp_path / "missing.jsonl")
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"task_id": "a", "prompt_tokens": 1}\n{"task_id": "\xe9"}\n')
    with pytest.raises(JobFileError, match="line 2: not UTF-8"):
        read_job(latin)
    deep = tmp_path / "deep.json"
    deep.write_text('[{"task_id": "a", "payload": ' + "[" * 100_000 + "]" * 100_000 + "}]", encoding="utf-8")
    with pytest.raises(JobFileError, match="nested too deeply"):
        read_job(deep)


def test_limits_on_dependencies_after_shard_expansion(tmp_path):
    # 2 x 600 shards: a task depending on both depends on 1,200 requests (> 1,024)
    p = _jsonl(
        tmp_path,
        '{"task_id": "a", "prompt_tokens": 1, "shards": 600}',
        '{"task_id": "b", "prompt_tokens": 1, "shards": 600}',
        '{"task_id": "c", "prompt_tokens": 1, "depends_on": ["a", "b"]}',
    )
    with pytest.raises(JobFileError) as exc:
        read_job(p)
    assert (exc.value.line, exc.value.field) == (3, "depends_on") and "1,200" in str(exc.value)
    many = [{"task_id": f"t{i}", "prompt_tokens": 1} for i in range(1100)]
    many.append({"task_id": "z", "prompt_tokens": 1, "depends_on": [f"t{i}" for i in range(1025)]})
    with pytest.raises(JobFileError, match="limit 1024") as exc:
        parse_tasks(many)
    assert exc.value.field == "depends_on" and exc.value.index == 1100


def test_too_many_tasks(monkeypatch, tmp_path):
    import capsched.jobs as jobs

    monkeypatch.setattr(jobs, "MAX_TASKS", 5)
    p = _jsonl(tmp_path, *[f'{{"task_id": "t{i}", "prompt_tokens": 1}}' for i in range(6)])
    with pytest.raises(JobFileError, match="more than 5 tasks") as exc:
        read_job(p)
    assert exc.value.line == 6
    q = _jsonl(tmp_path, '{"task_id": "a", "prompt_tokens": 1, "shards": 3}',
               '{"task_id": "b", "prompt_tokens": 1, "shards": 3}', name="s.jsonl")
    with pytest.raises(JobFileError, match="more than 5 tasks") as exc:
        read_job(q)
    assert exc.value.line == 2


def test_nothing_is_evaluated(tmp_path):
    p = _jsonl(tmp_path, '{"task_id": "a", "prompt": "__import__(\'os\').system(\'false\')"}')
    (t,) = read_job(p)
    assert t.prompt == "__import__('os').system('false')"


# --------------------------------------------------------------------------- graph


def test_cycle_message_lists_the_cycle(tmp_path):
    tasks = _tasks(("a", ["c"]), ("b", ["a"]), ("c", ["b"]), ("d", []))
    with pytest.raises(JobCycleError) as exc:
        topological_order(tasks)
    assert isinstance(exc.value, DependencyError)
    assert exc.value.cycle == ["a", "c", "b", "a"]
    assert "a -> c -> b -> a" in str(exc.value)
    p = _jsonl(
        tmp_path,
        '{"task_id": "x", "prompt_tokens": 1}',
        '{"task_id": "a", "prompt_tokens": 1, "depends_on": ["b"]}',
        '{"task_id": "b", "prompt_tokens": 1, "depends_on": ["a", "x"]}',
    )
    with pytest.raises(JobCycleError) as exc:
        load_job(p)
    assert exc.value.path == str(p) and exc.value.line == 2
    assert str(exc.value).startswith(f"{p}, line 2: dependency cycle: a -> b -> a")


def test_topological_order_is_stable_by_file_order():
    # already in dependency order: returned as given
    tasks = _tasks(("a", []), ("b", []), ("c", ["a"]), ("d", ["b", "c"]), ("e", []))
    assert topological_order(tasks) == ["a", "b", "c", "d", "e"]
    # the ready task first in the file goes first
    tasks = _tasks(("z", ["y"]), ("y", []), ("x", []), ("w", ["x", "z"]), ("v", []))
    assert topological_order(tasks) == ["y", "z", "x", "w", "v"]
    assert topological_order([]) == []
    with pytest.raises(DependencyError, match="unknown task 'q'"):
        topological_order(_tasks(("a", ["q"])))
    with pytest.raises(DependencyError, match="duplicate"):
        topological_order(_tasks(("a", []), ("a", [])))


def test_deadline_propagation_hand_worked():
    #        a(2) ── b(3) ── d(1, deadline 20)
    #          └──── c(4) ─┘      e(5) depends on c, no deadline
    # job deadline 30.
    tasks = _tasks(("a", [], 2.0), ("b", ["a"], 3.0), ("c", ["a"], 4.0), ("d", ["b", "c"], 1.0, 20.0),
                   ("e", ["c"], 5.0))
    lf = propagate_deadlines(tasks, 30.0)
    # d: min(20, 30) = 20; e: 30
    # b: d - 1 = 19;  c: min(d - 1, e - 5) = min(19, 25) = 19
    # a: min(b - 3, c - 4) = min(16, 15) = 15
    assert lf == {"a": 15.0, "b": 19.0, "c": 19.0, "d": 20.0, "e": 30.0}
    assert list(lf) == topological_order(tasks)
    # without a job deadline, e is unconstrained and c only by d
    lf = propagate_deadlines(tasks)
    assert lf["e"] == math.inf and lf["c"] == 19.0 and lf["a"] == 15.0
    assert propagate_deadlines(_tasks(("x", []))) == {"x": math.inf}
    with pytest.raises(capsched.InvalidArgumentError):
        propagate_deadlines(tasks, math.nan)


def test_shards_expansion(tmp_path):
    p = _jsonl(
        tmp_path,
        '{"task_id": "split", "prompt_tokens": 100, "shards": 3, "duration_estimate": 2}',
        '{"task_id": "merge", "prompt_tokens": 10, "depends_on": ["split"], "deadline": 50, "duration_estimate": 1}',
        '{"task_id": "post", "prompt_tokens": 10, "depends_on": ["merge"], "shards": 2}',
    )
    raw = read_job(p)
    assert [t.task_id for t in raw] == ["split", "merge", "post"]
    tasks = load_job(p)
    assert [t.task_id for t in tasks] == ["split#0", "split#1", "split#2", "merge", "post#0", "post#1"]
    assert [t.shard for t in tasks] == [(0, 3), (1, 3), (2, 3), None, (0, 2), (1, 2)]
    assert all(t.shards == 1 for t in tasks)
    assert tasks[3].depends_on == ("split#0", "split#1", "split#2")
    assert tasks[4].depends_on == tasks[5].depends_on == ("merge",)
    assert tasks[0].prompt_tokens == 100 and tasks[0].line == 1
    assert expand_shards(tasks) == tasks  # idempotent
    lf = propagate_deadlines(tasks)
    assert lf["split#1"] == 49.0 and lf["merge"] == 50.0
    assert MAX_SHARDS == 1024


# --------------------------------------------------------------------------- running


def _drive(sched, runner, *, fail=(), until=100.0, dt=1.0):
    """Step in virtual time; each dispatched request completes one dt later, except the
    tasks in ``fail``, which fail."""
    t = 0.0
    running: list[int] = []
    log = []
    while not runner.done() and t <= until:
        for rid in running:
            if runner.task_of(rid) in fail:
                sched.fail(rid, t, error="bad shard")
            else:
                sched.complete(rid, t)
        running = []
        for tid, rid in runner.poll(t):
            log.append(("submit", t, tid))
        res = sched.step(t)
        for rid in res.dispatched:
            log.append(("start", t, runner.task_of(rid)))
            running.append(rid)
        t += dt
    return log


def test_job_runner_with_schedule_time_and_dependencies():
    tasks = parse_tasks([
        {"task_id": "late", "prompt_tokens": 5, "schedule_time": 3},
        {"task_id": "root", "prompt_tokens": 5},
        {"task_id": "mid", "prompt_tokens": 5, "depends_on": ["root"], "shards": 2},
        {"task_id": "after_late", "prompt_tokens": 5, "depends_on": ["late", "mid"]},
    ])
    s = Scheduler(["g0", "g1"], policy="edf", enable_dynamic_batching=False)
    r = JobRunner(s, tasks, job_deadline=50.0)
    first = r.poll(0.0)
    # root and both shards of mid go in at once (mid waits in the scheduler for root);
    # late waits for its time, after_late for late
    assert [tid for tid, _ in first] == ["root", "mid#0", "mid#1"]
    assert s.status(r.ids["mid#0"]) == "waiting"
    assert r.status("late") == "pending" and r.status("after_late") == "pending"
    assert r.next_poll_at(0.0) == 3.0
    for tid, rid in first:
        assert r.task_of(rid) == tid
    log = _drive(s, r)
    assert r.done() and r.submitted_all()
    assert {tid: r.status(tid) for tid in r.ids} == dict.fromkeys(
        ["root", "mid#0", "mid#1", "late", "after_late"], "completed")
    submit_t = {tid: t for ev, t, tid in log if ev == "submit"}
    start_t = {tid: t for ev, t, tid in log if ev == "start"}
    assert submit_t["late"] == 3.0 and submit_t["after_late"] == 3.0
    assert start_t["root"] < start_t["mid#0"] and start_t["late"] < start_t["after_late"]
    assert start_t["mid#1"] < start_t["after_late"]
    assert r.task_of(10_000) is None
    st = s.stats()
    assert st["completed"] == 5 and st["conservation_ok"]


def test_a_failed_dependency_fails_its_dependents():
    tasks = parse_tasks([
        {"task_id": "a", "prompt_tokens": 5},
        {"task_id": "b", "prompt_tokens": 5, "depends_on": ["a"]},  # submitted, fails in the core
        {"task_id": "c", "prompt_tokens": 5, "depends_on": ["b"], "schedule_time": 10},  # skipped
        {"task_id": "d", "prompt_tokens": 5},
    ])
    s = Scheduler(["g0"], policy="fcfs", enable_dynamic_batching=False)
    r = JobRunner(s, tasks)
    _drive(s, r, fail={"a"}, until=20)
    assert r.done()
    assert r.status("a") == "failed" and r.status("b") == "failed" and r.status("d") == "completed"
    assert r.status("c") == "skipped" and "'b'" in r.skipped["c"] and "failed" in r.skipped["c"]
    assert "c" not in r.ids


def test_poll_validates_everything_before_submitting():
    # one task in a poll needing more KV tokens than any device holds submits nothing
    # (Task objects are checked when built: a priority of 7 is refused there)
    with pytest.raises(JobFileError):
        Task("b", prompt_tokens=5, priority=7.0)
    s = Scheduler([capsched.Device("g0", kv_tokens=1000)])
    bad = [Task("a", prompt_tokens=5), Task("b", prompt_tokens=5000)]
    r = JobRunner(s, bad)
    with pytest.raises(capsched.InvalidRequestError):
        r.poll(0.0)
    assert s.stats()["accepted"] == 0 and r.ids == {} and r.status("a") == "pending"


def test_runner_skips_tasks_whose_latest_finish_passed():
    tasks = parse_tasks([
        {"task_id": "a", "prompt_tokens": 5, "schedule_time": 10, "deadline": 5},
        {"task_id": "b", "prompt_tokens": 5, "depends_on": ["a"]},
    ])
    s = Scheduler(["g0"])
    r = JobRunner(s, tasks)
    assert r.poll(0.0) == []
    assert r.poll(10.0) == []
    assert r.status("a") == "skipped" and "latest finish 5" in r.skipped["a"]
    assert r.status("b") == "skipped" and r.done()


def test_runner_uses_propagated_deadlines_and_classes():
    tasks = _tasks(("a", [], 2.0), ("b", ["a"], 3.0, 20.0))
    s = Scheduler(["g0"], policy="edf")
    r = JobRunner(s, tasks, sched_class="deadline")
    assert r.latest_finish == {"a": 17.0, "b": 20.0}
    r.poll(0.0)
    assert s.status(r.ids["a"]) == "queued" and s.status(r.ids["b"]) == "waiting"
    with pytest.raises(ConfigError, match="needs a deadline on every task"):
        JobRunner(Scheduler(["g0"]), _tasks(("a", [])), sched_class="deadline")
    with pytest.raises(ConfigError, match="sched_class"):
        JobRunner(s, tasks, sched_class="bulk")
    # dicts are validated like a file
    with pytest.raises(JobFileError, match="field 'priority'"):
        JobRunner(s, [{"task_id": "a", "prompt_tokens": 1, "priority": "x"}])
    with pytest.raises(JobCycleError):
        JobRunner(s, _tasks(("a", ["b"]), ("b", ["a"])))


def test_runner_background_class_fills_an_idle_fleet():
    tasks = parse_tasks([{"task_id": f"t{i}", "prompt_tokens": 20, "depends_on": [f"t{i - 1}"] if i else []}
                         for i in range(5)])
    s = Scheduler(["g0", "g1"], enable_dynamic_batching=False)
    r = JobRunner(s, tasks, sched_class="background")
    _drive(s, r)
    assert r.done() and all(r.status(f"t{i}") == "completed" for i in range(5))


def test_runner_submits_what_fits_under_max_queued_and_keeps_the_rest_pending():
    tasks = parse_tasks([{"task_id": f"t{i}", "prompt_tokens": 5} for i in range(3)])
    s = Scheduler(["g0"], config={"max_queued": 3})
    s.submit(capsched.InferenceRequest(prompt_tokens=5), now=0.0)  # one queued already
    r = JobRunner(s, tasks)
    with pytest.raises(capsched.QueueFullError,
                       match=r"task 't2': .*max_queued = 3 \(this poll submitted the 2 task\(s\) before it: 't0', 't1'"):
        r.poll(0.0)
    assert r.submission_order == ["t0", "t1"] and r.skipped == {} and s.stats()["accepted"] == 3
    assert r.status("t2") == "pending"
    # A full queue: nothing goes in, nothing changes.
    with pytest.raises(capsched.QueueFullError, match=r"task 't2': .*\(nothing was submitted\)"):
        r.poll(0.0)
    assert r.submission_order == ["t0", "t1"] and s.stats()["accepted"] == 3
    s.step(0.0)  # one batch in flight: the queue has room again
    assert [tid for tid, _ in r.poll(0.0)] == ["t2"]


def test_a_job_larger_than_max_queued_still_runs_to_the_end():
    # A poll that refused every due task when they did not all fit would never submit a
    # job of more than max_queued ready tasks.
    tasks = parse_tasks([{"task_id": f"t{i}", "prompt_tokens": 5} for i in range(20)]
                        + [{"task_id": "last", "prompt_tokens": 5, "depends_on": [f"t{i}" for i in range(20)]}])
    s = Scheduler(["g0"], max_batch_size=2, config={"max_queued": 3})
    r = JobRunner(s, tasks)
    t = 0.0
    for _ in range(200):
        try:
            r.poll(t)
        except capsched.QueueFullError:
            pass
        for b in s.step(t).batches:
            for rid in b.request_ids:
                s.complete(rid, t + 0.5)
        t += 1.0
        if r.done():
            break
    assert r.done() and all(r.status(x.task_id) == "completed" for x in tasks)


def test_runner_reraises_an_unpredictable_queue_full_and_keeps_the_rest_pending():
    # max_queued_per_tenant counts the tenant's requests from outside the job, which the
    # core does not expose: the submit refuses, and what went in stays recorded
    tasks = parse_tasks([{"task_id": f"t{i}", "prompt_tokens": 5} for i in range(2)])
    s = Scheduler(["g0"], config={"max_queued_per_tenant": 2})
    s.submit(capsched.InferenceRequest(prompt_tokens=5), now=0.0)
    r = JobRunner(s, tasks)
    with pytest.raises(capsched.QueueFullError):
        r.poll(0.0)
    assert list(r.ids) == ["t0"] and r.submission_order == ["t0"]
    assert r.status("t1") == "pending"
    s.step(0.0)
    assert [tid for tid, _ in r.poll(0.0)] == ["t1"]


def test_simulate_job_runs_every_task():
    tasks = parse_tasks([
        {"task_id": "fetch", "prompt": "Summarise the repository", "duration_estimate": 2},
        {"task_id": "plan", "payload": {"steps": ["a", "b"]}, "depends_on": ["fetch"], "shards": 3},
        {"task_id": "write", "prompt_tokens": 500, "max_new_tokens": 300, "depends_on": ["plan"], "schedule_time": 1},
    ])
    run = simulate_job(tasks, job_deadline=100.0)
    by = {t.task_id: t for t in run.tasks}
    assert all(t.status == "completed" for t in run.tasks)
    assert by["fetch"].end <= by["plan#0"].start and by["plan#2"].end <= by["write"].start
    assert by["write"].submitted == 1.0
    assert run.makespan == by["write"].end > 0
    assert run.stats["conservation_ok"] and run.stats["completed"] == 5
    d = run.to_dict()
    assert d["counts"] == {"completed": 5}
    json.dumps(d, allow_nan=False)


# --------------------------------------------------------------------------- CLI


def _run(argv, capsys):
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue(), capsys.readouterr().err


JOB = [
    '{"task_id": "fetch", "prompt": "Summarise the repository", "duration_estimate": 2}',
    '{"task_id": "plan", "prompt_tokens": 200, "depends_on": ["fetch"], "duration_estimate": 3, "shards": 2}',
    '{"task_id": "write", "prompt_tokens": 100, "depends_on": ["plan"], "duration_estimate": 5, "deadline": 20}',
]


def test_cli_validate_table_and_json(tmp_path, capsys):
    p = _jsonl(tmp_path, *JOB)
    code, out, _ = _run(["jobs", "validate", str(p)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["#", "task_id"]
    assert [ln.split()[1] for ln in lines[1:5]] == ["fetch", "plan#0", "plan#1", "write"]
    assert "4 task(s) valid" in out and "critical path 10.000 s" in out
    code, out, _ = _run(["jobs", "validate", str(p), "--json", "--deadline", "15"], capsys)
    d = json.loads(out)
    assert [t["task_id"] for t in d["tasks"]] == ["fetch", "plan#0", "plan#1", "write"]
    assert [t["latest_finish"] for t in d["tasks"]] == [7.0, 10.0, 10.0, 15.0]
    assert d["tasks"][0]["latest_start"] == 5.0 and d["critical_path"] == 10.0 and d["infeasible"] == []
    code, out, _ = _run(["jobs", "validate", str(p), "--deadline", "8"], capsys)
    assert "warning: 4 task(s) cannot finish" in out


def test_cli_submit_smoke(tmp_path, capsys):
    p = _jsonl(tmp_path, *JOB)
    code, out, _ = _run(["jobs", "submit", str(p)], capsys)
    assert code == 0
    assert "makespan" in out and "4 completed" in out and "H100-SXM" in out
    code, out, _ = _run(["jobs", "submit", str(p), "--json", "--sched-class", "background", "--fleet", "H100-SXM:2"],
                        capsys)
    d = json.loads(out)
    assert d["counts"] == {"completed": 4} and d["makespan"] > 0
    assert {t["device"] for t in d["tasks"]} <= {"H100-SXM-0", "H100-SXM-1"}
    # an L4 is too slow for these deadlines. As normal-class work: fetch finishes late,
    # the shards of plan expire in the queue, write fails with them ...
    code, out, _ = _run(["jobs", "submit", str(p), "--json", "--fleet", "L4:1", "--sched-class", "normal"], capsys)
    d = json.loads(out)
    assert code == 0 and d["counts"] == {"completed": 1, "expired": 2, "failed": 1}
    by = {t["task_id"]: t for t in d["tasks"]}
    assert by["fetch"]["end"] > by["fetch"]["latest_finish"] == 12.0
    assert "expired" in by["write"]["reason"]
    # ... as background work (the default) fetch never fits the L4 in time: it expires in
    # the queue and its dependents fail; every task is still accounted for.
    code, out, _ = _run(["jobs", "submit", str(p), "--json", "--fleet", "L4:1"], capsys)
    d = json.loads(out)
    assert code == 0 and d["counts"] == {"expired": 1, "failed": 3}


@pytest.mark.parametrize("action", ["validate", "submit"])
def test_cli_bad_file_exits_2_with_the_error(tmp_path, capsys, action):
    p = _jsonl(tmp_path, '{"task_id": "a", "prompt_tokens": 1}', '{"task_id": "b", "priority": 3, "prompt_tokens": 1}')
    with pytest.raises(SystemExit) as exc:
        main(["jobs", action, str(p)], out=io.StringIO())
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "line 2 (task 1), field 'priority'" in err and "Traceback" not in err
    cyc = _jsonl(tmp_path, '{"task_id": "a", "prompt_tokens": 1, "depends_on": ["a2"]}',
                 '{"task_id": "a2", "prompt_tokens": 1, "depends_on": ["a"]}', name="c.jsonl")
    with pytest.raises(SystemExit) as exc:
        main(["jobs", action, str(cyc)], out=io.StringIO())
    assert exc.value.code == 2 and "a -> a2 -> a" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["jobs", action, str(tmp_path / "nope.json")], out=io.StringIO())
    assert exc.value.code == 2 and "cannot read the file" in capsys.readouterr().err


@pytest.mark.parametrize("action", ["validate", "submit"])
@pytest.mark.parametrize("field", ["schedule_time", "deadline", "duration_estimate"])
def test_times_beyond_the_clock_are_refused_by_validate_as_by_submit(tmp_path, capsys, action, field):
    # (schedule_time 1e16 passed validate, then submit failed in the scheduler's clock)
    p = _json(tmp_path, [{"task_id": "a", "prompt_tokens": 5, field: 1e16}])
    with pytest.raises(SystemExit) as exc:
        main(["jobs", action, str(p)], out=io.StringIO())
    err = capsys.readouterr().err
    bound = MAX_SCHEDULE_TIME if field == "schedule_time" else MAX_TIME  # (the clock runs on from a schedule_time)
    assert exc.value.code == 2 and f"field '{field}': must be in [0, {bound:g}], got 1e+16" in err
    assert MAX_TIME == 1e15 and MAX_SCHEDULE_TIME == 1e12
    ok = _json(tmp_path, [{"task_id": "a", "prompt_tokens": 5, field: bound}], name="ok.json")
    assert read_job(ok)[0].task_id == "a"


@pytest.mark.parametrize("action", ["validate", "submit"])
@pytest.mark.parametrize("name, text", [("e.json", "[]"), ("o.json", '{"tasks": []}'), ("e.jsonl", ""),
                                        ("b.jsonl", "\n\n")])
def test_a_job_of_no_tasks_is_refused(tmp_path, capsys, action, name, text):
    p = tmp_path / name
    p.write_text(text)
    assert read_job(p) == []  # (reading is fine: a job of nothing is the loader's concern)
    with pytest.raises(JobFileError, match="the job has no tasks"):
        load_job(p)
    with pytest.raises(SystemExit) as exc:
        main(["jobs", action, str(p)], out=io.StringIO())
    assert exc.value.code == 2 and f"{name}: the job has no tasks" in capsys.readouterr().err


def test_cli_json_is_strict_at_the_largest_times(tmp_path, capsys):
    # The longest chain of the largest durations: still finite, and written as strict
    # JSON (json.dump would have written Infinity for a time that overflowed).
    tasks = [{"task_id": f"t{i}", "prompt_tokens": 5, "schedule_time": 1e12, "duration_estimate": 1e15,
              **({"depends_on": [f"t{i - 1}"]} if i else {})} for i in range(50)]
    p = _json(tmp_path, tasks)
    code, out, _ = _run(["jobs", "validate", str(p), "--json"], capsys)

    def refuse(c):
        raise AssertionError(f"not strict JSON: {c}")

    d = json.loads(out, parse_constant=refuse)
    assert code == 0 and d["critical_path"] == pytest.approx(50e15 + 1e12)


def test_example_job_file_is_valid():
    from pathlib import Path

    p = Path(__file__).resolve().parents[1] / "examples" / "jobs_example.jsonl"
    tasks = load_job(p)
    assert len(tasks) >= 5
    run = simulate_job(tasks)
    assert all(t.status == "completed" for t in run.tasks)


def test_request_from_task():
    t = Task("a", prompt="hello", max_new_tokens=7, priority=0.2, tenant="x", request_class="c")
    req = t.to_request(deadline=5.0, depends_on=[3], sched_class="background")
    assert isinstance(req, InferenceRequest)
    assert (req.prompt, req.max_new_tokens, req.priority, req.deadline, req.tenant, req.request_class,
            req.depends_on, req.sched_class) == ("hello", 7, 0.2, 5.0, "x", "c", (3,), "background")
