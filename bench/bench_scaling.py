"""Scaling, step latency, memory, and the bulk path at 2e5 requests (issue 7).

Groups (``python -m pytest bench/bench_scaling.py --benchmark-only``):

* ``bulk_2e5``: the ``roundtrip`` loop of bench_core.py with N = 200,000: the core's bulk
  path (``submit_many`` / ``step`` / ``complete_many``) against the same weighted policy in
  pure Python (``heapq_weighted.py``). Requests per second = N / median.
* ``scaling_queued``: steady state through the bulk path with n requests queued (1e3 to
  1e6): each round submits 256 requests with ``submit_many``, steps (8 devices take one
  batch of 32 each) and completes the 256 with ``complete_many``. Per request = median /
  (rounds x 256). The curve should grow as ``log n``.
* ``scaling_devices``: the same at n = 1e5 with 1 to 1024 devices (each one batch in
  flight): each round completes one device's batch, submits 32 and steps, so a step
  dispatches one batch of 32 whatever the fleet size.
* ``step_latency``: that loop at n = 1e5 and 64 devices, each ``Scheduler.step`` call
  timed on its own from Python (the Python wrapper included); p50 / p99 / max in
  ``extra_info`` (bench/cpp/bench_core.cpp measures the core's step alone).
* ``memory``: resident memory (``/proc/self/statm``) added by ``submit_many`` of 1e6
  requests into a fresh scheduler after ``reserve``, per request, in ``extra_info``.

With ``--benchmark-disable`` (the CI correctness pass) each case runs once on a shortened
loop, and the 1e6 cases are skipped. Only results are asserted, never timings.
"""

from __future__ import annotations

import os
import sys
import time
from typing import List

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import (  # noqa: E402
    as_lists,
    check_core,
    check_heapq,
    make_core,
    make_heapq,
    roundtrip_core_bulk,
    roundtrip_heapq,
    workload,
)

from capsched import Scheduler  # noqa: E402

N_BULK = 200_000


def _disabled(request) -> bool:
    return bool(request.config.getoption("benchmark_disable", default=False))


# ---------------------------------------------------------------------- bulk at 2e5


@pytest.mark.benchmark(group="bulk_2e5")
@pytest.mark.parametrize("contender", ["core_bulk", "heapq"])
def test_bulk_2e5(benchmark, request, contender: str) -> None:
    n = 20_000 if _disabled(request) else N_BULK
    w = workload(n)
    if contender == "core_bulk":
        make, data, run, check = make_core, w, roundtrip_core_bulk, check_core
    else:
        make, data, run, check = make_heapq, as_lists(w), roundtrip_heapq, check_heapq
    made: list = []
    results: List[int] = []

    def setup():
        made.append(make())
        return (made[-1], data), {}

    def target(s, d):
        results.append(run(s, d))

    benchmark.pedantic(target, setup=setup, rounds=5 if contender == "core_bulk" else 3, iterations=1)
    for s, steps in zip(made, results):
        check(s, n, steps)
    benchmark.extra_info["n_requests"] = n
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["requests_per_second"] = n / stats.stats.median


# ---------------------------------------------------------------------- steady state


