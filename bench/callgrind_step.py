"""Instructions per dispatched request in the core's step, by function (callgrind).

    python bench/callgrind_step.py                 # the latency section's loop, 2,000 steps
    python bench/callgrind_step.py --json /tmp/cg_step.json

Runs the C++ driver's ``latency`` section (``--quick``: 1e5 requests queued, 64 equal
devices, each step dispatching one batch of 32; bench/cpp/bench_core.cpp) under
valgrind's callgrind, counting only inside ``Scheduler::step`` (``--toggle-collect``),
and prints the instructions executed per dispatched request, in all and by function
(each function's own instructions, not its callees'). Instruction counts do not depend on
the machine's load, unlike times, so this is the breakdown to compare builds with when a
change is too small for the timed runs' noise. It is not a time: how fast those
instructions run depends on the cache misses and branch mispredictions that the timed
sections see. Needs valgrind (``callgrind_annotate`` comes with it) and, to build the
driver, what ``bench/run_cpp_bench.py`` needs. About 10 s after the build.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_cpp_bench import BUILD, build, failed  # noqa: E402

STEP = "capsched::Scheduler::step(double, capsched::StepOutput&)"
BATCH = 32  # requests each step of the latency section dispatches (the driver checks it)
_ROW = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(?:\S*?:)?(.+?)(?:\s+\[.*\])?$")


def _function(symbol: str) -> str:
    """``capsched::Scheduler::dispatch(unsigned int, ...)`` -> ``Scheduler::dispatch``."""
    name = symbol.split("(")[0]
    return name.replace("capsched::", "").replace("(anonymous namespace)::", "")


def profile(exe: str) -> dict:
    """Runs the latency section under callgrind; returns the steps, the instructions in
    step() in all, and each function's own instructions (a dict)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", f"--toggle-collect={STEP}",
             exe, "--only", "latency", "--quick"],
            capture_output=True, text=True,
        )
        if run.returncode != 0:
            raise RuntimeError(f"the driver failed under callgrind:\n{run.stderr[-3000:]}")
        rows = [line for line in run.stdout.splitlines() if re.match(r"^\| \d+ \|", line)]
        if not rows:
            raise RuntimeError(f"no latency row in the driver's output:\n{run.stdout[-2000:]}")
        steps = int(rows[0].split("|")[1])
        text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", out],
                              capture_output=True, text=True, check=True).stdout
    own: dict[str, int] = {}
    total = None
    for line in text.splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        count, what = int(m.group(1).replace(",", "")), m.group(2).strip()
        if what == "PROGRAM TOTALS":
            total = count
        else:
            key = _function(what)
            own[key] = own.get(key, 0) + count
    if total is None:
        raise RuntimeError(f"callgrind_annotate printed no totals:\n{text[:2000]}")
    return {"steps": steps, "dispatched": steps * BATCH, "instructions": total, "own": own}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default=BUILD, help="CMake build directory (default: build/bench)")
    parser.add_argument("--werror", action="store_true", help="configure with -DCAPSCHED_WERROR=ON")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--top", type=int, default=15, help="functions to list (default 15)")
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_annotate"):
        if shutil.which(tool) is None:
            print(f"callgrind_step: {tool} is not installed (apt install valgrind)", file=sys.stderr)
            return 2
    try:
        exe = build(args.build_dir, args.werror)
        print("running the latency section under callgrind (about 10 s) ...", file=sys.stderr, flush=True)
        p = profile(exe)
    except (FileNotFoundError, RuntimeError) as exc:
        return failed("callgrind_step", exc)
    n = p["dispatched"]
    print(f"## instructions in Scheduler::step per dispatched request (callgrind; {p['steps']} steps of "
          f"{BATCH}, 1e5 queued, 64 equal devices)\n")
    print(f"all of step(): {p['instructions'] / n:,.0f}\n")
    print("| function (own instructions) | per dispatched request | share |")
    print("|---|---:|---:|")
    for name, count in sorted(p["own"].items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| `{name}` | {count / n:,.0f} | {100.0 * count / p['instructions']:.1f} % |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**p, "per_dispatched_request": p["instructions"] / n}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
