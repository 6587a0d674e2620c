"""The C++ benchmark driver (bench/cpp/bench_core.cpp) builds and every section checks out.

``bench/run_cpp_bench.py`` is how bench/README.md's C++ tables are measured; nothing else
runs the driver, so without this test a change to the core's headers could break it
unnoticed. This builds it as the script does (``-DCAPSCHED_WERROR=ON``: warning-clean
under the core's ``-Wall -Wextra -Wconversion``), runs every section once (``--quick``,
about 5 s after the build) and checks the JSON it writes: every section and row present,
every figure finite and positive, bytes per queued request as the driver's counting
allocator sees them, and the machine and commit that ``run_cpp_bench.py`` adds. The
driver itself prints what went wrong and exits with status 1 when a run's result is
wrong: a step that does not dispatch one full batch, an expiry, broken invariants. It
checks counts and invariants, not the order of dispatch: that is
``bench_core.py``'s ``test_heapq_matches_core_order*``. No time is asserted.

Needs cmake (in the ``test`` extra) and a C++17 compiler; builds into ``build/bench``
(git-ignored), so a second run only relinks what changed. A second test runs
``bench/callgrind_step.py`` (instructions per dispatched request, by function) where
valgrind is installed.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent / "run_cpp_bench.py"


def _numbers(row: dict) -> list[float]:
    return [v for v in row.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed (pip install cmake)")
def test_the_cpp_driver_builds_warning_free_and_every_section_checks_out(tmp_path: Path) -> None:
    out = tmp_path / "cpp.json"
    run = subprocess.run([sys.executable, str(RUN), "--werror", "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"run_cpp_bench failed:\n{run.stderr[-4000:]}\n{run.stdout[-2000:]}"
    d = json.loads(out.read_text())
    assert d["quick"] is True and d["repeats"] == 1
    assert d["machine"]["cores"] >= 1 and d["machine"]["cpu"] and d["python"] and d["utc"]
    assert d["commit"] is None or isinstance(d["commit"], str)
    for section in ("floor_and_queued", "devices", "latency", "bulk", "memory"):
        rows = d[section]
        assert rows, f"section {section} has no rows"
        for row in rows:
            for v in _numbers(row):
                assert math.isfinite(v) and v > 0, (section, row)
    floor = d["floor_and_queued"]
    assert [r["queued"] for r in floor][:1] == [1000]
    for r in floor:  # the three calls make up the round, and the ratio is what it says
        parts = r["submit_ns_per_request"] + r["step_ns_per_request"] + r["complete_ns_per_request"]
        assert parts <= r["core_ns_per_request"] * 1.05
        # (the ratios are medians of the repeats' own ratios; with one repeat, the ratio of
        # that repeat's figures, and the spread is that one ratio)
        assert r["core_over_priority_queue"] == pytest.approx(r["core_ns_per_request"] / r["priority_queue_ns"], rel=1e-3)
        assert r["core_over_priority_queue_spread"] == pytest.approx([r["core_over_priority_queue"]] * 2, rel=1e-3)
        assert r["ready_queue_ns"] > 0
        assert r["skeleton_over_priority_queue"] == pytest.approx(
            r["skeleton_ns_per_request"] / r["priority_queue_ns"], rel=1e-3)
        assert r["skeleton_over_priority_queue_spread"] == pytest.approx([r["skeleton_over_priority_queue"]] * 2,
                                                                         rel=1e-3)
        assert r["skeleton_unlocked_ns_per_request"] > 0
    fleets = {(r["devices"], r["fleet"]) for r in d["devices"]}
    assert {(1, "equal"), (64, "equal"), (64, "mixed")} <= fleets
    steps, control = d["latency"]
    assert steps["p50_us"] <= steps["p99_us"] <= steps["max_us"]
    assert control["control_p50_us"] <= control["control_p99_us"] <= control["control_max_us"]
    assert d["bulk"][0]["requests"] == 200_000
    assert d["sizes"] == [{"sizeof_request": 64}]
    for r in d["memory"]:
        # a queued request's record is 64 bytes; with reserve(n) the books are the same
        # with or without timeouts, and at most the 128 bytes
        assert 64 < r["bytes_per_request"] < 200
        if r["reserve"] == "yes":
            assert r["bytes_per_request"] <= 128


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed (pip install cmake)")
def test_the_cpp_drivers_core_loop_alone_leaves_the_floors_out(tmp_path: Path) -> None:
    """--only queued (for profiling) runs the core loop alone: the floors are null in the
    JSON (which stays strict JSON) and "-" in the table, the core's figures are there,
    --rounds is taken, and no other section's table is printed."""
    out = tmp_path / "q.json"
    run = subprocess.run([sys.executable, str(RUN), "--werror", "--quick", "--only", "queued", "--queued", "1000",
                          "--rounds", "300", "--json", str(out)], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, f"run_cpp_bench failed:\n{run.stderr[-4000:]}\n{run.stdout[-2000:]}"
    text = out.read_text()
    assert "nan" not in text.lower()
    (row,) = json.loads(text)["floor_and_queued"]
    assert row["queued"] == 1000
    for key in ("priority_queue_ns", "skeleton_ns_per_request", "core_over_priority_queue",
                "core_over_priority_queue_spread"):
        assert row[key] is None
    assert row["core_ns_per_request"] > 0 and row["step_ns_per_request"] > 0
    assert "| 1000 | - |" in run.stdout and "nan" not in run.stdout
    for other in ("## devices", "## latency", "## bulk", "## memory"):
        assert other not in run.stdout


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("valgrind") is None
                    or shutil.which("callgrind_annotate") is None,
                    reason="needs cmake and valgrind (callgrind_annotate)")
def test_callgrind_step_counts_the_steps_instructions(tmp_path: Path) -> None:
    """bench/callgrind_step.py: the breakdown adds up, and the ready queue's erase is in it."""
    out = tmp_path / "cg.json"
    run = subprocess.run([sys.executable, str(RUN.parent / "callgrind_step.py"), "--werror", "--json", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    d = json.loads(out.read_text())
    assert d["steps"] == 2000 and d["dispatched"] == 2000 * 32
    own = d["own"]
    assert "Scheduler::erase_ready" in own and "Scheduler::dispatch" in own
    assert sum(own.values()) <= d["instructions"] and sum(own.values()) >= 0.95 * d["instructions"]
    assert 100 < d["per_dispatched_request"] < 100_000
    assert "all of step():" in run.stdout and "| `Scheduler::erase_ready` |" in run.stdout
