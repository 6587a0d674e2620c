"""One step of a fresh scheduler on a large fleet, mixed capacities against equal ones.

On a mostly idle fleet of mixed capacities, placement first scans the devices with room,
then (once a step has placed a few requests with 32 or more devices open) keeps them in
heaps by headroom, so a placement costs about log(devices) rather than (devices)
(docs/placement.md, "Cost"); an equal fleet takes the symmetric fast path. Until
2026-11-29 every placement scanned: 0.32 s for the 4,096-device row below. Prints a
table: the step's time and its time per dispatched request.

    python bench/mixed_fleet_step.py                     # about 2 s
    python bench/mixed_fleet_step.py 4096 10000          # one size (devices, queued)
    python bench/mixed_fleet_step.py --fallback          # requests that fit no device (3 s)

``--fallback``: 10,000 requests of 2,000,000 prompt tokens, which fit no device (their
utilization estimate is clamped to a whole device), on 1,024 and 4,096 mixed devices,
without and with KV budgets and energy-aware placement, and with a timeout; with a
timeout, also on devices with seeded service models (prefill 1e-4 or 5e-5 s per token,
so a request takes 200 or 100 s): each placement is a fallback (the device with room
with the most spare capacity). Without a deadline, or when every device would end the
request in time (no models, or the 1000 s timeout) or none would (the 50 s timeout), the
core takes it from its heaps; when some device would and some would not (the 150 s
timeout) it scans the devices with room, since the fallback then depends on which
devices are in time. Until 2026-11-29 (b506cab) every request with a deadline scanned.

Devices: capacities 1 .. 7 in turn ("mixed") or all 1 ("equal"), ``max_batch_size`` 32,
one batch each; requests from ``submit_many`` (1..1999 prompt tokens) at t = 0; the time
of the first ``step(1.0)``, which dispatches all of them when the fleet has room.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from capsched import Config, Device, Scheduler


def one_step(devices: int, queued: int, mixed: bool) -> tuple[float, int]:
    fleet = [Device(f"d{i}", capacity=float(1 + i % 7) if mixed else 1.0) for i in range(devices)]
    s = Scheduler(fleet, max_batch_size=32)
    s.submit_many(np.random.default_rng(0).integers(1, 2000, queued), now=0.0)
    t0 = time.perf_counter()
    res = s.step_many(1.0)
    return time.perf_counter() - t0, int(res.request_ids.size)


def fallback_step(devices: int, queued: int, kv: bool, energy: bool, timeout: float,
                  models: bool = False) -> tuple[float, int, int]:
    seeded = lambda i: dict(prefill_s_per_token=1e-4 / (1 + i % 2), decode_step_s=0.01, decode_s_per_seq=1e-4)
    fleet = [Device(f"d{i}", capacity=float(1 + i % 7), power_w=100.0 + i % 5,
                    **({"kv_tokens": 10**8} if kv else {}), **(seeded(i) if models else {})) for i in range(devices)]
    s = Scheduler(fleet, max_batch_size=32, config=Config(energy_aware=energy))
    s.submit_many(np.full(queued, 2_000_000), max_new_tokens=np.full(queued, 16),
                  timeout=np.full(queued, timeout), now=0.0)
    t0 = time.perf_counter()
    res = s.step_many(0.0)
    return time.perf_counter() - t0, int(res.request_ids.size), int(s.stats()["placed_fallback"])


def main_fallback() -> None:
    print("| devices | queued | KV budgets | energy_aware | timeout | service models | step (s) | per request (us) "
          "| fallbacks |")
    print("|---:|---:|---|---|---|---|---:|---:|---:|")
    for devices in (1024, 4096):
        for kv, energy, timeout, models in ((False, False, math.nan, False), (True, False, math.nan, False),
                                            (False, True, math.nan, False), (False, False, 100.0, False),
                                            (False, False, 1000.0, True), (False, False, 50.0, True),
                                            (False, False, 150.0, True)):
            el, k, fb = fallback_step(devices, 10_000, kv, energy, timeout, models)
            print(f"| {devices:,} | 10,000 | {'yes' if kv else 'no'} | {'yes' if energy else 'no'} | "
                  f"{'none' if math.isnan(timeout) else f'{timeout:g} s'} | {'seeded' if models else 'none'} | "
                  f"{el:.4f} | {el / k * 1e6:.2f} | {fb:,} |", flush=True)


def main(argv: list[str]) -> None:
    if argv == ["--fallback"]:
        main_fallback()
        return
    sizes = ([(int(argv[0]), int(float(argv[1])))] if len(argv) == 2
             else [(1024, 10_000), (4096, 10_000), (4096, 20_000), (65_536, 100_000)])
    print("| devices | queued | dispatched | mixed: step (s) | per request (us) | equal: step (s) | mixed / equal |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for devices, queued in sizes:
        mixed, k = one_step(devices, queued, True)
        equal, _ = one_step(devices, queued, False)
        per = mixed / k * 1e6 if k else float("nan")
        print(f"| {devices:,} | {queued:,} | {k:,} | {mixed:.4f} | {per:.2f} | {equal:.4f} | {mixed / equal:.1f}x |",
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
