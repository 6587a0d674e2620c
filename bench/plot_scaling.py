"""Plot the C++ driver's scaling curves from its JSON output.

    python bench/run_cpp_bench.py --json /tmp/cpp_bench.json
    python bench/plot_scaling.py /tmp/cpp_bench.json bench/scaling.png

Left: cost per request against the number of queued requests (log scale), the core's
submit, step and complete beside one push + pop on std::priority_queue. Right: the
step's cost per dispatched request against the number of devices, for equal and mixed
fleets. Needs matplotlib (the ``sim`` extra).
"""

from __future__ import annotations

import json
import sys


def main(src: str, dst: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit('plot_scaling.py needs matplotlib: pip install "capsched[sim]"')
    with open(src) as f:
        data = json.load(f)
    rows = data["floor_and_queued"]
    n = [r["queued"] for r in rows]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (
        ("submit_ns_per_request", "core submit"),
        ("step_ns_per_request", "core step (per dispatched request)"),
        ("complete_ns_per_request", "core complete"),
        ("core_ns_per_request", "core, all three"),
        ("skeleton_ns_per_request", "skeleton (ids, lock, ready queue; no policy)"),
        ("priority_queue_ns", "std::priority_queue push + pop"),
    ):
        if all(r.get(key) is not None for r in rows):  # (older files have no skeleton; --only queued no floors)
            ax.plot(n, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("queued requests")
    ax.set_ylabel("ns per request")
    ax.set_title("cost against queue size (1 device, batches of 32)")
    ax.legend(fontsize=8)
    for fleet in ("equal", "mixed"):
        pts = [r for r in data["devices"] if r["fleet"] == fleet]
        if pts:
            bx.plot([r["devices"] for r in pts], [r["step_ns_per_dispatched_request"] for r in pts], marker="o",
                    label=f"{fleet} capacities")
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.set_xlabel("devices")
    bx.set_ylabel("step ns per dispatched request")
    bx.set_title("cost against fleet size (1e5 queued)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/plot_scaling.py CPP_BENCH_JSON OUT_PNG")
    main(sys.argv[1], sys.argv[2])
