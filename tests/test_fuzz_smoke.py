"""A short, bounded fuzzing run in CI, and the harness's own checks.

* the seed corpus (fuzz/corpus/) and a fixed set of seeded random inputs replay clean
  through fuzz/harness.py (no atheris needed);
* the harness's oracle is not vacuous: against a scheduler whose books are wrong, or
  which raises a bare exception, it fails;
* atheris runs fuzz/fuzz_scheduler.py for a fixed number of inputs (-runs, seeded) in a
  subprocess and finds nothing. Skipped, saying why, only where atheris cannot be
  installed (it has wheels for CPython 3.9-3.13 on Linux x86-64 only; the ``test`` extra
  installs it there).

The long run is documented in docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from capsched import Scheduler

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import harness  # noqa: E402

CORPUS = sorted(p for p in (FUZZ / "corpus").iterdir() if p.is_file())
ATHERIS_RUNS = 2000


def test_the_seed_corpus_replays_clean() -> None:
    assert len(CORPUS) >= 5
    for path in CORPUS:
        harness.run_one(path.read_bytes())


def test_seeded_random_inputs_replay_clean() -> None:
    rnd = random.Random(20261128)
    for _ in range(150):
        harness.run_one(bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 400))))


def test_the_empty_and_tiny_inputs_are_fine() -> None:
    for data in (b"", b"\x00", b"\xff" * 3, bytes(range(256))):
        harness.run_one(data)


def test_the_oracle_catches_books_that_do_not_balance(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Scheduler.stats

    def off_by_one(self: Scheduler) -> Any:
        st = real(self)
        st["completed"] += 1 if st["accepted"] else 0
        return st

    monkeypatch.setattr(Scheduler, "stats", off_by_one)
    with pytest.raises(AssertionError, match="completed"):
        for path in CORPUS:
            harness.run_one(path.read_bytes())


def test_the_oracle_catches_an_id_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Scheduler.step

    def twice(self: Scheduler, *args: Any, **kw: Any) -> Any:
        res = real(self, *args, **kw)
        if res.batches:  # hand the first batch's ids out again at the next step
            self._again = list(res.batches[0].request_ids)  # type: ignore[attr-defined]
        elif getattr(self, "_again", None):
            res.batches.append(harness_batch(self._again))  # type: ignore[attr-defined]
        return res

    def harness_batch(ids: list[int]) -> Any:
        from capsched.scheduler import _batch

        return _batch("big", 0, ids)

    monkeypatch.setattr(Scheduler, "step", twice)
    with pytest.raises(AssertionError, match="in flight|after it ended"):
        for path in CORPUS:
            harness.run_one(path.read_bytes())


def test_an_unexpected_exception_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Scheduler, request_id: int) -> bool:
        raise OverflowError("Python int too large to convert to C long")

    monkeypatch.setattr(Scheduler, "cancel", broken)
    with pytest.raises(OverflowError):
        for path in CORPUS:
            harness.run_one(path.read_bytes())


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (wheels only for CPython 3.9-3.13 on Linux x86-64)",
)
def test_a_bounded_atheris_run_finds_nothing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(FUZZ / "corpus", corpus)
    cmd = [
        sys.executable,
        str(FUZZ / "fuzz_scheduler.py"),
        f"-runs={ATHERIS_RUNS}",
        "-seed=1",
        "-max_len=512",
        f"-artifact_prefix={tmp_path}/",
        str(corpus),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    crashes = sorted(p.name for p in tmp_path.glob("crash-*"))
    assert proc.returncode == 0 and not crashes, f"atheris found a crash {crashes}:\n{out[-6000:]}"
    assert f"Done {ATHERIS_RUNS} runs" in out, out[-3000:]
    assert "instrumented" in out and "cov:" in out, "atheris ran without coverage feedback"
