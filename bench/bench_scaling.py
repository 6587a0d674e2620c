"""Scaling, step latency, memory, and the bulk path at 2e5 requests (issue 7).

Groups (``python -m pytest bench/bench_scaling.py --benchmark-only``):

* ``bulk_2e5``: the ``roundtrip`` loop of bench_core.py with N = 200,000: the core's bulk
  path (``submit_many`` / ``step_many`` / ``complete_many``) against the same weighted policy in
  pure Python (``heapq_weighted.py``). Requests per second = N / median.
* ``scaling_queued``: steady state through the bulk path with n requests queued (1e3 to
  1e6): each round completes the 256 requests in flight with ``complete_many``, submits
  256 with ``submit_many`` and steps with ``step_many`` (8 devices take one batch of 32
  each). Per request
  = median / (rounds x 256), in ``extra_info["median_ns_per_request"]``. The curve should
  grow as ``log n``.
* ``scaling_devices``: the same at n = 1e5 with 1 to 1024 equal devices (each one batch in
  flight): each round completes one device's batch, submits 32 and steps, so a step
  dispatches one batch of 32 whatever the fleet size. Per request as above.
* ``step_latency``: that loop at n = 1e5 and 64 devices, each ``Scheduler.step`` call
  timed on its own from Python (the Python wrapper included; completing and submitting
  are not timed); p50 / p99 / max in ``extra_info`` (bench/cpp/bench_core.cpp measures
  the core's step alone).
* ``memory``: resident memory (``/proc/self/statm``) added by ``submit_many`` of 1e6
  requests (half with a timeout) into a fresh scheduler, with and without ``reserve``,
  per request, in ``extra_info``. Measured in a fresh Python process, so that pages an
  earlier benchmark freed (and the allocator kept) are not reused and missed.

Inputs (numpy arrays) are generated before the timed loops; the loops only slice them.
Virtual time advances 100 us per round and timeouts are far (none expires).
With ``--benchmark-disable`` (the CI correctness pass) each case runs once on a shortened
loop, and the 1e6 cases are skipped (the memory case runs with 1e5). Only results are
asserted, never timings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import (  # noqa: E402
    as_lists,
    check_core,
    check_heapq,
    make_core,
    make_heapq,
    measure_rounds,
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
    measure_rounds(benchmark, make, lambda: data, run, check, n, 5 if contender == "core_bulk" else 3)
    benchmark.extra_info["n_requests"] = n
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["requests_per_second"] = n / stats.stats.median
        _BULK_MEDIANS[contender] = stats.stats.median
        if contender == "heapq" and "core_bulk" in _BULK_MEDIANS:
            benchmark.extra_info["heapq_over_core_bulk"] = stats.stats.median / _BULK_MEDIANS["core_bulk"]


_BULK_MEDIANS: Dict[str, float] = {}  # (the core_bulk case runs first)


def _per_request(benchmark, requests_per_round: int) -> None:
    benchmark.extra_info["requests_per_round"] = requests_per_round
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["median_ns_per_request"] = stats.stats.median / requests_per_round * 1e9


# ---------------------------------------------------------------------- steady state


class SteadyState:
    """n requests queued on `devices` equal devices, each holding one batch of 32.

    `extra` is how many requests the timed rounds will submit: all inputs are generated
    here, and the rounds only slice them."""

    def __init__(self, n: int, devices: int, extra: int, seed: int = 1) -> None:
        total = n + 32 * devices + extra
        r = np.random.default_rng(seed)
        self.inputs = {
            "prompt": r.integers(0, 4000, total),
            "max_new": r.integers(1, 1024, total),
            "priority": r.random(total),
            # half timed, far away: none expires
            "timeout": np.where(r.random(total) < 0.5, r.uniform(1e6, 2e6, total), np.nan),
        }
        self.next = 0
        self.s = Scheduler([f"d{i}" for i in range(devices)], policy="weighted", max_batch_size=32)
        self.s.reserve(n + 32 * devices + 256)
        self.now = 0.0
        self.submit(n + 32 * devices)
        res = self.s.step(now=self.now)
        assert len(res.batches) == devices and len(res.dispatched) == 32 * devices
        self.running = {b.device_index: np.array(b.request_ids, dtype=np.uint64) for b in res.batches}
        self.in_flight = np.array(res.dispatched, dtype=np.uint64)
        self.n = n

    def submit(self, k: int) -> None:
        i, j = self.next, self.next + k
        if j > len(self.inputs["prompt"]):
            raise AssertionError("more rounds than the inputs were generated for")
        w = self.inputs
        self.s.submit_many(w["prompt"][i:j], max_new_tokens=w["max_new"][i:j], priority=w["priority"][i:j],
                           timeout=w["timeout"][i:j], now=self.now)
        self.next = j

    def round_all(self) -> int:
        """Every device's batch completes; as many are submitted; one step refills them."""
        self.now += 1e-4
        done = self.in_flight
        self.s.complete_many(done, now=self.now)
        self.submit(len(done))
        self.in_flight = self.s.step_many(now=self.now).request_ids
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
        assert st["accepted"] == self.next and st["completed"] == self.next - st["queued"] - st["in_flight"], st


