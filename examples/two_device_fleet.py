"""Schedule a few hundred requests on a described two-device fleet and show what went where.

No GPU is needed: the "server" here runs each batch in virtual time, for a duration
proportional to its tokens divided by the device's relative capacity (a stand-in for
real workers, clearly not a cost model; the simulator brings the real one). The
scheduler itself is the production code path, driven with explicit ``now=`` values.

Run:  python examples/two_device_fleet.py [--requests 300] [--policy weighted] [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections import Counter, defaultdict

from capsched import POLICIES, Device, InferenceRequest, Scheduler

PROMPTS = ["生成一段技术文档", "Summarise this incident report.", "把这段代码翻译成 Rust", "Write a haiku."]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--policy", choices=POLICIES, default="weighted")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    # Described by model: capacity from the spec table (peak dense bf16 TFLOP/s), with a
    # KV-cache budget each (tokens) for a 7-8B model.
    fleet = [
        Device("h100", model="H100-SXM", max_inflight_batches=2, kv_tokens=400_000),
        Device("l4", model="L4", max_inflight_batches=1, kv_tokens=60_000),
    ]
    sched = Scheduler(fleet, policy=args.policy, max_batch_size=16)
    rng = random.Random(args.seed)
    # Stand-in speeds, see docstring: proportional to capacity, the L4 at 1.
    speed = {d.name: d.effective_capacity / fleet[1].effective_capacity for d in fleet}

    # Arrivals: a Poisson stream of 400 req/s, mixed priorities and timeouts.
    t, arrivals = 0.0, []
    for _ in range(args.requests):
        t += rng.expovariate(400.0)
        arrivals.append(t)

    running: list[tuple[float, int, list[int], str]] = []  # (finish, seq, ids, device)
    placed: dict[int, str] = {}
    priority_of: dict[int, float] = {}
    waited: dict[str, list[float]] = defaultdict(list)
    submitted_at: dict[int, float] = {}
    expired = 0
    first_batches: list[tuple[str, list[int]]] = []
    seq = 0
    now = 0.0
    i = 0
    while i < len(arrivals) or running or sched.stats()["queued"]:
        # Next event: an arrival or a batch finishing.
        next_arrival = arrivals[i] if i < len(arrivals) else float("inf")
        next_finish = running[0][0] if running else float("inf")
        now = min(next_arrival, next_finish)
        if now == float("inf"):
            now = sched.stats()["now"] + 0.01  # only queued work left: let time pass
        while i < len(arrivals) and arrivals[i] <= now:
            req = InferenceRequest(
                prompt=rng.choice(PROMPTS),
                prompt_tokens=rng.randint(32, 2048),
                max_new_tokens=rng.randint(16, 512),
                priority=rng.choice([0.2, 0.5, 0.8]),
                timeout=rng.choice([2.0, 5.0, 10.0]),
            )
            rid = sched.submit(req, now=arrivals[i])
            priority_of[rid] = req.priority
            submitted_at[rid] = arrivals[i]
            i += 1
        while running and running[0][0] <= now:
            _, _, ids, _ = heapq.heappop(running)
            sched.complete_many(ids, now=now)
        result = sched.step(now=now)
        expired += len(result.expired)
        for batch in result.batches:
            if len(first_batches) < 4:
                first_batches.append((batch.device, batch.request_ids))
            for rid in batch.request_ids:
                placed[rid] = batch.device
                waited[batch.device].append(now - submitted_at[rid])
            # Stand-in run time: 20 ms per batch plus 2 ms per request, over the speed.
            duration = (0.020 + 0.002 * len(batch)) / speed[batch.device]
            seq += 1
            heapq.heappush(running, (now + duration, seq, batch.request_ids, batch.device))

    s = sched.stats()
    print(f"capsched example: {args.requests} requests, policy {args.policy}, fleet "
          + ", ".join(f"{d.name} ({d.model}, {d.effective_capacity:g} TFLOP/s, {d.max_inflight_batches} batch(es) "
                      f"at once, {d.kv_tokens:,} KV tokens)" for d in fleet))
    print(f"{'device':<8}{'requests':>10}{'batches':>9}{'mean wait ms':>14}   requests by priority 0.2/0.5/0.8")
    for d in s["devices"]:
        name = d["name"]
        by_prio = Counter(priority_of[r] for r, dev in placed.items() if dev == name)
        w = waited[name]
        mean_wait = 1000 * sum(w) / len(w) if w else 0.0
        print(f"{name:<8}{d['dispatched_requests']:>10}{d['dispatched_batches']:>9}{mean_wait:>14.1f}   "
              f"{by_prio[0.2]}/{by_prio[0.5]}/{by_prio[0.8]}")
    print(f"completed {s['completed']}, expired {s['expired']}, failed {s['failed']}, "
          f"accepted {s['accepted']}; books balance: {s['conservation_ok']}")
    print(f"placements: {s['placed_fitting']} fitted, {s['placed_fallback']} fell back to the largest spare "
          f"capacity; normalised capacities: "
          + ", ".join(f"{d['name']} {d['capacity_orig']:.0f}" for d in s["devices"]))
    print("first batches (device: request ids):")
    for dev, ids in first_batches:
        print(f"  {dev}: {ids}")


if __name__ == "__main__":
    main()
