"""The per-request fast paths behave exactly as the checked paths.

``Scheduler.submit`` hands an InferenceRequest whose fields are as validated at
construction to the core as one tuple; setting any field again sends it through the
checked path, field by field. ``complete`` skips its checks for a plain int id and
float time (``Core.complete_plain``, which returns NotImplemented for anything else).
``step`` builds its StepResult and Batches without their generated ``__init__``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import pickle
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsched import Config, Device, InferenceRequest, Scheduler, StepResult
from capsched import _core
from capsched.errors import (
    DependencyError,
    DuplicateRequestError,
    InvalidRequestError,
    QueueFullError,
    RequestTypeError,
    UnknownRequestError,
)
from capsched.journal import read_journal
from capsched.scheduler import Batch

REQUESTS = [
    dict(prompt_tokens=5),
    dict(prompt_tokens=0, max_new_tokens=1, priority=0.0),
    dict(prompt="a prompt of a few words", priority=1.0, timeout=3.5),
    dict(prompt_tokens=700, deadline=40.0, tenant="alice", request_class="chat"),
    dict(prompt_tokens=70, tenant="bob", batchable=False, uclamp_min=0.25, uclamp_max=0.5),
    dict(prompt_tokens=9, sched_class="strict", uclamp_min=0.5, request_class="chat"),
    dict(prompt_tokens=9, sched_class="deadline", timeout=30.0, tenant="alice"),
    dict(prompt_tokens=9, sched_class="background", max_new_tokens=4000),
    dict(prompt_tokens=3, pool="big"),  # pools and dependencies take the checked path
    dict(prompt_tokens=3, pool="big", fallback_pool="small"),
]


def _fleet() -> Scheduler:
    return Scheduler(
        [Device("a", 2.0, pool="big"), Device("b", 1.0, pool="small"), Device("c", 1.0, pool="small")],
        max_batch_size=2,
    )


def _set_again(req: InferenceRequest) -> InferenceRequest:
    req.priority = req.priority  # any field set again: the checked path
    return req


def test_fast_and_checked_paths_leave_the_same_state() -> None:
    fast, checked = _fleet(), _fleet()
    for k, kwargs in enumerate(REQUESTS * 3):
        t = k * 0.25
        a = fast.submit(InferenceRequest(**kwargs), now=t)
        b = checked.submit(_set_again(InferenceRequest(**kwargs)), now=t)
        assert a == b
        if k % 4 == 3:
            ra, rb = fast.step(t), checked.step(t)
            assert ra == rb
            for rid in ra.dispatched[:2]:
                fast.complete(rid, t)
                checked.complete(rid, now=t)
    dep = InferenceRequest(prompt_tokens=4, depends_on=(1,))
    assert fast.submit(dep, now=9.0) == checked.submit(InferenceRequest(prompt_tokens=4, depends_on=(1,)), now=9.0)
    assert fast._core.export_state() == checked._core.export_state()
    assert fast.stats() == checked.stats()


def test_fields_set_after_construction_are_honoured() -> None:
    s = Scheduler(["gpu"], policy="priority", max_batch_size=1)
    low = InferenceRequest(prompt_tokens=5, priority=0.2)
    high = InferenceRequest(prompt_tokens=5, priority=0.5)
    low.priority = 0.9
    low.tenant = "carol"
    a, b = s.submit(low, now=0.0), s.submit(high, now=0.0)
    assert s.step(0.0).dispatched == [a]
    assert s.step(1.0).dispatched == []  # one batch in flight
    s.complete(a, 1.0)
    assert s.step(1.0).dispatched == [b]
    del high.tenant
    with pytest.raises(AttributeError):
        high.tenant  # noqa: B018


def test_a_refused_fast_submit_leaves_the_object_unsubmitted() -> None:
    s = Scheduler(["gpu"])
    req = InferenceRequest(prompt_tokens=1, deadline=0.5)
    with pytest.raises(InvalidRequestError, match="not after now"):
        s.submit(req, now=1.0)
    assert req.id is None
    assert s.submit(req, now=0.0) == 1 and req.id == 1
    with pytest.raises(DuplicateRequestError, match="id 1"):
        s.submit(req, now=0.0)
    with pytest.raises(DuplicateRequestError, match="id 1"):
        Scheduler(["other"]).submit(req, now=0.0)  # once, to any scheduler


def test_a_refused_submit_on_either_path_leaves_the_object_submittable() -> None:
    s = Scheduler(["gpu"], config=Config(max_queued=1))
    s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    fast = InferenceRequest(prompt_tokens=1)
    checked = InferenceRequest(prompt_tokens=1, depends_on=[99])
    with pytest.raises(QueueFullError):
        s.submit(fast, now=0.0)
    other = Scheduler(["gpu"])
    with pytest.raises(DependencyError):
        other.submit(checked, now=0.0)
    assert fast.id is None and checked.id is None
    s.step(0.0)  # room again
    checked.depends_on = ()
    assert s.submit(fast, now=0.0) == 2 and other.submit(checked, now=0.0) == 1
    for req, rid in [(fast, 2), (checked, 1)]:
        with pytest.raises(DuplicateRequestError, match=f"id {rid}"):
            s.submit(req, now=0.0)
    req = InferenceRequest(prompt_tokens=1)
    req.id = 5  # an id set by hand: refused, and the object stays as it was
    for _ in range(2):
        with pytest.raises(DuplicateRequestError, match="id 5"):
            s.submit(req, now=0.0)


def test_copies_and_pickles_are_requests_of_their_own() -> None:
    s = Scheduler(["gpu"])
    req = InferenceRequest(prompt_tokens=5, priority=0.3, timeout=2.0, tenant="a", depends_on=())
    twins = [copy.copy(req), copy.deepcopy(req), pickle.loads(pickle.dumps(req))]
    for twin in twins:
        assert repr(twin) == repr(req)
    assert [s.submit(r, now=0.0) for r in [req, *twins]] == [1, 2, 3, 4]
    done = copy.copy(req)
    assert done.id == 1
    with pytest.raises(DuplicateRequestError):
        s.submit(done, now=0.0)
    # A pickle's state that names the public fields (as before they had private slots).
    old = InferenceRequest.__new__(InferenceRequest)
    old.__setstate__((None, {"prompt_tokens": 7, "max_new_tokens": 3, "priority": 0.5, "timeout": None,
                             "deadline": None, "tenant": None, "batchable": True, "depends_on": (),
                             "uclamp_min": 0.0, "uclamp_max": 1.0, "request_class": None,
                             "sched_class": "normal", "pool": None, "fallback_pool": None, "id": None,
                             "prompt": None}))
    assert s.submit(old, now=0.0) == 5 and old.max_new_tokens == 3


def test_the_same_object_from_many_threads_gives_one_id() -> None:
    s = Scheduler(["gpu"])
    for _ in range(50):
        req = InferenceRequest(prompt_tokens=10)
        barrier = threading.Barrier(4)
        got: list = []

        def go() -> None:
            barrier.wait()
            try:
                got.append(s.submit(req, now=0.0))
            except DuplicateRequestError as exc:
                got.append(exc)

        threads = [threading.Thread(target=go) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        ids = [g for g in got if isinstance(g, int)]
        assert len(got) == 4 and len(ids) == 1 and req.id == ids[0]
    assert s.stats()["accepted"] == 50 and s.check_invariants()


@pytest.mark.parametrize(
    "rid, exc, fragment",
    [
        (2**64, UnknownRequestError, "ids start at 1"),
        (0, UnknownRequestError, "ids start at 1"),
        (-3, UnknownRequestError, "-3"),
        (True, RequestTypeError, "True"),
        (2.0, RequestTypeError, "2.0"),
        (99, UnknownRequestError, "never issued"),
    ],
)
def test_complete_refuses_what_it_refused_before(rid: object, exc: type, fragment: str) -> None:
    s = Scheduler(["gpu"])
    s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    with pytest.raises(exc, match=fragment):
        s.complete(rid, now=1.0)
    with pytest.raises(exc, match=fragment):
        s.complete(rid)  # the scheduler's clock


def test_step_results_are_the_dataclasses() -> None:
    s = Scheduler(["a", "b"], max_batch_size=2)
    ids = [s.submit(InferenceRequest(prompt_tokens=5), now=0.0) for _ in range(3)]
    res = s.step(0.0)
    want = StepResult([Batch("a", 0, ids[:2]), Batch("b", 1, ids[2:])], [], [], 0.0, [], [], math.inf, 0)
    assert res == want and repr(res) == repr(want) and res.dispatched == ids and res
    assert dataclasses.asdict(res) == dataclasses.asdict(want)
    assert dataclasses.replace(res.batches[0], device="z").device == "z"
    assert len(res.batches[0]) == 2 and isinstance(res.batches[0].request_ids, list)
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.now = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.batches[0].device = "z"  # type: ignore[misc]
    empty = s.step(0.0)
    assert empty == StepResult([], [], [], 0.0) and not empty


def test_core_per_request_calls_convert_or_raise_type_error() -> None:
    core = Scheduler(["gpu"])._core
    nan = math.nan
    with pytest.raises(TypeError, match="priority must be a number, got 'x'"):
        core.submit(1, 2, "x", nan, nan, 0, 0, 0, True, 0.0, 1.0, 0, 0, None, 0.0)
    with pytest.raises(TypeError, match="takes 15 positional arguments"):
        core.submit(1, 2)
    with pytest.raises(TypeError, match="spec must be a tuple of 8 values"):
        core.submit_spec(1, [2, 0.5, nan, nan, 0, True, 0.0, 1.0], 0, 0, 0.0)
    with pytest.raises(TypeError, match="tenant must be an integer"):
        core.submit_spec(1, (2, 0.5, nan, nan, 0, True, 0.0, 1.0), -1, 0, 0.0)
    with pytest.raises(TypeError, match="id must be an integer"):
        core.complete(2**64, 0.0)
    with pytest.raises(TypeError, match="takes 2 or 3 positional arguments"):
        core.complete(1)
    with pytest.raises(TypeError):
        core.complete(id=1, now=0.0)
    # What pybind11 converts, they convert: ints for floats, objects with __index__.
    assert core.submit_spec(_Index(3), (2, 1, nan, nan, 0, 1, 0, 1), 0, 0, 0) == 1
    assert core.submit(1, 2, 0.5, nan, nan, 0, 0, 0, True, 0.0, 1.0, 0, 0, [1], 0.0) == 2
    with pytest.raises(InvalidRequestError, match="priority"):
        core.submit_spec(1, (2, 1.5, nan, nan, 0, True, 0.0, 1.0), 0, 0, 0.0)


def test_complete_plain_takes_only_the_plain_call_and_does_nothing_otherwise() -> None:
    s = Scheduler(["gpu"], max_batch_size=8)
    ids = [s.submit(InferenceRequest(prompt_tokens=1), now=0.0) for _ in range(7)]
    assert s.step(0.0).dispatched == ids
    core = s._core
    before = s.stats()
    for args in [(True, 1.0, None), (_Index(ids[0]), 1.0, None), (float(ids[0]), 1.0, None),
                 (ids[0], 1, None), (ids[0], None, None), (ids[0], 1.0, 5), (0, 1.0, None),
                 (-1, 1.0, None), (2**64, 1.0, None), (2**70, 1.0, None)]:
        assert core.complete_plain(*args) is NotImplemented, args
    assert s.stats() == before  # nothing was done
    assert core.complete_plain(ids[0], 1.0, None) is None
    assert s.status(ids[0]) == "completed"
    with pytest.raises(TypeError, match="takes 3 positional arguments"):
        core.complete_plain(ids[1], 1.0)
    # What falls through is checked and done by the checked path: the same outcome.
    s.complete(ids[1], 1)  # an int time
    s.complete(np.uint64(ids[2]), 1.0)
    s.complete(ids[3], now=np.float64(1.0))  # (a float subclass)
    s.complete(ids[4], 1.0, output_tokens=3)
    s.complete(ids[5])  # the scheduler's clock
    assert [s.status(i) for i in ids[:6]] == ["completed"] * 6
    with pytest.raises(RequestTypeError, match="True"):
        s.complete(True, 1.0)


def test_complete_on_a_journaled_scheduler_is_journaled(tmp_path) -> None:
    s = Scheduler(["gpu"])
    s.open_journal(tmp_path / "j.log", sync=False)
    rid = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    s.step(0.0)
    s.complete(rid, 1.0)
    s.close_journal()
    ops = [e["op"] for e in read_journal(tmp_path / "j.log")]
    assert ops[-1] == "complete" and s.status(rid) == "completed"


class _Index:
    def __init__(self, v: int) -> None:
        self.v = v

    def __index__(self) -> int:
        return self.v


def test_the_per_request_calls_are_positional_only() -> None:
    for name in ("submit", "submit_spec", "complete", "complete_plain"):
        params = list(inspect.signature(getattr(_core.Core, name)).parameters.values())[1:]
        assert params and all(p.kind is p.POSITIONAL_ONLY for p in params), name


# ---------------------------------------------------------------- fast path vs checked path

_ANY_ID = st.one_of(
    st.integers(-3, 12), st.integers(2**63, 2**65), st.booleans(), st.floats(allow_nan=True),
    st.none(), st.text(max_size=2), st.builds(np.uint64, st.integers(0, 12)),
    st.builds(np.int64, st.integers(-2, 12)),
)
_ANY_NOW = st.one_of(
    st.floats(0.0, 50.0), st.sampled_from([math.nan, math.inf, -1.0]), st.integers(0, 50), st.none(),
    st.booleans(), st.just("1.0"), st.builds(np.float64, st.floats(0.0, 50.0)),
)
_ANY_TOKENS = st.one_of(st.none(), st.integers(-2, 50), st.booleans(), st.just(2.5))


def _outcome(call) -> tuple:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the class and message are what is compared
        return (type(exc), str(exc))
    return ("ok",)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=st.lists(st.tuples(_ANY_ID, _ANY_NOW, _ANY_TOKENS), min_size=1, max_size=12))
def test_complete_fast_path_matches_the_checked_path(tmp_path, calls) -> None:
    """Any arguments: a scheduler on the fast path (``complete_plain``) and one whose
    journal sends every call through the checked path raise the same error class and
    message, or both complete, and end in the same state."""
    ticks = [10.0]

    def clock() -> float:  # (the same times for both: each call reads it at most once)
        return ticks[0]

    fast = Scheduler(["a", "b"], max_batch_size=4, clock=clock)
    checked = Scheduler(["a", "b"], max_batch_size=4, clock=clock)
    checked.open_journal(tmp_path / f"j{len(list(tmp_path.iterdir()))}.log", sync=False)
    try:
        for s in (fast, checked):
            for _ in range(10):
                s.submit(InferenceRequest(prompt_tokens=3), now=0.0)
            s.step(1.0)
        for rid, now, tokens in calls:
            kw = {} if tokens is None else {"output_tokens": tokens}
            a = _outcome(lambda: fast.complete(rid, now, **kw))
            b = _outcome(lambda: checked.complete(rid, now, **kw))
            assert a == b, (rid, now, tokens)
        assert fast.stats() == checked.stats()
        assert [fast.status(i) for i in range(1, 11)] == [checked.status(i) for i in range(1, 11)]
    finally:
        checked.close_journal()


_SUBMIT_OPS = st.lists(
    st.tuples(
        st.sampled_from(["new", "again", "by_hand", "edited"]),
        st.sampled_from([None, "t1", "t2"]),
        st.one_of(st.floats(0.0, 5.0), st.integers(0, 5), st.none(), st.just(math.nan)),
    ),
    min_size=1,
    max_size=15,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_SUBMIT_OPS)
def test_submit_fast_path_matches_the_checked_path(tmp_path, ops) -> None:
    """New objects, the same object again, an id set by hand, a field set after
    construction, back-pressure (max_queued 6, per tenant 4): the fast path and the
    checked path (a journaled scheduler) give the same ids, errors and state."""

    def make() -> Scheduler:
        return Scheduler(["a"], clock=lambda: 1.0, config=Config(max_queued=6, max_queued_per_tenant=4))

    fast, checked = make(), make()
    checked.open_journal(tmp_path / f"j{len(list(tmp_path.iterdir()))}.log", sync=False)
    last: dict = {}
    try:
        for kind, tenant, now in ops:
            got = []
            for s in (fast, checked):
                if kind == "new" or s not in last:
                    req = InferenceRequest(prompt_tokens=2, tenant=tenant)
                else:
                    req = last[s]
                if kind == "by_hand" and req.id is None:
                    req.id = 7
                if kind == "edited":
                    req.priority = 0.25
                last[s] = req
                got.append((_outcome(lambda: s.submit(req, now=now)), req.id))
            assert got[0] == got[1], (kind, tenant, now)
        assert fast.stats() == checked.stats()
    finally:
        checked.close_journal()
