"""Print the "roundtrip" table of a pytest-benchmark JSON file as Markdown.

    python -m pytest bench/ --benchmark-only --benchmark-json=/tmp/bench.json
    python bench/summarize.py /tmp/bench.json

One row per (contender, N): median seconds per round, median microseconds per request,
and the heapq median divided by this contender's median (how many times faster than the
pure-Python heapq scheduler it is, from the same run).
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data["benchmarks"]:
        if b["group"] != "roundtrip":
            continue
        name = b["params"]["contender"]
        n = int(b["params"]["n"])
        rows[(name, n)] = (b["stats"]["median"], b["stats"]["rounds"])
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"python {data['machine_info'].get('python_version', '?')}, {data['datetime']}")
    print()
    print("| N | contender | rounds | median per round | median per request | heapq / this |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in sorted({n for _, n in rows}):
        base = rows.get(("heapq", n), (None,))[0]
        for name in ("core_bulk", "core_python", "core_python_prebuilt", "heapq"):
            if (name, n) not in rows:
                continue
            med, rounds = rows[(name, n)]
            ratio = f"{base / med:.2f}x" if base else "-"
            print(f"| {n:,} | {name} | {rounds} | {med * 1e3:.2f} ms | {med / n * 1e6:.3f} us | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
