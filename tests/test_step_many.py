"""Scheduler.step_many: the same decisions as Scheduler.step, with the per-request fields
as numpy arrays (the bulk path: submit_many, step_many, complete_many)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from capsched import Config, Device, InferenceRequest, Scheduler, StepArrays
from capsched.errors import InvalidArgumentError, UnknownRequestError


def _pair(**kw: object) -> tuple[Scheduler, Scheduler]:
    def make() -> Scheduler:
        devices = [Device("big", 2.0, max_inflight_batches=2), Device("small", 1.0, kv_tokens=6000)]
        return Scheduler(devices, max_batch_size=3, config=Config(retry_base=0.0, **kw))  # type: ignore[arg-type]

    return make(), make()


def _same(res: object, arr: StepArrays) -> None:
    assert arr.request_ids.dtype == np.uint64 and arr.expired.dtype == np.uint64
    assert arr.batch_offsets.dtype == np.uint64 and arr.batch_device.dtype == np.uint32
    assert arr.batches() == res.batches  # type: ignore[attr-defined]
    assert arr.request_ids.tolist() == res.dispatched  # type: ignore[attr-defined]
    assert arr.devices == [b.device for b in res.batches]  # type: ignore[attr-defined]
    assert len(arr.batch_offsets) == len(res.batches) + 1  # type: ignore[attr-defined]
    for name in ("failed", "now", "migrated", "preempted", "next_step_at", "held"):
        assert getattr(arr, name) == getattr(res, name), name
    assert arr.expired.tolist() == res.expired  # type: ignore[attr-defined]
    assert bool(arr) == bool(res)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("continuous", [False, True])
def test_step_many_decides_what_step_decides(seed: int, continuous: bool) -> None:
    # Two schedulers, one driven by step(), one by step_many(), through the same random
    # run: submits (timeouts that expire, dependencies that fail), completes (in bulk on
    # the arrays side), failures, cancels, clock changes. Every step's output and the
    # final state must agree.
    a, b = _pair(max_queue_delay=0.05 if seed % 3 == 0 else 0.0)
    rnd = random.Random(seed)
    t = 0.0
    in_flight: list[int] = []
    issued: list[int] = []
    for _ in range(60):
        t += rnd.choice([0.0, 0.01, 0.2, 1.0])
        op = rnd.random()
        if op < 0.45:
            deps = tuple(rnd.sample(issued[-4:], k=min(len(issued[-4:]), rnd.randint(0, 1))))
            kw = dict(prompt_tokens=rnd.randint(0, 3000), max_new_tokens=rnd.randint(1, 900),
                      priority=rnd.random(), timeout=rnd.choice([None, 0.3, 5.0]), depends_on=deps,
                      sched_class=rnd.choice(["normal"] * 4 + ["strict", "background"]))
            try:
                ra = a.submit(InferenceRequest(**kw), now=t)  # type: ignore[arg-type]
            except Exception as exc:  # a refused dependency: both refuse it
                with pytest.raises(type(exc)):
                    b.submit(InferenceRequest(**kw), now=t)  # type: ignore[arg-type]
                continue
            assert b.submit(InferenceRequest(**kw), now=t) == ra  # type: ignore[arg-type]
            issued.append(ra)
        elif op < 0.75:
            if continuous:
                slots = {"big": rnd.randint(0, 3), "small": rnd.randint(0, 2)}
                res = a.step(now=t, free_slots=slots)
                arr = b.step_many(now=t, free_slots=slots)
            else:
                res = a.step(now=t)
                arr = b.step_many(now=t)
            _same(res, arr)
            in_flight += res.dispatched
            in_flight = [i for i in in_flight if i not in {p for p, _ in res.preempted}]
        elif op < 0.88 and in_flight:
            done = rnd.sample(in_flight, k=rnd.randint(1, len(in_flight)))
            for i in done:
                a.complete(i, now=t)
            b.complete_many(np.array(done, dtype=np.uint64), now=t)
            in_flight = [i for i in in_flight if i not in done]
        elif op < 0.94 and in_flight:
            i = in_flight.pop(rnd.randrange(len(in_flight)))
            retry = rnd.random() < 0.5
            assert a.fail(i, now=t, retryable=retry) == b.fail(i, now=t, retryable=retry)
        elif issued:
            i = rnd.choice(issued)
            assert a.cancel(i) == b.cancel(i)
            in_flight = [x for x in in_flight if x != i]
    assert a.stats()["conservation_ok"] and b.stats()["conservation_ok"]


def test_step_many_matches_step_exactly() -> None:
    # The same run twice, stepped each way: identical state at the end.
    a, b = _pair()
    for s in (a, b):
        s.submit_many(np.arange(1, 40, dtype=np.int64) * 50, timeout=np.where(np.arange(39) % 4 == 0, 0.5, np.nan),
                      now=0.0)
    t = 0.0
    while True:
        t += 0.1
        res, arr = a.step(now=t), b.step_many(now=t)
        _same(res, arr)
        if not res and a.stats()["queued"] == 0:
            break
        a.complete_many(np.array(res.dispatched, dtype=np.uint64), now=t)
        b.complete_many(arr.request_ids, now=t)  # the array as it is
    assert a._core.export_state() == b._core.export_state()
    assert b.stats()["completed"] + b.stats()["expired"] == 39


def test_the_bulk_loop() -> None:
    s = Scheduler(["a", "b"], max_batch_size=8)
    ids = s.submit_many(np.full(100, 10, dtype=np.int64), now=0.0)
    done: list[int] = []
    t = 0.0
    while len(done) < 100:
        t += 0.01
        r = s.step_many(now=t)
        s.complete_many(r.dispatched, now=t)
        done += r.dispatched.tolist()
        assert r.batch_offsets[0] == 0 and r.batch_offsets[-1] == len(r.request_ids)
    assert sorted(done) == ids.tolist()
    empty = s.step_many(now=t + 1)
    assert not empty and empty.batch_offsets.tolist() == [0] and len(empty.request_ids) == 0
    assert empty.batches() == []


def test_step_many_refuses_what_step_refuses() -> None:
    s = Scheduler(["a"])
    s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    before = s._core.export_state()
    with pytest.raises(InvalidArgumentError, match="only used with free_slots"):
        s.step_many(now=1.0, free_kv_tokens={"a": 5})
    with pytest.raises(InvalidArgumentError, match="nope"):
        s.step_many(now=1.0, free_slots={"nope": 1})
    assert s._core.export_state() == before
    with pytest.raises(UnknownRequestError):
        s.complete_many(np.array([99], dtype=np.uint64), now=1.0)


def test_step_many_is_journaled(tmp_path: Path) -> None:
    ck, jn = tmp_path / "state.json", tmp_path / "journal.log"
    s = Scheduler(["a", "b"], max_batch_size=2)
    s.checkpoint(ck)
    s.open_journal(jn)
    s.submit_many(np.arange(1, 9, dtype=np.int64), now=0.0)
    r = s.step_many(now=0.5)
    s.complete_many(r.request_ids[:2], now=0.6)
    s.step_many(now=0.7, free_slots={"a": 1})
    s.close_journal()
    s._core.requeue_in_flight(0.7)  # what recovery does with what was in flight
    restored = Scheduler.restore(ck, journal=jn)
    assert restored._core.export_state() == s._core.export_state()
    restored.close_journal()
