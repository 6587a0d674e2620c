"""Round-trip cost of capsched against a pure-Python heapq scheduler of the same policy.

Group "roundtrip": N requests (N = 1,000 and 100,000) are queued at t = 0, then the loop
steps and completes every dispatched request until all N have completed, on 8 equal
devices with max_batch_size 32 (256 requests per step). Time advances by a fixed amount
per step so that the run spans 19 s of virtual time: half of the requests have a timeout
of 20..60 s, so none expires but many change deadline level on the way (the weighted
policy's timer heap does real work). The four contenders:

* ``core_bulk``: the core's bulk path, ``submit_many`` (numpy arrays) / ``step_many``
  (the step's ids as a uint64 array) / ``complete_many`` (that array);
* ``core_python``: the per-request Python path, ``submit(InferenceRequest(...))`` /
  ``step`` / ``complete(id)`` per id (building each InferenceRequest is timed too);
* ``core_python_prebuilt``: the same with the request objects built beforehand (the
  per-request round trip a server pays when it already holds request objects);
* ``heapq``: ``heapq_weighted.HeapqWeightedScheduler``, the same weighted policy in pure
  Python, called per request like ``core_python`` (inputs as plain Python lists).

Scheduler construction and input generation are in each round's setup, not timed. Each
benchmark checks its result (all N completed, none expired, books balanced), and
``test_heapq_matches_core_order`` checks that the heapq version dispatches exactly what
the core dispatches, on the benchmark's workload and on a small seeded workload with
expiry, level changes, ties and equal devices (the symmetric placement path).

Run: ``python -m pytest bench/ --benchmark-only`` (see bench/README.md).
"""

from __future__ import annotations

import gc
import math
import os
import random
import sys
from typing import Dict, List, Tuple

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from heapq_weighted import HeapqWeightedScheduler  # noqa: E402

from capsched import Config, Device, InferenceRequest, Scheduler  # noqa: E402

N_DEVICES = 8
BATCH = 32
SIM_SECONDS = 19.0  # < the smallest timeout (20 s): nothing expires
SIZES = (1_000, 100_000)
# Rounds per (contender, N): enough for a stable median in well under a minute in all.
ROUNDS = {
    ("core_bulk", 1_000): 200,
    ("core_bulk", 100_000): 10,
    ("core_python", 1_000): 30,
    ("core_python", 100_000): 5,
    ("core_python_prebuilt", 1_000): 30,
    ("core_python_prebuilt", 100_000): 5,
    ("heapq", 1_000): 30,
    ("heapq", 100_000): 5,
}


# ---------------------------------------------------------------------- workload


def workload(n: int, seed: int = 12345) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    timeout = rng.uniform(20.0, 60.0, n)
    timeout[rng.random(n) < 0.5] = np.nan
    return {
        "prompt_tokens": rng.integers(0, 4000, n, dtype=np.int64),
        "max_new_tokens": rng.integers(1, 1024, n, dtype=np.int64),
        "priority": rng.random(n),
        "timeout": timeout,
    }


def as_lists(w: Dict[str, np.ndarray]) -> List[Tuple[int, int, float, object]]:
    to = [None if math.isnan(x) else x for x in w["timeout"].tolist()]
    return list(zip(w["prompt_tokens"].tolist(), w["max_new_tokens"].tolist(), w["priority"].tolist(), to))


