"""The simulator on large fleets: wall time of ``capsched simulate --fleet H100-SXM:N
--policies capsched --requests 200 --load 0.5 --json --no-progress`` (at load 0.5 with
200 requests nearly every device has free slots at every step, so each scheduler step
names the whole fleet), one fleet size after another, in this process. Prints a table.

    python bench/sim_large_fleet.py                  # 1,024 and 4,096 devices (about 5 s)
    python bench/sim_large_fleet.py 1024 65536       # other sizes (65,536: about 35 s)

docs/simulator.md ("Large fleets") quotes it. Each run's JSON goes to a buffer and is
dropped; ``iterations`` is the run's count of engine iterations (the same for any capsched
version that decides the same).
"""

from __future__ import annotations

import io
import json
import platform
import sys
import time

from capsched.cli import main as capsched_main


def one(devices: int) -> tuple[float, int]:
    out = io.StringIO()
    t0 = time.perf_counter()
    code = capsched_main(["simulate", "--fleet", f"H100-SXM:{devices}", "--policies", "capsched", "--requests", "200",
                          "--load", "0.5", "--json", "--no-progress"], out=out)
    elapsed = time.perf_counter() - t0
    if code != 0:
        raise SystemExit(f"capsched simulate exited {code} at {devices} devices")
    runs = json.loads(out.getvalue())["runs"]
    return elapsed, sum(int(r.get("iterations", 0)) for r in runs)


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [1024, 4096]
    print(f"machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print("| devices | wall time (s) | iterations |")
    print("|---:|---:|---:|")
    for n in sizes:
        el, it = one(n)
        print(f"| {n:,} | {el:.1f} | {it:,} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
