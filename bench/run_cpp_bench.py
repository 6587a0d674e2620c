"""Build and run the C++ benchmark driver (bench/cpp/bench_core.cpp) and print its tables.

    python bench/run_cpp_bench.py            # full run (about 3 minutes on a 2-core VM)
    python bench/run_cpp_bench.py --quick    # one short run of each section (seconds)
    python bench/run_cpp_bench.py --repeats 9

It configures CMake with ``-DCAPSCHED_BENCH=ON -DCMAKE_BUILD_TYPE=Release`` into
``build/bench`` (git-ignored), builds the ``capsched_bench`` target with the core library
alone (no Python, no pybind11) and runs it; extra arguments go to the driver. Needs cmake
and a C++17 compiler (ninja if present). What each section measures is at the top of
bench/cpp/bench_core.cpp; bench/README.md has a run's tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "bench")


def main(argv: list[str]) -> int:
    if shutil.which("cmake") is None:
        print("run_cpp_bench: cmake is not installed (pip install cmake)", file=sys.stderr)
        return 2
    configure = ["cmake", "-S", ROOT, "-B", BUILD, "-DCAPSCHED_BENCH=ON", "-DCMAKE_BUILD_TYPE=Release"]
    if shutil.which("ninja") is not None and not os.path.exists(os.path.join(BUILD, "CMakeCache.txt")):
        configure += ["-G", "Ninja"]
    print("building capsched_bench ...", file=sys.stderr, flush=True)
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", BUILD, "--target", "capsched_bench"], check=True, stdout=subprocess.DEVNULL)
    exe = os.path.join(BUILD, "capsched_bench")
    return subprocess.run([exe, *argv]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
