"""Issue 5's targets, measured: capsched against least-load on the default simulated run.

    python bench/simulate_targets.py [--requests 2000] [--seed 0]

Runs the same experiment as ``capsched simulate`` (default fleet and trace, loads 0.3,
0.5, 0.7, 0.9 and 1.5 of fleet capacity) for least-load and capsched, then prints each
ratio next to its target, then the cost model's largest error against the Vidur GPU
figures. Takes about 10 s on a 2-core VM.
"""

from __future__ import annotations

import argparse
import platform
import sys

from capsched.sim.cost import validate_against_vidur
from capsched.sim.run import SimConfig, run_experiment


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=None, help="requests per run (default: capsched simulate's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    exp = run_experiment(
        SimConfig(loads=(0.3, 0.5, 0.7, 0.9, 1.5), policies=("least_load", "capsched"), seed=args.seed,
                  requests=args.requests)
    )
    by = {(m.load, m.policy): m for m in exp.runs}
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}; "
          f"{len(exp.workload)} requests, seed {args.seed}, {exp.wall_s:.1f} s")
    print(f"{'load':>5} {'mean ratio':>11} {'p99 ratio':>10} {'SLO capsched':>13} {'SLO least-load':>15} "
          f"{'thr ratio':>10}")
    ok = True
    for load in (0.3, 0.5, 0.7, 0.9, 1.5):
        c, b = by[(load, "capsched")], by[(load, "least_load")]
        mean_r = c.latency_mean_s / b.latency_mean_s
        p99_r = c.latency_p99_s / b.latency_p99_s
        thr_r = c.throughput_rps / b.throughput_rps
        print(f"{load:>5} {mean_r:>10.2f}x {p99_r:>9.2f}x {c.slo_attainment:>12.1%} {b.slo_attainment:>15.1%} "
              f"{thr_r:>9.2f}x")
        if load <= 0.9:
            ok &= mean_r <= 0.75 and p99_r <= 0.5 and c.slo_attainment >= b.slo_attainment
            ok &= load > 0.7 or c.slo_attainment >= 0.9
        else:
            ok &= thr_r >= 1.5
    gc, gb = exp.goodput["capsched"], exp.goodput["least_load"]
    print(f"goodput (x capacity): capsched {gc:g}, least-load {gb:g}")
    ok &= gc >= 1.5 * gb and gc > 0
    print("targets (mean <= 0.75x, p99 <= 0.5x, SLO >= least-load's and >= 90 % up to 0.7, goodput >= 1.5x, "
          f"overload throughput >= 1.5x): {'all met' if ok else 'NOT all met'}")
    rows = validate_against_vidur()
    worst = max(rows, key=lambda r: abs(r.error))
    print(f"cost model against Vidur's Llama-2-7B figures: {len(rows)} points, largest error "
          f"{worst.error:+.1%} ({worst.what}, {worst.gpu})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
