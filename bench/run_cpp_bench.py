"""Build and run the C++ benchmark driver (bench/cpp/bench_core.cpp) and print its tables.

    python bench/run_cpp_bench.py                  # full run (bench/README.md has its time and machine)
    python bench/run_cpp_bench.py --quick          # one short run of each section (a few seconds)
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
bench/cpp/bench_core.cpp. With ``--json PATH`` the file written also carries ``machine``
(CPU model, cores, L3 size), ``commit`` (``git rev-parse --short HEAD``, ``+dirty`` when
``git status --porcelain`` lists anything), ``python`` and ``utc`` (when the run ended):
``machine_info()`` below, which bench/summarize.py prints too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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


def _l3_size() -> str | None:
    """The L3 size as lscpu says it (e.g. "32 MiB (1 instance)"), else as sysfs does."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            if line.startswith("L3 cache:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return run.stdout if run.returncode == 0 else None


def machine_info() -> dict:
    """The machine, the commit and the Python that a run's figures belong to."""
    head = _git("rev-parse", "--short", "HEAD")
    status = _git("status", "--porcelain")
    commit = None if head is None else head.strip() + ("+dirty" if status and status.strip() else "")
    return {
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "l3": _l3_size()},
        "commit": commit,
        "python": platform.python_version(),
        "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def describe(info: dict) -> str:
    """One line for machine_info()'s dict."""
    m = info["machine"]
    return (f"machine: {m['cpu']}, {m['cores']} cores, L3 {m['l3'] or 'unknown'}; commit {info['commit'] or 'unknown'}; "
            f"Python {info['python']}; {info['utc']}")


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
    rc = subprocess.run([exe, *driver_args]).returncode
    info = machine_info()
    print(f"\n{describe(info)}", flush=True)
    if rc == 0 and "--json" in driver_args:
        # the driver writes the figures; the machine and commit are added here
        path = driver_args[driver_args.index("--json") + 1]
        with open(path) as f:
            data = json.load(f)
        data.update(info)
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
