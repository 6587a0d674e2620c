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
at one queue size, e.g. to profile it; ``--only queued``: that section's core loop alone,
``--rounds N``: its number of rounds). Needs cmake and a C++17 compiler; uses Ninja when it is
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


def build(build_dir: str = BUILD, werror: bool = False) -> str:
    """Configure and build the ``capsched_bench`` target; returns the executable's path.
    Raises FileNotFoundError when cmake is missing, RuntimeError (with the compiler's
    messages) when the build fails."""
    if shutil.which("cmake") is None:
        raise FileNotFoundError("cmake is not installed (pip install cmake)")
    build_dir = os.path.abspath(build_dir)
    configure = ["cmake", "-S", ROOT, "-B", build_dir, "-DCAPSCHED_BENCH=ON", "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCAPSCHED_WERROR={'ON' if werror else 'OFF'}"]
    if shutil.which("ninja") is not None and not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
        configure += ["-G", "Ninja"]
    print(f"building capsched_bench in {build_dir} ...", file=sys.stderr, flush=True)
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    built = subprocess.run(["cmake", "--build", build_dir, "--target", "capsched_bench"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    # The compiler's messages (warnings included) go to stderr; build tool progress lines do not.
    messages = [line for line in built.stdout.splitlines()
                if not (line.startswith("[") or line.startswith("ninja: ") or line.startswith("gmake"))]
    for line in messages:
        print(line, file=sys.stderr)
    if built.returncode != 0:
        raise RuntimeError("the build of capsched_bench failed:\n" + "\n".join(messages[-40:]))
    return os.path.join(build_dir, "capsched_bench")


def failed(prog: str, exc: Exception) -> int:
    """Prints a failure of build() (or of a run after it); the exit status for it: 2 for a
    missing tool (FileNotFoundError), else 1."""
    print(f"{prog}: {exc}", file=sys.stderr)
    return 2 if isinstance(exc, FileNotFoundError) else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("--build-dir", default=BUILD, help="CMake build directory (default: build/bench)")
    parser.add_argument("--werror", action="store_true", help="configure with -DCAPSCHED_WERROR=ON")
    ours, driver_args = parser.parse_known_args(argv)
    try:
        exe = build(ours.build_dir, ours.werror)
    except (FileNotFoundError, RuntimeError) as exc:
        return failed("run_cpp_bench", exc)
    return subprocess.run([exe, *driver_args]).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