@pytest.mark.benchmark(group="scaling_queued")
@pytest.mark.parametrize("n", [1_000, 10_000, 100_000, 1_000_000])
def test_scaling_queued(benchmark, request, n: int) -> None:
    if _disabled(request) and n > 100_000:
        pytest.skip("the 1e6 case is for measuring runs")
    rounds = 2 if _disabled(request) else 200
    bench_rounds = 1 if _disabled(request) else 5
    st = SteadyState(n, devices=8, extra=256 * rounds * bench_rounds)

    def target():
        return sum(st.round_all() for _ in range(rounds))

    done = benchmark.pedantic(target, rounds=bench_rounds, iterations=1)
    assert done == rounds * 256
    st.check()
    _per_request(benchmark, rounds * 256)


@pytest.mark.benchmark(group="scaling_devices")
@pytest.mark.parametrize("devices", [1, 4, 16, 64, 256, 1024])
def test_scaling_devices(benchmark, request, devices: int) -> None:
    # (enough queued to fill every device: 1024 devices hold 32,768 requests)
    rounds = 4 if _disabled(request) else 500
    bench_rounds = 1 if _disabled(request) else 5
    st = SteadyState(100_000 if not _disabled(request) else 10_000, devices=devices,
                     extra=32 * rounds * bench_rounds)
    counter = [0]

    def target():
        for _ in range(rounds):
            st.round_one(counter[0] % devices)
            counter[0] += 1

    benchmark.pedantic(target, rounds=bench_rounds, iterations=1)
    st.check()
    _per_request(benchmark, rounds * 32)


@pytest.mark.benchmark(group="step_latency")
def test_step_latency(benchmark, request) -> None:
    steps = 20 if _disabled(request) else 5000
    st = SteadyState(100_000 if not _disabled(request) else 10_000, devices=64, extra=32 * steps)
    samples: List[float] = []

    def target():
        for i in range(steps):
            samples.append(st.round_one(i % 64))

    benchmark.pedantic(target, rounds=1, iterations=1)
    st.check()
    q = np.quantile(np.array(samples) / 1e3, [0.5, 0.99, 1.0])
    benchmark.extra_info.update({"steps": steps, "p50_us": q[0], "p99_us": q[1], "max_us": q[2],
                                 "p50_ns_per_dispatched_request": q[0] * 1e3 / 32})


# ---------------------------------------------------------------------- memory


# Run in a fresh interpreter: argv = n, reserve (0/1); prints one JSON object.
_MEMORY_CHILD = r"""
import json, os, sys
import numpy as np
from capsched import Scheduler

n, reserve = int(sys.argv[1]), sys.argv[2] == "1"
rng = np.random.default_rng(3)
p, q, pr = rng.integers(0, 4000, n), rng.integers(1, 1024, n), rng.random(n)
timeout = np.where(rng.random(n) < 0.5, rng.uniform(30.0, 60.0, n), np.nan)


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


s = Scheduler([f"d{i}" for i in range(8)], policy="weighted", max_batch_size=32)
before = rss()
if reserve:
    s.reserve(n)
ids = s.submit_many(p, max_new_tokens=q, priority=pr, timeout=timeout, now=0.0)
after = rss()
st = s.stats()
print(json.dumps({"rss_growth": after - before, "ids_nbytes": int(ids.nbytes), "n_ids": int(len(ids)),
                  "queued": st["queued"], "accepted": st["accepted"], "conservation_ok": st["conservation_ok"],
                  "invariants": s.check_invariants()}))
"""


@pytest.mark.benchmark(group="memory")
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
@pytest.mark.parametrize("reserve", [True, False], ids=["reserve", "no_reserve"])
def test_memory_per_queued_request(benchmark, request, reserve: bool) -> None:
    n = 100_000 if _disabled(request) else 1_000_000
    out: dict = {}

    def target():
        proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(n), "1" if reserve else "0"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    benchmark.pedantic(target, rounds=1, iterations=1)
    assert out["n_ids"] == n and out["queued"] == n and out["accepted"] == n
    assert out["conservation_ok"] and out["invariants"]
    # the returned id array (8 bytes a request) is the caller's, not the scheduler's
    per = (out["rss_growth"] - out["ids_nbytes"]) / n
    benchmark.extra_info.update({"n_requests": n, "reserve": reserve, "bytes_per_queued_request": per})
