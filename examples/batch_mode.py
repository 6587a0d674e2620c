"""A batch-mode server loop: step -> run each batch -> complete, on a virtual clock.

No GPU is needed. Each device is a stand-in worker whose "true" speed follows the same
shape as the scheduler's service model (prefill per prompt token, one decode step, and a
decode step's extra per sequence), but 30 % slower than the seeds the scheduler is given,
so you can watch it learn (``service_multipliers``). Batches wait up to
``max_queue_delay`` to fill (cut to a preferred size when they reach one) unless a
member's deadline would be at risk; the batch size limit adapts to ``latency_target``.

Run:  python examples/batch_mode.py [--requests 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random

from capsched import Config, Device, InferenceRequest, Scheduler

# Seeds handed to the scheduler (seconds at full clock) ...
SEEDS = {
    "big": dict(prefill_s_per_token=1e-5, decode_step_s=0.0015, decode_s_per_seq=0.00005),
    "small": dict(prefill_s_per_token=3e-5, decode_step_s=0.0030, decode_s_per_seq=0.00015),
}
TRUE_SLOWDOWN = 1.3  # ... and how much slower the stand-in workers really are.


def run_time(device: str, prompt_tokens: int, steps: int, batch: int) -> float:
    """The stand-in worker: how long a batch takes on a device (virtual seconds)."""
    s = SEEDS[device]
    t = s["prefill_s_per_token"] * prompt_tokens + s["decode_step_s"] * steps
    return TRUE_SLOWDOWN * (t + s["decode_s_per_seq"] * steps * batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    fleet = [
        Device("big", capacity=2.0, kv_tokens=200_000, **SEEDS["big"]),
        Device("small", capacity=1.0, kv_tokens=60_000, **SEEDS["small"]),
    ]
    config = Config(
        max_batch_tokens=24_000,  # prompt + max_new tokens per batch
        max_queue_delay=0.050,  # wait up to 50 ms for a batch to fill ...
        preferred_batch_sizes=(4, 8, 16),  # ... and cut it to one of these when it can
        latency_target=1.0,  # AIMD on each device's batch size limit
    )
    sched = Scheduler(fleet, policy="edf", max_batch_size=16, config=config)

    # Arrivals: a Poisson stream of 20 req/s; a third have a deadline 4 s out.
    t, arrivals = 0.0, []
    for _ in range(args.requests):
        t += rng.expovariate(20.0)
        arrivals.append(t)

    info: dict[int, tuple[int, int, int]] = {}  # id -> (prompt, max_new, real output)
    running: list[tuple[float, int, list[int], str]] = []  # (finish, seq, ids, device)
    sizes: list[int] = []
    seq, i, now = 0, 0, 0.0
    wake = math.inf  # when a held batch must be looked at again
    while i < len(arrivals) or running or sched.stats()["queued"]:
        # The next event: an arrival, a batch finishing, or a held batch's wake-up time.
        next_arrival = arrivals[i] if i < len(arrivals) else math.inf
        next_finish = running[0][0] if running else math.inf
        now = min(next_arrival, next_finish, wake)
        if now == math.inf:  # only work that cannot be placed yet: let time pass
            now = sched.stats()["now"] + 0.01
        while i < len(arrivals) and arrivals[i] <= now:
            prompt, max_new = rng.randint(64, 1500), rng.randint(16, 256)
            deadline = arrivals[i] + 4.0 if rng.random() < 1 / 3 else None
            rid = sched.submit(InferenceRequest(prompt_tokens=prompt, max_new_tokens=max_new,
                                                deadline=deadline), now=arrivals[i])
            info[rid] = (prompt, max_new, rng.randint(1, max_new))  # it stops early, at EOS
            i += 1
        # Finished batches: report each request with the tokens it really generated, so
        # that the service model learns decode steps, not the max_new_tokens worst case.
        while running and running[0][0] <= now:
            _, _, ids, _ = heapq.heappop(running)
            for rid in ids:
                sched.complete(rid, now=now, output_tokens=info[rid][2])

        result = sched.step(now=now)
        # A held batch tells when to come back (its delay or its slack); step again then.
        # (The guard keeps a virtual clock moving if rounding reports exactly `now`.)
        wake = result.next_step_at if result.next_step_at > now else (now + 1e-6 if result.held else math.inf)
        for batch in result.batches:
            ids = batch.request_ids
            prompt = sum(info[r][0] for r in ids)
            steps = max(info[r][2] for r in ids)
            seq += 1
            heapq.heappush(running, (now + run_time(batch.device, prompt, steps, len(ids)), seq, ids, batch.device))
            sizes.append(len(ids))

    s = sched.stats()
    print(f"batch mode: {args.requests} requests on {', '.join(d.name for d in fleet)}; "
          f"{s['batches']} batches, mean size {sum(sizes) / len(sizes):.1f}, largest {max(sizes)}")
    print(f"held back to fill: {s['held']} times; trimmed to a preferred size: {s['trimmed']} requests; "
          f"completed {s['completed']}, expired {s['expired']}")
    for d in s["devices"]:
        m = ", ".join(f"{v:.2f}" for v in d["service_multipliers"])
        print(f"  {d['name']:<6} {d['dispatched_requests']:>4} requests in {d['dispatched_batches']:>3} batches; "
              f"batch limit now {d['batch_limit']:.0f}; service model multipliers ({m}) "
              f"from {d['service_samples']} batches")
    print(f"books balance: {s['conservation_ok']}")
    assert s["conservation_ok"] and sched.check_invariants()


if __name__ == "__main__":
    main()