class SteadyState:
    """n requests queued on `devices` equal devices, each holding one batch of 32."""

    def __init__(self, n: int, devices: int, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.s = Scheduler([f"d{i}" for i in range(devices)], policy="weighted", max_batch_size=32)
        self.s.reserve(n + 32 * devices + 256)
        self.now = 0.0
        self.submit(n)
        res = self.s.step(now=self.now)
        self.running = {b.device_index: np.array(b.request_ids, dtype=np.uint64) for b in res.batches}
        self.submit(len(res.dispatched))
        self.n = n

    def submit(self, k: int) -> None:
        r = self.rng
        timeout = np.where(r.random(k) < 0.5, r.uniform(1e6, 2e6, k), np.nan)  # none expires
        self.s.submit_many(r.integers(0, 4000, k), max_new_tokens=r.integers(1, 1024, k),
                           priority=r.random(k), timeout=timeout, now=self.now)

    def round_all(self) -> int:
        """Every device's batch completes; as many are submitted; one step refills them."""
        self.now += 1e-4
        done = np.concatenate(list(self.running.values()))
        self.s.complete_many(done, now=self.now)
        self.submit(len(done))
        res = self.s.step(now=self.now)
        self.running = {b.device_index: np.array(b.request_ids, dtype=np.uint64) for b in res.batches}
        return len(done)

    def round_one(self, d: int) -> float:
        """Device d's batch completes; 32 are submitted; one step (timed, ns) refills it."""
        self.now += 1e-4
        done = self.running[d]
        self.s.complete_many(done, now=self.now)
        self.submit(len(done))
        t0 = time.perf_counter_ns()
        res = self.s.step(now=self.now)
        ns = time.perf_counter_ns() - t0
        assert [b.device_index for b in res.batches] == [d] and len(res.dispatched) == len(done)
        self.running[d] = np.array(res.batches[0].request_ids, dtype=np.uint64)
        return float(ns)

    def check(self) -> None:
        st = self.s.stats()
        assert st["conservation_ok"] and st["expired"] == 0 and st["failed"] == 0
        assert st["queued"] == self.n, st


@pytest.mark.benchmark(group="scaling_queued")
@pytest.mark.parametrize("n", [1_000, 10_000, 100_000, 1_000_000])
def test_scaling_queued(benchmark, request, n: int) -> None:
    if _disabled(request) and n > 100_000:
        pytest.skip("the 1e6 case is for measuring runs")
    st = SteadyState(n, devices=8)
    rounds = 2 if _disabled(request) else 200

    def target():
        return sum(st.round_all() for _ in range(rounds))

    done = benchmark.pedantic(target, rounds=1 if _disabled(request) else 5, iterations=1)
    assert done == rounds * 256
    st.check()
    benchmark.extra_info["requests_per_round"] = rounds * 256


@pytest.mark.benchmark(group="scaling_devices")
@pytest.mark.parametrize("devices", [1, 4, 16, 64, 256, 1024])
def test_scaling_devices(benchmark, request, devices: int) -> None:
    # (enough queued to fill every device: 1024 devices hold 32,768 requests)
    st = SteadyState(100_000 if not _disabled(request) else max(10_000, 64 * devices), devices=devices)
    rounds = 4 if _disabled(request) else 500
    counter = [0]

    def target():
        for _ in range(rounds):
            st.round_one(counter[0] % devices)
            counter[0] += 1

    benchmark.pedantic(target, rounds=1 if _disabled(request) else 5, iterations=1)
    st.check()
    benchmark.extra_info["requests_per_round"] = rounds * 32


@pytest.mark.benchmark(group="step_latency")
def test_step_latency(benchmark, request) -> None:
    st = SteadyState(100_000 if not _disabled(request) else 10_000, devices=64)
    samples: List[float] = []
    steps = 20 if _disabled(request) else 5000

    def target():
        for i in range(steps):
            samples.append(st.round_one(i % 64))

    benchmark.pedantic(target, rounds=1, iterations=1)
    st.check()
    q = np.quantile(np.array(samples) / 1e3, [0.5, 0.99, 1.0])
    benchmark.extra_info.update({"steps": steps, "p50_us": q[0], "p99_us": q[1], "max_us": q[2]})


# ---------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.benchmark(group="memory")
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_memory_per_queued_request(benchmark, request) -> None:
    n = 100_000 if _disabled(request) else 1_000_000
    rng = np.random.default_rng(3)
    p, q, pr = rng.integers(0, 4000, n), rng.integers(1, 1024, n), rng.random(n)
    timeout = np.where(rng.random(n) < 0.5, rng.uniform(30.0, 60.0, n), np.nan)
    out = {}

    def target():
        s = Scheduler([f"d{i}" for i in range(8)], policy="weighted", max_batch_size=32)
        before = _rss_bytes()
        s.reserve(n)
        ids = s.submit_many(p, max_new_tokens=q, priority=pr, timeout=timeout, now=0.0)
        after = _rss_bytes()
        assert len(ids) == n and s.stats()["queued"] == n
        # the returned id array (8 bytes a request) is the caller's, not the scheduler's
        out["bytes_per_request"] = (after - before - ids.nbytes) / n

    benchmark.pedantic(target, rounds=1, iterations=1)
    benchmark.extra_info.update({"n_requests": n, "bytes_per_queued_request": out["bytes_per_request"]})
