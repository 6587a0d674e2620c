"""Checkpoint cost: time and peak resident memory of ``Scheduler.checkpoint`` and of
``Scheduler.restore`` with n requests queued, each in a fresh process (so that the peak
is that call's, not an earlier one's), and the file's size. Prints a table: the resident
memory before the checkpoint (the scheduler and the interpreter) and the peak during it;
the part of the checkpoint that holds the scheduler's lock (taking the state, best of 3).

    python bench/checkpoint_cost.py              # n = 1e5 and 1e6 (about 15 s)
    python bench/checkpoint_cost.py 200000       # other sizes

Two devices (capacities 2 and 1), ``max_batch_size`` 64, requests of 1..1999 prompt
tokens from ``submit_many`` at t = 0, then 50 steps, so some are in flight. Linux only
(``resource.getrusage``'s ``ru_maxrss`` in KiB).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

_CHILD = r"""
import os, resource, sys, time
import numpy as np
from capsched import Device, Scheduler
phase, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def _timed(f):
    t0 = time.perf_counter(); f(); return time.perf_counter() - t0
if phase == "save":
    s = Scheduler([Device("g0", capacity=2.0), Device("g1")], max_batch_size=64)
    s.submit_many(np.random.default_rng(0).integers(1, 2000, n), now=0.0)
    for i in range(50):
        s.step(0.001 * i)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter(); s.checkpoint(path); dt = time.perf_counter() - t0
    # The part that holds the scheduler's lock: taking the state (the core's export and
    # its conversion to arrays), best of 3, after the checkpoint so as not to change its peak.
    locked = min(_timed(s._checkpoint_payload) for _ in range(3))
else:
    before = 0
    t0 = time.perf_counter(); r = Scheduler.restore(path); dt = time.perf_counter() - t0
    assert r.check_invariants() and r.stats()["conservation_ok"]
    locked = 0.0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{dt:.2f} {peak / 1024:.0f} {before / 1024:.0f} {locked:.3f}")
"""


def measure(n: int, tmp: str) -> tuple[float, float, float, float, float, float, float]:
    path = os.path.join(tmp, f"c{n}.json")
    out = {}
    for phase in ("save", "restore"):
        r = subprocess.run([sys.executable, "-c", _CHILD, phase, str(n), path], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{phase} of {n} failed:\n{r.stderr}")
        out[phase] = [float(x) for x in r.stdout.split()]
    size = os.path.getsize(path) / 1e6
    os.unlink(path)
    save, restore = out["save"], out["restore"]
    return save[0], save[1], save[2], save[3], restore[0], restore[1], size


def main(argv: list[str]) -> None:
    sizes = [int(float(a)) for a in argv] or [100_000, 1_000_000]
    print("| queued | file (MB) | checkpoint (s) | of it under the lock (s) | RSS before (MiB) | peak RSS (MiB) "
          "| restore (s) | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            st, sm, before, locked, rt, rm, size = measure(n, tmp)
            print(f"| {n:,} | {size:.0f} | {st:.2f} | {locked:.3f} | {before:.0f} | {sm:.0f} | {rt:.2f} | {rm:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
