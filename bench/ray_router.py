"""Ray Serve: capsched's request router against Ray's default power-of-two-choices.

    python bench/ray_router.py [--requests 300] [--loads 0.3,0.6,0.9] [--seed 0]

Needs ``pip install "capsched[ray]"``. Starts a local Ray cluster (auth off, a temporary
HOME and temp dir, no dashboard, no HTTP proxy) and deploys four **simulated** replicas
(:class:`capsched.integrations.ray_simulated.SimulatedReplica`: they sleep instead of
running a model): one 4x faster than the three others. Each runs up to 4 requests at once
(``max_ongoing_requests=4``); a request takes 0.4 s / speed on an idle replica and 1.5x
that on a full one. Capacity is the sum of the replicas' saturated rates
(4 x 4 / 0.6 + 3 x 4 / 2.4 = 46.7 req/s). For each offered load (a share of capacity) the
same Poisson arrivals (seeded) go through a deployment handle routed by Ray's default
``PowerOfTwoChoicesRequestRouter``, then by ``CapschedRequestRouter``. Latency is from a
request's arrival to its result (router queueing included); throughput is completions
over the span from the first arrival to the last completion. Before that it times a
ranking itself (the router's way, and :func:`rank_replicas`). Takes about 3 minutes on a
2-core VM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import platform
import random
import sys
import tempfile
import time
import warnings
from typing import Any

import numpy as np

from capsched.integrations.ray_serve import (
    STATS_KEY,
    ReplicaView,
    _Ranker,
    parse_replica_stats,
    rank_replicas,
    request_router_config,
)
from capsched.integrations.ray_simulated import SimulatedReplica, simulated_service_s

SPEEDS = [4.0, 1.0, 1.0, 1.0]
BASE_S = 0.4
SLOTS = 4
SLOWDOWN = 0.5


def capacity_rps() -> float:
    """Requests per second the replicas serve when all are full."""
    return sum(SLOTS / simulated_service_s(BASE_S, s, SLOTS, SLOTS, SLOWDOWN) for s in SPEEDS)


async def _drive(handle: Any, arrivals: np.ndarray) -> tuple[list[float], list[int], float]:
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    lat: list[float] = []
    ranks: list[int] = []
    last = 0.0

    async def one(at: float) -> None:
        nonlocal last
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        result = await handle.remote(None)
        done = loop.time()
        lat.append(done - (start + at))
        ranks.append(int(result["rank"]))
        last = max(last, done - start)

    await asyncio.gather(*(one(float(a)) for a in arrivals))
    return lat, ranks, last - float(arrivals[0])


def _warm_up(handle: Any, capsched: bool) -> None:
    """Sequential requests until the router knows the replicas (for capsched: 8 in a row
    on the fast replica, which needs its routing stats); 20 for the default router."""
    async def one() -> int:
        return int((await handle.remote(None))["rank"])

    streak, n, deadline = 0, 0, time.monotonic() + 60
    while (streak < 8 if capsched else n < 20) and time.monotonic() < deadline:
        rank = asyncio.run(one())
        streak, n = (streak + 1 if rank == 0 else 0), n + 1


def run_router(serve: Any, name: str, config: Any, loads: list[float], requests: int, seed: int) -> list[dict[str, Any]]:
    kwargs = {} if config is None else {"request_router_config": config}
    deployment = serve.deployment(
        num_replicas=len(SPEEDS), max_ongoing_requests=SLOTS, ray_actor_options={"num_cpus": 0}, **kwargs
    )(SimulatedReplica)
    handle = serve.run(deployment.bind(SPEEDS, BASE_S, SLOTS, SLOWDOWN), name=f"sim-{name}", route_prefix=None)
    rows = []
    try:
        _warm_up(handle, config is not None)
        for load in loads:
            rng = np.random.default_rng(seed)
            rate = load * capacity_rps()
            arrivals = np.cumsum(rng.exponential(1.0 / rate, size=requests))
            lat, ranks, span = asyncio.run(_drive(handle, arrivals))
            a = np.asarray(lat)
            rows.append(
                dict(load=load, router=name, mean=a.mean(), p50=np.percentile(a, 50), p99=np.percentile(a, 99),
                     tput=len(a) / span, fast=collections.Counter(ranks)[0] / len(ranks), n=len(a))
            )
            time.sleep(1.0)  # let the replicas drain
    finally:
        serve.delete(f"sim-{name}")
    return rows


def rank_cost_us(n: int, reps: int) -> tuple[float, float]:
    """Microseconds per ranking of n replicas whose loads change every time: as the
    router ranks (one kept scheduler, stats parsed once) and by :func:`rank_replicas`
    (a scheduler built per call)."""
    rng = random.Random(0)
    stats = [{STATS_KEY: {"capacity": rng.choice([1.0, 4.0])}} for _ in range(n)]
    views = [[ReplicaView(f"r{i}", st, rng.randrange(5), 4) for i, st in enumerate(stats)] for _ in range(reps)]
    caps = [parse_replica_stats(v.name, v.stats) for v in views[0]]
    ranker = _Ranker()
    t = time.perf_counter()
    for vs in views:
        ranker.rank(vs, caps, rng)
    kept = (time.perf_counter() - t) / reps * 1e6
    t = time.perf_counter()
    for vs in views:
        rank_replicas(vs, rng=rng)
    fresh = (time.perf_counter() - t) / reps * 1e6
    return kept, fresh


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300, help="requests per load and router")
    ap.add_argument("--loads", default="0.3,0.6,0.9", help="offered loads, shares of capacity")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    loads = [float(x) for x in args.loads.split(",")]
    if args.requests < 10 or not all(0 < x for x in loads):
        ap.error(f"--requests must be >= 10 and --loads > 0, got {args.requests!r} and {args.loads!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Ray's import-time pydantic deprecations
        import ray
        from ray import serve

    costs = {n: rank_cost_us(n, 4000 // n) for n in (4, 16, 64)}  # before Ray runs on the same cores
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capsched-ray-") as tmp:
        os.environ.update(RAY_AUTH_MODE="disabled", HOME=tmp, RAY_USAGE_STATS_ENABLED="0")
        os.environ.pop("RAY_ADDRESS", None)
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                 log_to_driver=False, _temp_dir=f"{tmp}/ray")
        try:
            serve.start(proxy_location="Disabled")
            rows = run_router(serve, "power_of_two_choices", None, loads, args.requests, args.seed)
            rows += run_router(serve, "capsched", request_router_config(seed=args.seed, stats_period_s=0.5),
                               loads, args.requests, args.seed)
        finally:
            serve.shutdown()
            ray.shutdown()
    wall = time.monotonic() - t0

    print(f"Ray {ray.__version__}, Python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.platform()})")
    print(f"simulated replicas: speeds {SPEEDS}, {SLOTS} slots each, {BASE_S} s / speed idle, "
          f"x{1 + SLOWDOWN} full; capacity {capacity_rps():.1f} req/s; {args.requests} Poisson arrivals per run, "
          f"seed {args.seed}\n")
    print("| load | router | mean (s) | p50 (s) | p99 (s) | throughput (req/s) | to the fast replica |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for load in loads:
        for r in (r for r in rows if r["load"] == load):
            print(f"| {load:g} | {r['router']} | {r['mean']:.3f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                  f"{r['tput']:.1f} | {100 * r['fast']:.0f} % |")
    print()
    print("| replicas | one ranking, as the router does it (us) | rank_replicas(), a scheduler per call (us) |")
    print("|---:|---:|---:|")
    for n, (kept, fresh) in costs.items():
        print(f"| {n} | {kept:.0f} | {fresh:.0f} |")
    print(f"\nwall time {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
