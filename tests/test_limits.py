"""Documented limits (docs/limits.md): each is accepted at the limit and refused one past
it with an error naming the value and the limit, and a refusal changes nothing.

Limits too large to reach in a test (a million tenants, a 16 GiB file) are module
constants read at call time; those tests lower the constant with monkeypatch and check
the same code path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import capsched.config as config_mod
import capsched.jobs as jobs_mod
from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.config import (
    DEFAULT_MAX_DEPENDENTS,
    DEFAULT_MAX_QUEUED,
    MAX_BATCH_SIZE,
    MAX_DEPENDENTS,
    MAX_CONFIG_BYTES,
    MAX_PROMPT_CHARS,
    MAX_REQUEST_CLASSES,
    MAX_RESERVE,
    MAX_TENANTS,
)
from capsched.checkpoint import MAX_CHECKPOINT_BYTES
from capsched.errors import ConfigError, DependencyError, InvalidArgumentError, InvalidRequestError, QueueFullError
from capsched.jobs import MAX_JOB_FILE_BYTES, MAX_SHARDS, MAX_TASK_ID_LENGTH, MAX_TASKS, JobFileError, load_job
from capsched.journal import MAX_JOURNAL_BYTES, MAX_JOURNAL_LINE_BYTES
from capsched.request import MAX_DEPENDENCIES, MAX_TOKENS

DOC = Path(__file__).resolve().parent.parent / "docs" / "limits.md"


def _state(s: Scheduler) -> Any:
    st = s.stats()
    return st, s._core.export_state()


def test_the_documented_values() -> None:
    # docs/limits.md states these numbers; a change here must change the doc.
    assert MAX_TOKENS == 10_000_000
    assert MAX_DEPENDENCIES == 1024
    assert MAX_BATCH_SIZE == 65536
    assert MAX_TENANTS == 65536
    assert MAX_REQUEST_CLASSES == 2**20
    assert MAX_PROMPT_CHARS == 100_000_000
    assert MAX_RESERVE == 2**27
    assert MAX_CONFIG_BYTES == 2**20
    assert MAX_CHECKPOINT_BYTES == 16 * 2**30
    assert MAX_JOURNAL_BYTES == 16 * 2**30 and MAX_JOURNAL_LINE_BYTES == 2**30
    assert MAX_JOB_FILE_BYTES == 256 * 2**20
    assert MAX_TASKS == 1_000_000 and MAX_SHARDS == 1024 and MAX_TASK_ID_LENGTH == 256
    text = DOC.read_text(encoding="utf-8")
    for shown in ("10,000,000", "1,024", "65,536", "1,048,576", "100,000,000", "134,217,728", "1 MiB", "16 GiB",
                  "1 GiB", "256 MiB", "1,000,000", "4,300", "10^12"):
        assert shown in text, shown


# --------------------------------------------------------------------------- per request


@pytest.mark.parametrize("field", ["prompt_tokens", "max_new_tokens"])
def test_token_counts(field: str) -> None:
    assert getattr(InferenceRequest(**{"prompt_tokens": 1, field: MAX_TOKENS}), field) == MAX_TOKENS
    with pytest.raises(InvalidRequestError, match=f"{field} must be in .*got {MAX_TOKENS + 1}"):
        InferenceRequest(**{"prompt_tokens": 1, field: MAX_TOKENS + 1})


def test_token_counts_on_the_bulk_path() -> None:
    s = Scheduler(["a"])
    ids = s.submit_many(np.full(2, MAX_TOKENS), max_new_tokens=MAX_TOKENS, now=0.0)
    assert len(ids) == 2
    before = _state(s)
    with pytest.raises(InvalidRequestError, match=f"element 1: max_new_tokens .*{MAX_TOKENS + 1}"):
        s.submit_many([1, 1], max_new_tokens=[1, MAX_TOKENS + 1], now=0.0)
    assert _state(s) == before


def test_output_tokens_on_completion() -> None:
    s = Scheduler(["a"])
    rid = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    s.step(now=0.0)
    before = _state(s)
    with pytest.raises(InvalidArgumentError, match=f"output_tokens .*{MAX_TOKENS + 1}"):
        s.complete(rid, now=1.0, output_tokens=MAX_TOKENS + 1)
    assert _state(s) == before
    s.complete(rid, now=1.0, output_tokens=MAX_TOKENS)
    assert s.status(rid) == "completed"


def test_prompt_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "MAX_PROMPT_CHARS", 40)
    counted: list[str] = []

    def tokenizer(p: str) -> int:
        counted.append(p)
        return len(p)

    s = Scheduler(["a"], config=Config(tokenizer=tokenizer))
    assert s.submit(InferenceRequest("x" * 40), now=0.0) == 1
    before = _state(s)
    req = InferenceRequest("x" * 41)
    with pytest.raises(InvalidRequestError, match="prompt has 41 characters, over the limit of 40"):
        s.submit(req, now=0.0)
    assert _state(s) == before and req.id is None
    assert counted == ["x" * 40]  # the tokenizer never saw the long prompt


def test_a_prompt_whose_estimate_is_over_the_token_limit() -> None:
    s = Scheduler(["a"], config=Config(tokenizer=lambda p: MAX_TOKENS + 1))
    with pytest.raises(InvalidRequestError, match=f"prompt_tokens must be in 0..{MAX_TOKENS}, got {MAX_TOKENS + 1}"):
        s.submit(InferenceRequest("short"), now=0.0)
    assert s.stats()["accepted"] == 0


def test_dependencies_per_request() -> None:
    s = Scheduler(["a"])
    ids = [int(i) for i in s.submit_many(np.ones(MAX_DEPENDENCIES + 1, dtype=np.int64), now=0.0)]
    rid = s.submit(InferenceRequest(prompt_tokens=1, depends_on=ids[:MAX_DEPENDENCIES]), now=0.0)
    assert s.status(rid) == "waiting"
    with pytest.raises(InvalidRequestError, match=f"depends_on lists {MAX_DEPENDENCIES + 1} requests "
                                                  f"\\(limit {MAX_DEPENDENCIES}\\)"):
        InferenceRequest(prompt_tokens=1, depends_on=ids)


def test_dependents_of_one_request_are_bounded_by_the_queue_bound() -> None:
    # Fan-out has no limit of its own: each dependent is a live request, so max_queued
    # bounds it (and the edges, at most MAX_DEPENDENCIES per dependent).
    s = Scheduler(["a"], config=Config(max_queued=5))
    root = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    for _ in range(4):
        s.submit(InferenceRequest(prompt_tokens=1, depends_on=[root]), now=0.0)
    before = _state(s)
    with pytest.raises(QueueFullError, match="5"):
        s.submit(InferenceRequest(prompt_tokens=1, depends_on=[root]), now=0.0)
    assert _state(s)[1] == before[1]


# --------------------------------------------------------------------------- per scheduler


def test_queue_length_in_all() -> None:
    s = Scheduler(["a"], config=Config(max_queued=10))
    s.submit_many(np.ones(9, dtype=np.int64), now=0.0)
    before = _state(s)
    with pytest.raises(QueueFullError) as info:
        s.submit_many(np.ones(2, dtype=np.int64), now=0.0)  # all or none
    assert "10" in str(info.value)
    assert _state(s)[1] == before[1] and s.stats()["rejected"] == 2
    s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    assert s.stats()["queued"] == 10


def test_queue_length_per_tenant() -> None:
    s = Scheduler(["a"], config=Config(max_queued_per_tenant=2))
    for _ in range(2):
        s.submit(InferenceRequest(prompt_tokens=1, tenant="alice"), now=0.0)
    before = _state(s)
    with pytest.raises(QueueFullError, match="tenant 'alice'.*2"):
        s.submit(InferenceRequest(prompt_tokens=1, tenant="alice"), now=0.0)
    assert _state(s)[1] == before[1]
    s.submit(InferenceRequest(prompt_tokens=1, tenant="bob"), now=0.0)  # others are not held back


@pytest.mark.parametrize("name", ["max_queued", "max_queued_per_tenant"])
def test_queue_bounds_range(name: str) -> None:
    assert getattr(Config(**{name: 10**12}), name) == 10**12
    with pytest.raises(ConfigError, match=f"{name} must be in 0..1000000000000, got 1000000000001"):
        Config(**{name: 10**12 + 1})


def test_queue_is_bounded_by_default() -> None:
    # The default bound is the same in Config and in the core's own config (C++ users).
    # Reaching 2^24 takes 2 GB; test_queue_length checks the same check at 10.
    from capsched import _core

    assert Config().max_queued == DEFAULT_MAX_QUEUED == 2**24
    assert _core.CoreConfig().max_queued == DEFAULT_MAX_QUEUED
    assert _core.CoreConfig().max_dependents == DEFAULT_MAX_DEPENDENTS


def _waiting_on(s: Scheduler, dep: int, n: int) -> list[int]:
    return [s.submit(InferenceRequest(prompt_tokens=1, depends_on=(dep,)), now=0.0) for _ in range(n)]


def test_fan_out_at_and_past_the_bound() -> None:
    s = Scheduler(["a"], config=Config(max_dependents=3))
    root = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    other = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    _waiting_on(s, root, 3)  # at the bound
    before = _state(s)
    req = InferenceRequest(prompt_tokens=1, depends_on=(other, root))
    with pytest.raises(DependencyError, match=rf"request {root}, which already has 3 requests waiting on it "
                                              r"\(max_dependents = 3\)"):
        s.submit(req, now=0.0)
    assert _state(s) == before and req.id is None
    _waiting_on(s, other, 3)  # other requests' fan-out is their own


def test_fan_out_counts_only_requests_still_waiting() -> None:
    # A dependent that was cancelled, or failed with its other dependency, frees its place.
    s = Scheduler(["a"], config=Config(max_dependents=2))
    root = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    side = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    a = s.submit(InferenceRequest(prompt_tokens=1, depends_on=(root,)), now=0.0)
    b = s.submit(InferenceRequest(prompt_tokens=1, depends_on=(root, side)), now=0.0)
    with pytest.raises(DependencyError, match="max_dependents = 2"):
        _waiting_on(s, root, 1)
    s.cancel(a)
    c = _waiting_on(s, root, 1)[0]  # a's place
    with pytest.raises(DependencyError, match="already has 2 requests"):
        _waiting_on(s, root, 1)
    s.cancel(side)  # b fails with it
    first = s.step(now=0.5)
    assert s.status(b) == "failed"
    d = _waiting_on(s, root, 1)[0]  # b's place
    with pytest.raises(DependencyError, match="already has 2 requests"):
        _waiting_on(s, root, 1)
    # Once root completes, its dependents run and it bounds nothing any more.
    res = s.step(now=1.0)
    assert root in [i for r in (first, res) for batch in r.batches for i in batch.request_ids]
    s.complete(root, now=1.5)
    assert s.status(c) == s.status(d) == "queued"
    _waiting_on(s, root, 3)  # (completed: no edge at all)


def test_fan_out_default_bound() -> None:
    assert Config().max_dependents == DEFAULT_MAX_DEPENDENTS == 65536
    s = Scheduler(["a"])
    root = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    _waiting_on(s, root, DEFAULT_MAX_DEPENDENTS)
    with pytest.raises(DependencyError, match=f"max_dependents = {DEFAULT_MAX_DEPENDENTS}"):
        _waiting_on(s, root, 1)


def test_fan_out_bound_range() -> None:
    assert Config(max_dependents=MAX_DEPENDENTS).max_dependents == MAX_DEPENDENTS
    for bad in (0, MAX_DEPENDENTS + 1):
        with pytest.raises(ConfigError, match=f"max_dependents must be in 1..{MAX_DEPENDENTS}, got {bad}"):
            Config(max_dependents=bad)


def test_number_of_tenants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "MAX_TENANTS", 3)  # None and two names
    s = Scheduler(["a"])
    s.submit(InferenceRequest(prompt_tokens=1, tenant="t1"), now=0.0)
    s.submit(InferenceRequest(prompt_tokens=1, tenant="t2"), now=0.0)
    before = _state(s)
    req = InferenceRequest(prompt_tokens=1, tenant="t3")
    with pytest.raises(InvalidRequestError, match="tenant 't3' would be tenant number 4, over the limit of 3 tenants"):
        s.submit(req, now=0.0)
    assert _state(s) == before and req.id is None and "t3" not in s._tenants
    s.submit(InferenceRequest(prompt_tokens=1, tenant="t1"), now=0.0)  # known tenants go on


def test_number_of_request_classes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_mod, "MAX_REQUEST_CLASSES", 2)
    s = Scheduler(["a"])
    s.submit(InferenceRequest(prompt_tokens=1, request_class="chat"), now=0.0)
    with pytest.raises(InvalidRequestError, match="request_class 'code' would be class number 3, over the limit of 2"):
        s.submit(InferenceRequest(prompt_tokens=1, request_class="code", tenant="new"), now=0.0)
    assert "new" not in s._tenants  # nothing numbered for a refused submit


def test_the_class_limit_is_the_cores() -> None:
    from capsched import _core

    assert MAX_REQUEST_CLASSES == _core.MAX_CLASSES


def test_reserve() -> None:
    s = Scheduler(["a"])
    before = _state(s)
    with pytest.raises(InvalidArgumentError, match=f"up to {MAX_RESERVE}, got {MAX_RESERVE + 1}"):
        s.reserve(MAX_RESERVE + 1)
    assert _state(s) == before
    s.reserve(1000)


def test_devices_and_batch_sizes() -> None:
    with pytest.raises(ConfigError, match="65537 \\(limit 65536\\)"):
        Scheduler([f"d{i}" for i in range(65537)])
    with pytest.raises(ConfigError, match="max_batch_size must be in 1..65536, got 65537"):
        Scheduler(["a"], max_batch_size=65537)
    with pytest.raises(ConfigError, match="69 sizes \\(limit 64\\)"):
        Scheduler(["a"], max_batch_size=65536, config=Config(preferred_batch_sizes=tuple(range(1, 70))))
    s = Scheduler(["a"], max_batch_size=MAX_BATCH_SIZE)
    with pytest.raises(InvalidArgumentError, match="free_slots\\['a'\\] must be in 0..65536, got 65537"):
        s.step(now=0.0, free_slots={"a": 65537})


# --------------------------------------------------------------------------- job files


def test_tasks_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_mod, "MAX_TASKS", 4)
    path = tmp_path / "job.jsonl"
    path.write_text(json.dumps({"task_id": "a", "prompt_tokens": 1, "shards": 4}) + "\n")
    assert len(load_job(path)) == 4
    path.write_text(path.read_text() + json.dumps({"task_id": "b", "prompt_tokens": 1}) + "\n")
    with pytest.raises(JobFileError, match="line 2: the job has more than 4 tasks"):
        load_job(path)


def test_dependencies_per_task_after_shard_expansion(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    lines = [{"task_id": "wide", "prompt_tokens": 1, "shards": MAX_SHARDS},
             {"task_id": "x", "prompt_tokens": 1},
             {"task_id": "sink", "prompt_tokens": 1, "depends_on": ["wide", "x"]}]
    path.write_text("".join(json.dumps(t) + "\n" for t in lines))
    with pytest.raises(JobFileError, match=f"line 3 .*depends on {MAX_SHARDS + 1:,} tasks after shard expansion "
                                           f"\\(limit {MAX_DEPENDENCIES}\\)"):
        load_job(path)
    lines[2]["depends_on"] = ["wide"]
    path.write_text("".join(json.dumps(t) + "\n" for t in lines))
    assert len(load_job(path)) == MAX_SHARDS + 2


def test_task_id_length(tmp_path: Path) -> None:
    path = tmp_path / "job.jsonl"
    path.write_text(json.dumps({"task_id": "x" * MAX_TASK_ID_LENGTH, "prompt_tokens": 1}) + "\n")
    assert load_job(path)[0].task_id == "x" * MAX_TASK_ID_LENGTH
    path.write_text(json.dumps({"task_id": "x" * (MAX_TASK_ID_LENGTH + 1), "prompt_tokens": 1}) + "\n")
    with pytest.raises(JobFileError, match="1..256 characters"):
        load_job(path)


def test_json_integers_of_more_than_4300_digits_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text('[{"task_id": "a", "prompt_tokens": ' + "1" * 4301 + "}]")
    with pytest.raises(JobFileError, match="4300 digits"):
        load_job(path)


def test_a_huge_device_capacity_is_refused() -> None:
    with pytest.raises(ConfigError, match="capacity must be a finite number > 0, got inf"):
        Device("a", float("1e400"))
