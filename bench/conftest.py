"""pytest configuration for the benchmarks.

The project's pytest settings (pyproject.toml) collect only ``tests/`` and only
``test_*.py``; benchmarks live in ``bench/bench_*.py`` so that a plain ``pytest`` never
runs them. This hook collects those files when ``bench/`` is named on the command line:

    python -m pytest bench/ --benchmark-only      # measure
    python -m pytest bench/ --benchmark-disable   # correctness pass: each benchmark once
"""

from __future__ import annotations

import pytest


def pytest_collect_file(parent, file_path):
    # (a file named on the command line is collected by pytest itself: not twice)
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
