"""Print every figure of a pytest-benchmark JSON file of bench/ as Markdown.

    python -m pytest bench --benchmark-only --benchmark-json=/tmp/bench.json
    python bench/summarize.py /tmp/bench.json

First the machine this process runs on (CPU model, cores, L3 size from ``lscpu``, else
from sysfs), the commit (``git rev-parse --short HEAD``, ``+dirty`` when ``git status
--porcelain`` lists anything) and the Python version, as ``run_cpp_bench.py`` writes them
into its JSON; then the file's own machine line and date. Run it on the machine and
commit that made the file. Then one table per group:

* ``roundtrip``: per (contender, N), the median per round and per request, and the heapq
  median divided by this contender's median (how many times faster than the pure-Python
  heapq scheduler, from the same run);
* ``bulk_2e5``: the median, requests/s, and heapq's median over core_bulk's;
* ``scaling_queued`` / ``scaling_devices``: median ns per request at each size;
* ``step_latency``: p50 / p99 / max of ``Scheduler.step``;
* ``memory``: resident bytes per queued request, with and without ``reserve``.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_cpp_bench import describe, machine_info  # noqa: E402


def _group(data: dict, name: str) -> list[dict]:
    return [b for b in data["benchmarks"] if b["group"] == name]


def _ei(b: dict, key: str):
    return b.get("extra_info", {}).get(key)


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def roundtrip(data: dict) -> None:
    rows = {}
    for b in _group(data, "roundtrip"):
        rows[(b["params"]["contender"], int(b["params"]["n"]))] = (b["stats"]["median"], b["stats"]["rounds"])
    if not rows:
        return
    print("## roundtrip\n")
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
    print()


def bulk(data: dict) -> None:
    rows = _group(data, "bulk_2e5")
    if not rows:
        return
    print("## bulk_2e5\n")
    print("| contender | requests | rounds | median | requests/s | heapq / core_bulk |")
    print("|---|---:|---:|---:|---:|---:|")
    for b in rows:
        print(f"| {b['params']['contender']} | {_ei(b, 'n_requests'):,} | {b['stats']['rounds']} | "
              f"{b['stats']['median'] * 1e3:.1f} ms | {_f(_ei(b, 'requests_per_second'), ',.0f')} | "
              f"{_f(_ei(b, 'heapq_over_core_bulk'), '.1f')}{'x' if _ei(b, 'heapq_over_core_bulk') else ''} |")
    print()


def per_request(data: dict, group: str, param: str) -> None:
    rows = sorted(_group(data, group), key=lambda b: int(b["params"][param]))
    if not rows:
        return
    print(f"## {group}\n")
    print(f"| {param} | rounds | median ns per request |")
    print("|---:|---:|---:|")
    for b in rows:
        print(f"| {int(b['params'][param]):,} | {b['stats']['rounds']} | {_f(_ei(b, 'median_ns_per_request'), ',.0f')} |")
    print()


def step_latency(data: dict) -> None:
    rows = _group(data, "step_latency")
    if not rows:
        return
    print("## step_latency (Scheduler.step from Python)\n")
    print("| steps | p50 (us) | p99 (us) | max (us) |")
    print("|---:|---:|---:|---:|")
    for b in rows:
        print(f"| {_f(_ei(b, 'steps'), ',')} | {_f(_ei(b, 'p50_us'), '.2f')} | {_f(_ei(b, 'p99_us'), '.2f')} | "
              f"{_f(_ei(b, 'max_us'), '.2f')} |")
    print()


def memory(data: dict) -> None:
    rows = _group(data, "memory")
    if not rows:
        return
    print("## memory (resident bytes per queued request, submit_many, fresh process)\n")
    print("| requests | reserve | bytes per request |")
    print("|---:|---|---:|")
    for b in rows:
        print(f"| {_f(_ei(b, 'n_requests'), ',')} | {'yes' if _ei(b, 'reserve') else 'no'} | "
              f"{_f(_ei(b, 'bytes_per_queued_request'), '.1f')} |")
    print()


def main(path: str) -> None:
    with open(path) as f:
        data = json.load(f)
    mi = data.get("machine_info", {})
    print(f"this process: {describe(machine_info())}")
    print(f"file: {mi.get('cpu', {}).get('brand_raw', '?')}, python {mi.get('python_version', '?')}, "
          f"{data.get('datetime', '?')}")
    print()
    roundtrip(data)
    bulk(data)
    per_request(data, "scaling_queued", "n")
    per_request(data, "scaling_devices", "devices")
    step_latency(data)
    memory(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench.json")
