"""The small measuring scripts of bench/ run and print their tables (tiny sizes; the
figures themselves are for measuring runs, not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


def _run(script: str, *args: str) -> list[str]:
    r = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line.startswith("| ") and not line.startswith("|--")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in KiB: Linux")
def test_checkpoint_cost_prints_a_row_per_size() -> None:
    rows = _run("checkpoint_cost.py", "2000")
    assert rows[0].startswith("| queued |") and rows[1].startswith("| 2,000 |")


def test_mixed_fleet_step_dispatches_everything_queued() -> None:
    rows = _run("mixed_fleet_step.py", "64", "1000")
    cells = [c.strip() for c in rows[1].strip("|").split("|")]
    assert cells[:3] == ["64", "1,000", "1,000"]


def test_mixed_fleet_step_fallback_places_every_request_as_a_fallback() -> None:
    rows = _run("mixed_fleet_step.py", "--fallback")
    body = rows[1:]  # (after the header; _run drops the separator)
    assert len(body) == 14
    for r in body:
        cells = [c.strip() for c in r.strip("|").split("|")]
        # (a 1000 s deadline on seeded devices leaves some requests room to fit)
        loose = cells[4] == "1000 s" and cells[5] == "seeded"
        assert cells[1] == "10,000" and (0 < int(cells[-1].replace(",", "")) < 10_000 if loose
                                         else cells[-1] == "10,000"), r


def test_sim_large_fleet_prints_a_row_per_fleet_size() -> None:
    rows = _run("sim_large_fleet.py", "16", "64")
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows[1:]]
    assert [c[0] for c in cells] == ["16", "64"] and all(int(c[2].replace(",", "")) > 0 for c in cells)