def n_steps(n: int) -> int:
    return -(-n // (N_DEVICES * BATCH))


def make_core() -> Scheduler:
    return Scheduler([f"gpu{i}" for i in range(N_DEVICES)], policy="weighted", max_batch_size=BATCH)


def make_heapq() -> HeapqWeightedScheduler:
    return HeapqWeightedScheduler([1.0] * N_DEVICES, max_batch_size=BATCH)


# ---------------------------------------------------------------------- the loops


def roundtrip_core_bulk(s: Scheduler, w: Dict[str, np.ndarray]) -> int:
    n = len(w["prompt_tokens"])
    dt = SIM_SECONDS / n_steps(n)
    s.submit_many(w["prompt_tokens"], max_new_tokens=w["max_new_tokens"], priority=w["priority"],
                  timeout=w["timeout"], now=0.0)
    done = steps = 0
    while done < n:
        t = steps * dt
        ids = s.step_many(t).request_ids  # (a uint64 array: complete_many takes it as it is)
        s.complete_many(ids, t)
        done += len(ids)
        steps += 1
        if steps > 2 * n_steps(n):
            raise AssertionError("the loop does not finish")
    return steps


def roundtrip_core_python(s: Scheduler, reqs: List[tuple]) -> int:
    n = len(reqs)
    dt = SIM_SECONDS / n_steps(n)
    submit = s.submit
    for p, q, pr, to in reqs:
        submit(InferenceRequest(prompt_tokens=p, max_new_tokens=q, priority=pr, timeout=to), now=0.0)
    return _drain_per_request(s.step, s.complete, n, dt)


def roundtrip_heapq(h: HeapqWeightedScheduler, reqs: List[tuple]) -> int:
    n = len(reqs)
    dt = SIM_SECONDS / n_steps(n)
    submit = h.submit
    for p, q, pr, to in reqs:
        submit(p, q, pr, to, now=0.0)
    complete = h.complete
    done = steps = 0
    while done < n:
        t = steps * dt
        batches, expired = h.step(t)
        assert not expired
        for _, ids in batches:
            for rid in ids:
                complete(rid, t)
            done += len(ids)
        steps += 1
        if steps > 2 * n_steps(n):
            raise AssertionError("the loop does not finish")
    return steps


def prebuilt_requests(w: Dict[str, np.ndarray]) -> List[InferenceRequest]:
    return [InferenceRequest(prompt_tokens=p, max_new_tokens=q, priority=pr, timeout=to)
            for p, q, pr, to in as_lists(w)]


def roundtrip_core_prebuilt(s: Scheduler, reqs: List[InferenceRequest]) -> int:
    """As roundtrip_core_python, with the request objects built beforehand (untimed)."""
    n = len(reqs)
    dt = SIM_SECONDS / n_steps(n)
    submit = s.submit
    for r in reqs:
        submit(r, now=0.0)
    return _drain_per_request(s.step, s.complete, n, dt)


def _drain_per_request(step, complete, n: int, dt: float) -> int:
    done = steps = 0
    while done < n:
        t = steps * dt
        for b in step(t).batches:
            for rid in b.request_ids:
                complete(rid, t)
            done += len(b.request_ids)
        steps += 1
        if steps > 2 * n_steps(n):
            raise AssertionError("the loop does not finish")
    return steps


def check_core(s: Scheduler, n: int, steps: int) -> None:
    st = s.stats()
    assert st["accepted"] == n and st["completed"] == n and st["dispatched"] == n, st
    assert st["expired"] == st["failed"] == st["cancelled"] == 0
    assert st["waiting"] == st["queued"] == st["in_flight"] == 0
    assert st["conservation_ok"]
    assert steps == n_steps(n)


def check_heapq(h: HeapqWeightedScheduler, n: int, steps: int) -> None:
    assert h.completed == n and h.expired == 0 and h.live == 0
    assert steps == n_steps(n)


# ---------------------------------------------------------------------- benchmarks


def _record(benchmark, n: int) -> None:
    benchmark.extra_info["n_requests"] = n
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["median_us_per_request"] = stats.stats.median / n * 1e6


# (make a scheduler, prepare its input untimed, run the timed loop, check the result)
CONTENDERS = {
    "core_bulk": (make_core, lambda n: workload(n), roundtrip_core_bulk, check_core),
    "core_python": (make_core, lambda n: as_lists(workload(n)), roundtrip_core_python, check_core),
    "core_python_prebuilt": (make_core, lambda n: prebuilt_requests(workload(n)), roundtrip_core_prebuilt,
                             check_core),
    "heapq": (make_heapq, lambda n: as_lists(workload(n)), roundtrip_heapq, check_heapq),
}


def measure_rounds(benchmark, make, data_for_round, run, check, n: int, rounds: int) -> int:
    """``benchmark.pedantic`` over ``rounds`` rounds, each on a fresh scheduler from
    ``make()`` (untimed setup) fed ``data_for_round()``. Each round's scheduler is checked
    (``check(s, n, run's result)``) in the next round's setup, untimed, and then dropped,
    so at most two are alive at once: keeping every round's scheduler until the end made
    each later round allocate its memory afresh (page faults in the timed region) and
    timed the process's growth rather than the scheduler. A full collection runs in
    each setup too, so that no round starts with the previous round's garbage pending.
    Returns the number of rounds run and checked."""
    pending: list = []
    checked = [0]

    def settle() -> None:
        while pending:
            s, result = pending.pop()
            check(s, n, result)
            checked[0] += 1

    def setup():
        settle()
        gc.collect()
        return (make(), data_for_round()), {}

    def target(s, data) -> None:
        pending.append((s, run(s, data)))

    benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1)
    settle()
    assert checked[0] >= 1
    return checked[0]


