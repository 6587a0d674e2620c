"""Replay fuzz inputs through fuzz/harness.py, or run seeded random ones, without atheris.

    python fuzz/replay.py crash-<sha1> fuzz/corpus/*       # replay files; stops at the first crash
    python fuzz/replay.py --random 3000 --seed 3           # 3,000 seeded random inputs

With ``--random`` every crash is kept as ``crash-random-<seed>-<i>`` in ``--out`` (the
current directory by default) and the run goes on; the exit status is 1 if any input
crashed. This is the driver that found the bugs listed in docs/reliability.md; atheris
(fuzz/fuzz_scheduler.py) adds coverage guidance.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from collections import Counter
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    """Command line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="inputs to replay")
    ap.add_argument("--random", type=int, default=0, metavar="N", help="run N seeded random inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=600, help="longest random input in bytes (default 600)")
    ap.add_argument("--out", default=".", help="where --random keeps crashing inputs")
    args = ap.parse_args(argv)
    if args.random < 0 or args.max_len < 1:
        ap.error("--random must be >= 0 and --max-len >= 1")
    for path in args.files:
        with open(path, "rb") as f:
            harness.run_one(f.read())  # a crash propagates with its traceback
        print(f"{path}: ok")
    if not args.random:
        return 0
    rnd = random.Random(args.seed)
    kinds: Counter[str] = Counter()
    start = time.perf_counter()
    for i in range(args.random):
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, args.max_len)))
        try:
            harness.run_one(data)
        except Exception as exc:  # noqa: BLE001 - every crash is reported and kept
            kind = f"{type(exc).__name__}: {str(exc)[:100]}"
            if not kinds[kind]:
                path = os.path.join(args.out, f"crash-random-{args.seed}-{i}")
                with open(path, "wb") as f:
                    f.write(data)
                print(f"input {i}: {kind} (kept as {path})", file=sys.stderr)
                traceback.print_exc(limit=-3)
            kinds[kind] += 1
    took = time.perf_counter() - start
    print(f"{args.random} random inputs (seed {args.seed}) in {took:.1f} s: "
          f"{sum(kinds.values())} crashed, {len(kinds)} distinct")
    return 1 if kinds else 0


if __name__ == "__main__":
    sys.exit(main())
