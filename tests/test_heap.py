"""capsched._core.IndexedHeap and BucketQueue against a plain-Python model.

BucketQueue is the scheduler's ready queue with a front of 8 and buckets of 4, so that
these small cases go through its splits, refills and bucket erases.

The model is a dict handle -> (key, seq); its minimum is the smallest (key, seq). Two
handles may hold the very same (key, seq); the heap may then return either, so the model
accepts any handle whose (key, seq) is the minimum. check_invariants() must hold after
every operation.

NaN keys are outside the contract these tests check (a NaN is not ordered), so no
strategy generates one.
"""

from __future__ import annotations

import random
from typing import Dict, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from capsched._core import BucketQueue, IndexedHeap

QUEUES = [IndexedHeap, BucketQueue]
queues = pytest.mark.parametrize("Queue", QUEUES, ids=[q.__name__ for q in QUEUES])

U64_MAX = 2**64 - 1
NO_HANDLE = 2**32 - 1  # kNoHandle: reserved, refused by push

# Few distinct handles, so that handles are reused after pop/erase and "already present"
# collisions happen; a few large ones so that the position index grows.
handles = st.one_of(st.integers(0, 15), st.integers(0, 15), st.sampled_from([31, 64, 1000, 70_000]))
# Few distinct keys, so that equal keys are common, plus arbitrary finite doubles and
# infinities.
keys = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.0]),
    st.floats(allow_nan=False, allow_infinity=True, width=64),
)
# Few distinct seqs for ties; the extremes of uint64 as well.
seqs = st.one_of(st.integers(0, 3), st.sampled_from([0, 1, 2**63, U64_MAX]), st.integers(0, U64_MAX))


class Model:
    """The obvious reference: a dict and a linear scan."""

    def __init__(self) -> None:
        self.items: Dict[int, Tuple[float, int]] = {}

    def min_key(self) -> Tuple[float, int]:
        return min(self.items.values())

    def argmins(self) -> set:
        m = self.min_key()
        return {h for h, k in self.items.items() if k == m}


def check_top(h: IndexedHeap, m: Model) -> None:
    if not m.items:
        assert len(h) == 0
        with pytest.raises(IndexError):
            h.top()
        return
    handle, key, seq = h.top()
    assert handle in m.argmins()
    assert (key, seq) == m.items[handle]
    assert (key, seq) == m.min_key()


class HeapMachine(RuleBasedStateMachine):
    queue_class = IndexedHeap

    def __init__(self) -> None:
        super().__init__()
        self.h = self.queue_class()
        self.m = Model()

    @initialize(n=st.sampled_from([0, 0, 1, 8, 200]))
    def maybe_reserve(self, n: int) -> None:
        if n:
            self.h.reserve(n)

    @rule(handle=handles, key=keys, seq=seqs)
    def push(self, handle: int, key: float, seq: int) -> None:
        if handle in self.m.items:
            with pytest.raises(ValueError):
                self.h.push(handle, key, seq)
        else:
            self.h.push(handle, key, seq)
            self.m.items[handle] = (key, seq)

    @rule()
    def pop(self) -> None:
        if not self.m.items:
            with pytest.raises(IndexError):
                self.h.pop()
            return
        allowed = self.m.argmins()
        got = self.h.pop()
        assert got in allowed
        del self.m.items[got]

    @rule()
    def top(self) -> None:
        check_top(self.h, self.m)

    @precondition(lambda self: self.m.items)
    @rule(data=st.data(), key=keys, seq=seqs)
    def update_present(self, data: st.DataObject, key: float, seq: int) -> None:
        handle = data.draw(st.sampled_from(sorted(self.m.items)))
        self.h.update(handle, key, seq)
        self.m.items[handle] = (key, seq)

    @precondition(lambda self: self.m.items)
    @rule(data=st.data(), delta=st.sampled_from([-1e300, -10.0, -1.0, -1e-9, 0.0, 1e-9, 1.0, 10.0, 1e300]))
    def update_up_or_down(self, data: st.DataObject, delta: float) -> None:
        # Moves an existing key a little or a lot, keeping its seq.
        handle = data.draw(st.sampled_from(sorted(self.m.items)))
        key, seq = self.m.items[handle]
        new = key + delta
        if new != new:  # inf + -inf
            new = 0.0
        self.h.update(handle, new, seq)
        self.m.items[handle] = (new, seq)

    @rule(handle=handles, key=keys, seq=seqs)
    def update_any(self, handle: int, key: float, seq: int) -> None:
        if handle in self.m.items:
            self.h.update(handle, key, seq)
            self.m.items[handle] = (key, seq)
        else:
            with pytest.raises(KeyError):
                self.h.update(handle, key, seq)

    @rule(handle=handles)
    def erase(self, handle: int) -> None:
        present = handle in self.m.items
        assert self.h.erase(handle) is present
        self.m.items.pop(handle, None)

    @precondition(lambda self: self.m.items)
    @rule(data=st.data())
    def erase_present(self, data: st.DataObject) -> None:
        handle = data.draw(st.sampled_from(sorted(self.m.items)))
        assert self.h.erase(handle) is True
        del self.m.items[handle]

    @rule(handle=handles)
    def contains(self, handle: int) -> None:
        assert self.h.contains(handle) is (handle in self.m.items)

    @rule()
    def clear(self) -> None:
        self.h.clear()
        self.m.items.clear()

    @invariant()
    def consistent(self) -> None:
        assert self.h.check_invariants()
        assert len(self.h) == len(self.m.items)
        if self.m.items:
            check_top(self.h, self.m)