@pytest.mark.benchmark(group="roundtrip")
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("contender", list(CONTENDERS))
def test_roundtrip(benchmark, contender: str, n: int) -> None:
    make, prepare, run, check = CONTENDERS[contender]
    prepared = prepare(n) if contender != "core_python_prebuilt" else None
    # (request objects can be submitted once: a fresh set per round, built untimed)
    measure_rounds(benchmark, make, lambda: prepare(n) if prepared is None else prepared, run, check, n,
                   ROUNDS[(contender, n)])
    _record(benchmark, n)


# ---------------------------------------------------------------------- same order


def test_heapq_matches_core_order_on_the_benchmark_workload() -> None:
    n = 3000
    w = workload(n, seed=99)
    reqs = as_lists(w)
    s, h = make_core(), make_heapq()
    ids = s.submit_many(w["prompt_tokens"], max_new_tokens=w["max_new_tokens"], priority=w["priority"],
                        timeout=w["timeout"], now=0.0)
    hids = [h.submit(p, q, pr, to, now=0.0) for p, q, pr, to in reqs]
    assert ids.tolist() == hids
    dt = SIM_SECONDS / n_steps(n)
    core_order: List[int] = []
    heapq_order: List[int] = []
    for k in range(n_steps(n)):
        t = k * dt
        res = s.step(t)
        batches, expired = h.step(t)
        assert [(b.device_index, b.request_ids) for b in res.batches] == batches, f"step {k}"
        assert res.expired == expired == []
        core_order += res.dispatched
        heapq_order += [i for _, b in batches for i in b]
        s.complete_many(res.dispatched, t)
        for i in res.dispatched:
            h.complete(i, t)
    assert core_order == heapq_order and sorted(core_order) == list(range(1, n + 1))
    # The run did exercise the deadline levels: a pure (no-deadline-term) order differs.
    assert core_order != sorted(core_order)


CONFIGS = [
    {},
    {"deadline_levels": 5, "aging_weighted": 0.05},
    {"deadline_levels": 64, "weight_deadline": 0.6, "aging_weighted": 0.0, "resource_scale_tokens": 512.0},
]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("cfg", CONFIGS, ids=["defaults", "q5", "q64"])
def test_heapq_matches_core_order(cfg: dict, seed: int) -> None:
    """Small seeded runs: arrivals over time, timeouts from instant expiry to far away,
    few distinct priorities and sizes (so keys tie and ids decide), four equal devices
    with two batches in flight each (the core's symmetric placement path, which the heapq
    version models; unequal fleets go through capacity-aware placement, which it does
    not), partial completions. Every step must agree exactly."""
    rnd = random.Random(seed)
    caps = [1.0, 1.0, 1.0, 1.0]
    s = Scheduler([Device(f"d{i}", capacity=c, max_inflight_batches=2) for i, c in enumerate(caps)],
                  policy="weighted", max_batch_size=3, config=Config(**cfg))
    h = HeapqWeightedScheduler(caps, max_batch_size=3, max_inflight=2, **cfg)
    t = 0.0
    in_flight: List[int] = []
    n_dispatched = n_expired = 0
    for _ in range(150):
        t += rnd.choice([0.0, 0.0, 0.1, 0.5, 1.0, 3.0])
        for _ in range(rnd.randrange(0, 6)):
            p = rnd.choice([0, 100, 1000, 3000])
            q = rnd.choice([1, 64, 512])
            pr = rnd.choice([0.0, 0.5, 0.5, 1.0, rnd.random()])
            to = rnd.choice([None, None, 0.5, 2.0, 8.0, 15.0, 30.0, rnd.uniform(0.1, 40.0)])
            rid = s.submit(InferenceRequest(prompt_tokens=p, max_new_tokens=q, priority=pr, timeout=to), now=t)
            assert h.submit(p, q, pr, to, now=t) == rid
        res = s.step(t)
        batches, expired = h.step(t)
        assert [(b.device_index, b.request_ids) for b in res.batches] == batches, f"t={t}"
        assert res.expired == expired, f"t={t}"
        n_dispatched += len(res.dispatched)
        n_expired += len(expired)
        in_flight += res.dispatched
        # Complete some: the fleet stays busy, so the queue grows and some requests expire.
        rnd.shuffle(in_flight)
        for _ in range(rnd.randrange(0, len(in_flight) // 4 + 2)):
            if in_flight:
                rid = in_flight.pop()
                s.complete(rid, t)
                h.complete(rid, t)
    assert n_dispatched > 100 and n_expired > 10, (n_dispatched, n_expired)
    assert s.check_invariants()
