"""``mypy --strict`` is clean on python/capsched, with the project's [tool.mypy] settings.

mypy runs once (about 20 s cold); each module of the package is then its own test, so a
failure names the file. Skipped when mypy is not installed (the ``test`` extra installs
it), when the source tree is not next to the tests, and with numpy older than 2.3: the
result depends on numpy's own type stubs, and before 2.3 (all that Python 3.9 and 3.10
get) a bare ``np.ndarray`` annotation is an error under --strict (its type parameters had
no defaults). CI checks typing on Python >= 3.11.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "python" / "capsched"
MODULES = sorted(p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")) + ["python/capsched/_core.pyi"]

needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install '.[test]' installs it)"
)
needs_source = pytest.mark.skipif(
    not (PACKAGE / "__init__.py").is_file() or not (ROOT / "pyproject.toml").is_file(),
    reason=f"the source tree (python/capsched, pyproject.toml) is not at {ROOT}",
)


def _numpy_version() -> tuple[int, ...]:
    import numpy

    return tuple(int(x) for x in re.findall(r"\d+", numpy.__version__)[:2])


needs_numpy_stubs = pytest.mark.skipif(
    _numpy_version() < (2, 3),
    reason="numpy < 2.3 stubs flag bare np.ndarray annotations; typing is checked with numpy >= 2.3 (Python >= 3.11)",
)

_ERROR = re.compile(r"^(?P<path>[^:\n]+\.pyi?):\d+(?::\d+)?: error: ", re.M)


def _mypy(tmp: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp / "mypy_cache"),
            "--no-color-output", "--no-error-summary", "--show-error-codes",
            *targets,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """mypy's error lines on the whole package, by file (paths relative to the root)."""
    proc = _mypy(tmp_path_factory.mktemp("mypy"), "python/capsched")
    if proc.returncode not in (0, 1):  # 2: mypy itself failed (bad config, crash)
        pytest.fail(f"mypy did not run (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    out: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        m = _ERROR.match(line)
        if m:
            out.setdefault(Path(m["path"]).as_posix(), []).append(line)
    assert (proc.returncode == 0) == (not out), proc.stdout
    return out


@needs_mypy
@needs_source
@needs_numpy_stubs
def test_mypy_checks_every_module(mypy_errors: dict[str, list[str]]) -> None:
    # Errors can only be reported against files of the package (no stray paths).
    assert set(mypy_errors) <= set(MODULES), sorted(set(mypy_errors) - set(MODULES))


@needs_mypy
@needs_source
@needs_numpy_stubs
@pytest.mark.parametrize("module", MODULES)
def test_module_is_mypy_strict_clean(module: str, mypy_errors: dict[str, list[str]]) -> None:
    errors = mypy_errors.get(module, [])
    assert not errors, f"mypy --strict: {len(errors)} error(s) in {module}:\n" + "\n".join(errors)


@needs_mypy
@needs_source
def test_config_is_strict(tmp_path: Path) -> None:
    # The project's config must really be strict: an unannotated function fails it.
    probe = tmp_path / "probe.py"
    probe.write_text("def double(x):\n    return 2 * x\n")
    proc = _mypy(tmp_path, str(probe))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "[no-untyped-def]" in proc.stdout, proc.stdout