def _machine_settings(examples: int, steps: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


TestHeapMachine = HeapMachine.TestCase
TestHeapMachine.settings = _machine_settings(40, 30)


class BucketQueueMachine(HeapMachine):
    queue_class = BucketQueue


# (longer runs: its splits and refills need more entries than a heap's paths)
TestBucketQueueMachine = BucketQueueMachine.TestCase
TestBucketQueueMachine.settings = _machine_settings(60, 50)


# --- whole sequences: push all, pop all gives the sorted order ---------------------------


@queues
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(keys, seqs), max_size=80))
def test_pop_all_is_sorted(Queue, entries) -> None:
    h = Queue()
    m = Model()
    for handle, (k, s) in enumerate(entries):
        h.push(handle, k, s)
        m.items[handle] = (k, s)
        assert h.check_invariants()
    out = []
    while len(h):
        allowed = m.argmins()
        got = h.pop()
        assert got in allowed
        out.append(m.items.pop(got))
        assert h.check_invariants()
    assert out == sorted(entries)


@queues
@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=1, max_size=60), st.randoms(use_true_random=False))
def test_equal_keys_pop_by_seq(Queue, key_choices, rnd) -> None:
    # Identical keys, distinct seqs: seq decides. Handles are a shuffled permutation so that
    # handle order says nothing about seq order.
    n = len(key_choices)
    seq_of = list(range(n))
    rnd.shuffle(seq_of)
    h = Queue()
    for handle in range(n):
        h.push(handle, key_choices[handle], seq_of[handle])
    got = [h.pop() for _ in range(n)]
    assert got == sorted(range(n), key=lambda i: (key_choices[i], seq_of[i]))
    assert h.check_invariants()


# --- explicit cases -------------------------------------------------------------------


@queues
def test_empty_heap(Queue) -> None:
    h = Queue()
    assert len(h) == 0
    assert h.check_invariants()
    assert not h.contains(0)
    assert not h.contains(NO_HANDLE)
    with pytest.raises(IndexError):
        h.pop()
    with pytest.raises(IndexError):
        h.top()
    with pytest.raises(KeyError):
        h.update(0, 1.0, 0)
    assert h.erase(0) is False
    assert h.erase(12345) is False
    h.clear()
    assert len(h) == 0 and h.check_invariants()


@queues
def test_one_element_heap(Queue) -> None:
    h = Queue()
    h.push(7, 3.5, 9)
    assert len(h) == 1 and h.contains(7) and not h.contains(6)
    assert h.top() == (7, 3.5, 9)
    h.update(7, -1.0, 2)
    assert h.top() == (7, -1.0, 2)
    assert h.check_invariants()
    assert h.pop() == 7
    assert len(h) == 0 and not h.contains(7) and h.check_invariants()
    with pytest.raises(IndexError):
        h.pop()
    # erase of the only element
    h.push(7, 1.0, 0)
    assert h.erase(7) is True
    assert h.erase(7) is False
    assert len(h) == 0 and h.check_invariants()


@queues
def test_default_seq_is_zero(Queue) -> None:
    h = Queue()
    h.push(1, 2.0)
    assert h.top() == (1, 2.0, 0)
    h.update(1, 1.0)
    assert h.top() == (1, 1.0, 0)


