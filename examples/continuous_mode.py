"""A continuous (iteration-level) server loop, as vLLM and Orca run, on a virtual clock.

No GPU is needed. Each device is a stand-in engine with a fixed number of sequence
slots and a KV cache measured in tokens. Every iteration the server:

1. reports each device's free slots and free KV tokens to ``Scheduler.step``;
2. evicts the sequences the step preempted (they go back to the scheduler's queue with
   their progress recorded) and adds the ones that join;
3. runs one decode iteration on every device (each running sequence makes one token;
   joiners pay their prefill first), advancing the virtual clock;
4. completes the sequences that finished, with the tokens they really generated.

A few "strict" requests (RT-like, served before normal ones) arrive while the devices
are full, so some normal sequences get preempted to make room.

Run:  python examples/continuous_mode.py [--requests 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field

from capsched import Config, Device, InferenceRequest, Scheduler

PREFILL_S_PER_TOKEN = 2e-5  # stand-in engine speed (virtual seconds)
DECODE_STEP_S = 0.004
DECODE_S_PER_SEQ = 0.0002


@dataclass
class Engine:
    """A stand-in inference engine: slots, a KV cache, and the sequences it runs."""

    slots: int
    kv_tokens: int
    running: dict[int, int] = field(default_factory=dict)  # id -> tokens generated so far

    def kv_reserved(self, need: dict[int, int]) -> int:
        return sum(need[r] for r in self.running)  # prompt + max_new of each (worst case)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)

    engines = {"gpu0": Engine(slots=12, kv_tokens=12_000), "gpu1": Engine(slots=8, kv_tokens=8_000)}
    fleet = [
        Device(name, kv_tokens=e.kv_tokens, prefill_s_per_token=PREFILL_S_PER_TOKEN,
               decode_step_s=DECODE_STEP_S, decode_s_per_seq=DECODE_S_PER_SEQ)
        for name, e in engines.items()
    ]
    # max_batch_tokens bounds the prompt + max_new tokens joining a device per iteration
    # (a prefill budget); preemption lets strict/deadline work evict normal sequences.
    sched = Scheduler(fleet, policy="priority", config=Config(max_batch_tokens=4_000, preemption=True))

    # Arrivals: a Poisson stream of 150 req/s; one in 15 is strict.
    t, arrivals = 0.0, []
    for _ in range(args.requests):
        t += rng.expovariate(150.0)
        arrivals.append(t)

    need: dict[int, int] = {}  # id -> prompt + max_new (what it may hold in KV)
    prompt_of: dict[int, int] = {}
    output_of: dict[int, int] = {}  # id -> tokens it will really generate
    strict_ids: set[int] = set()
    strict_wait: list[float] = []
    submitted_at: dict[int, float] = {}
    joined = preempted = iterations = 0
    i, now = 0, 0.0
    while i < len(arrivals) or sched.stats()["queued"] or any(e.running for e in engines.values()):
        while i < len(arrivals) and arrivals[i] <= now:
            strict = rng.random() < 1 / 15
            prompt, max_new = rng.randint(32, 700), rng.randint(8, 200)
            rid = sched.submit(InferenceRequest(
                prompt_tokens=prompt, max_new_tokens=max_new, priority=rng.choice([0.2, 0.5, 0.8]),
                sched_class="strict" if strict else "normal"), now=arrivals[i])
            need[rid], prompt_of[rid], output_of[rid] = prompt + max_new, prompt, rng.randint(1, max_new)
            submitted_at[rid] = arrivals[i]
            if strict:
                strict_ids.add(rid)
            i += 1

        # 1. Report free slots and free KV tokens; the step fills them.
        free_slots = {n: e.slots - len(e.running) for n, e in engines.items()}
        free_kv = {n: e.kv_tokens - e.kv_reserved(need) for n, e in engines.items()}
        result = sched.step(now=now, free_slots=free_slots, free_kv_tokens=free_kv)

        # 2. Evict first (their slot and KV are what the urgent joiners need), then join.
        for rid, name in result.preempted:
            del engines[name].running[rid]  # its tokens so far are lost; it re-runs later
            preempted += 1
        prefill = dict.fromkeys(engines, 0)
        for batch in result.batches:
            for rid in batch.request_ids:
                engines[batch.device].running[rid] = 0
                prefill[batch.device] += prompt_of[rid]
                joined += 1
                if rid in strict_ids:
                    strict_wait.append(now - submitted_at[rid])

        # 3. One iteration: the devices run in parallel; the slowest sets the pace.
        busy = [
            PREFILL_S_PER_TOKEN * prefill[n] + DECODE_STEP_S + DECODE_S_PER_SEQ * len(e.running)
            for n, e in engines.items() if e.running
        ]
        if busy:
            now += max(busy)
            iterations += 1
        else:  # idle: jump to the next arrival
            now = max(now, arrivals[i]) if i < len(arrivals) else now + 0.01

        # 4. Each running sequence made one token; report those that finished.
        for e in engines.values():
            for rid in list(e.running):
                e.running[rid] += 1
                if e.running[rid] >= output_of[rid]:
                    del e.running[rid]
                    sched.complete(rid, now=now, output_tokens=output_of[rid])

    s = sched.stats()
    print(f"continuous mode: {args.requests} requests ({len(strict_ids)} strict) on "
          + ", ".join(f"{n} ({e.slots} slots, {e.kv_tokens:,} KV tokens)" for n, e in engines.items()))
    print(f"{iterations} iterations, {now:.2f} virtual s; {joined} joins, {preempted} preemptions "
          f"(stats: {s['preempted']}); completed {s['completed']}")
    if strict_wait:
        print(f"strict requests waited {1000 * sum(strict_wait) / len(strict_wait):.1f} ms on average "
              f"(longest {1000 * max(strict_wait):.1f} ms)")
    for d in s["devices"]:
        print(f"  {d['name']}: {d['dispatched_requests']} joins, {d['completed_requests']} completed, "
              f"{d['preempted_requests']} evicted; service model from {d['service_samples']} requests")
    print(f"books balance: {s['conservation_ok']}")
    assert s["conservation_ok"] and sched.check_invariants()


if __name__ == "__main__":
    main()
