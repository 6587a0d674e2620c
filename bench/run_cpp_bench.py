"""Build and run the C++ benchmark driver (bench/cpp/bench_core.cpp) and print its tables.

    python bench/run_cpp_bench.py                  # full run (about 75 s on a 2-core VM, plus the build)
    python bench/run_cpp_bench.py --quick          # one short run of each section (about 5 s)
    python bench/run_cpp_bench.py --repeats 9      # medians of 9 runs instead of 5
    python bench/run_cpp_bench.py --json /tmp/cpp_bench.json   # also write the figures as JSON
    python bench/run_cpp_bench.py --build-dir /tmp/capsched-bench --werror --quick

It configures CMake with ``-DCAPSCHED_BENCH=ON -DCMAKE_BUILD_TYPE=Release`` (plus
``-DCAPSCHED_WERROR=ON`` with ``--werror``) into ``build/bench`` (git-ignored; another
directory with ``--build-dir``), builds the ``capsched_bench`` target with the core library
alone (no Python, no pybind11; the core's ``-Wall -Wextra -Wconversion`` apply to the
driver too) and runs it. Every other argument goes to the driver (``--quick``,
``--repeats N``, ``--json PATH``, ``--only SECTION``, ``--queued N``: the floor section
at one queue size, e.g. to profile it). Needs cmake and a C++17 compiler; uses Ninja when it is
installed and the build directory is new. What each section measures is at the top of
bench/cpp/bench_core.cpp.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "bench")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--build-dir", default=BUILD, help="CMake build directory (default: build/bench)")
    parser.add_argument("--werror", action="store_true", help="configure with -DCAPSCHED_WERROR=ON")
    ours, driver_args = parser.parse_known_args(argv)
    if shutil.which("cmake") is None:
        print("run_cpp_bench: cmake is not installed (pip install cmake)", file=sys.stderr)
        return 2
    build = os.path.abspath(ours.build_dir)
    configure = ["cmake", "-S", ROOT, "-B", build, "-DCAPSCHED_BENCH=ON", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCAPSCHED_WERROR={'ON' if ours.werror else 'OFF'}"]
    if shutil.which("ninja") is not None and not os.path.exists(os.path.join(build, "CMakeCache.txt")):
        configure += ["-G", "Ninja"]
    print(f"building capsched_bench in {build} ...", file=sys.stderr, flush=True)
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    built = subprocess.run(["cmake", "--build", build, "--target", "capsched_bench"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    # The compiler's messages (warnings included) go to stderr; build tool progress lines do not.
    for line in built.stdout.splitlines():
        if not (line.startswith("[") or line.startswith("ninja: ") or line.startswith("gmake")):
            print(line, file=sys.stderr)
    if built.returncode != 0:
        print("run_cpp_bench: the build failed", file=sys.stderr)
        return built.returncode
    exe = os.path.join(build, "capsched_bench")
    return subprocess.run([exe, *driver_args]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