@queues
def test_identical_key_and_seq_on_two_handles(Queue) -> None:
    h = Queue()
    h.push(1, 1.0, 5)
    h.push(2, 1.0, 5)
    h.push(3, 1.0, 4)
    assert h.pop() == 3
    assert {h.pop(), h.pop()} == {1, 2}
    assert h.check_invariants()


@queues
def test_push_present_handle_raises_value_error_and_changes_nothing(Queue) -> None:
    h = Queue()
    h.push(3, 1.0, 0)
    h.push(4, 2.0, 0)
    with pytest.raises(ValueError):
        h.push(3, 0.0, 0)
    assert len(h) == 2 and h.top() == (3, 1.0, 0) and h.check_invariants()


@queues
def test_reserved_handle_is_refused(Queue) -> None:
    h = Queue()
    with pytest.raises(ValueError):
        h.push(NO_HANDLE, 0.0, 0)
    assert len(h) == 0 and h.check_invariants()


@queues
def test_out_of_range_arguments_are_type_errors(Queue) -> None:
    h = Queue()
    for bad in (-1, 2**32):
        with pytest.raises(TypeError):
            h.push(bad, 0.0, 0)
    with pytest.raises(TypeError):
        h.push(0, 0.0, -1)
    with pytest.raises(TypeError):
        h.push(0, 0.0, 2**64)
    assert len(h) == 0 and h.check_invariants()


@queues
def test_update_missing_handle_raises_key_error(Queue) -> None:
    h = Queue()
    h.push(1, 1.0, 0)
    with pytest.raises(KeyError):
        h.update(2, 0.0, 0)
    h.pop()
    with pytest.raises(KeyError):
        h.update(1, 0.0, 0)  # popped: no longer present
    h.push(5, 1.0, 0)
    h.erase(5)
    with pytest.raises(KeyError):
        h.update(5, 0.0, 0)  # erased: no longer present
    assert h.check_invariants()


@queues
def test_handle_reuse_after_pop_and_erase(Queue) -> None:
    h = Queue()
    for i in range(10):
        h.push(i, float(i), i)
    assert h.pop() == 0
    assert h.erase(5)
    # both handles can be pushed again, with new keys
    h.push(0, 100.0, 0)
    h.push(5, -100.0, 0)
    assert h.top() == (5, -100.0, 0)
    assert h.check_invariants()
    order = [h.pop() for _ in range(len(h))]
    assert order == [5, 1, 2, 3, 4, 6, 7, 8, 9, 0]


@queues
def test_update_moves_up_and_down(Queue) -> None:
    h = Queue()
    for i in range(50):
        h.push(i, float(i), 0)
    h.update(49, -1.0, 0)  # last leaf to the root
    assert h.top()[0] == 49 and h.check_invariants()
    h.update(49, 1000.0, 0)  # root to the bottom
    assert h.top()[0] == 0 and h.check_invariants()
    h.update(0, 25.5, 0)  # root to the middle
    assert h.top()[0] == 1 and h.check_invariants()
    h.update(30, 30.0, 0)  # unchanged key
    h.update(31, 31.0, 1)  # same key, later seq
    assert h.check_invariants()
    got = [h.pop() for _ in range(len(h))]
    want = sorted(range(50), key=lambda i: {49: 1000.0, 0: 25.5}.get(i, float(i)))
    assert got == want


@queues
def test_random_operations_long_run(Queue) -> None:
    # A longer seeded run than the stateful test, with many handles, for deeper heaps.
    rnd = random.Random(20240607)
    h = Queue()
    m = Model()
    for _ in range(4000):
        op = rnd.random()
        handle = rnd.randrange(300)
        key = float(rnd.choice([rnd.randrange(8), rnd.uniform(-1e6, 1e6)]))
        seq = rnd.randrange(4)
        if op < 0.4:
            if handle in m.items:
                with pytest.raises(ValueError):
                    h.push(handle, key, seq)
            else:
                h.push(handle, key, seq)
                m.items[handle] = (key, seq)
        elif op < 0.6:
            if m.items:
                got = h.pop()
                assert got in m.argmins()
                del m.items[got]
            else:
                with pytest.raises(IndexError):
                    h.pop()
        elif op < 0.8:
            if handle in m.items:
                h.update(handle, key, seq)
                m.items[handle] = (key, seq)
            else:
                with pytest.raises(KeyError):
                    h.update(handle, key, seq)
        else:
            assert h.erase(handle) is (handle in m.items)
            m.items.pop(handle, None)
        assert len(h) == len(m.items)
        if m.items:
            check_top(h, m)
        assert h.check_invariants()
