"""What fuzzing found (fuzz/harness.py, docs/reliability.md), kept as plain tests.

Each bug has a direct test of the behaviour, and the fuzz input that found it is replayed
through the harness (fuzz/regressions/*.bin), so the oracle that caught it checks it again.
The two bugs it found outside this work's files are fixed too: submit refuses a request
larger than every KV budget, and a checkpoint keeps the dependency failures a step has
not reported yet.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

from capsched import Device, InferenceRequest, Scheduler
from capsched.errors import DependencyError, InvalidArgumentError, InvalidRequestError

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
import harness  # noqa: E402

REGRESSIONS = sorted((FUZZ / "regressions").glob("*.bin"))


@pytest.mark.parametrize("path", REGRESSIONS, ids=[p.stem for p in REGRESSIONS])
def test_fuzz_input_replays_clean(path: Path) -> None:
    harness.run_one(path.read_bytes())


def test_the_regression_inputs_are_there() -> None:
    assert {p.stem for p in REGRESSIONS} >= {"now-1e308-pelt-nan", "depends-on-2pow64-overflow"}


@pytest.mark.parametrize("now", [1e308, -1e308, 1.5e15, -2e15])
def test_a_now_beyond_1e15_is_refused_and_changes_nothing(now: float) -> None:
    # Found by fuzzing: step(1e308) was accepted (finite), the PELT update overflowed to
    # inf - inf, every device's util_avg became NaN for good and nothing was ever
    # dispatched again: the queued requests were stuck (lost) without an error.
    s = Scheduler(["a", "b"], clock=lambda: 0.0)
    rid = s.submit(InferenceRequest(prompt_tokens=100), now=0.0)
    s.step(0.5)
    s.complete(rid, 0.6)
    waiting = s.submit(InferenceRequest(prompt_tokens=100), now=0.7)
    before = s.stats()
    for call in (lambda: s.step(now), lambda: s.complete(rid, now), lambda: s.set_pressure("a", 0.1, now=now)):
        with pytest.raises(InvalidArgumentError, match=r"within \+-1e15, got .*e\+?-?\d+"):
            call()
    after = s.stats()
    assert after["now"] == before["now"] and after["queued"] == 1
    assert all(math.isfinite(d["util_avg"]) for d in after["devices"])
    res = s.step(1.0)
    assert res.dispatched == [waiting]


def test_a_now_of_1e15_is_still_accepted() -> None:
    s = Scheduler(["a"])
    rid = s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    assert s.step(1e15).dispatched == [rid]
    s.complete(rid, 1e15)
    assert all(math.isfinite(d["util_avg"]) for d in s.stats()["devices"])


@pytest.mark.parametrize("dep", [2**64, 2**70, 2**64 + 5])
def test_a_dependency_id_beyond_uint64_is_a_dependency_error(dep: int) -> None:
    # Found by fuzzing: InferenceRequest accepts any int >= 1 in depends_on; submit then
    # let numpy raise a bare OverflowError ("Python int too large to convert to C long")
    # instead of capsched's error naming the id.
    s = Scheduler(["a"])
    req = InferenceRequest(prompt_tokens=5, depends_on=(dep,))
    with pytest.raises(DependencyError, match=str(dep)):
        s.submit(req, now=0.0)
    assert req.id is None and s.stats()["accepted"] == 0
    assert s.submit(InferenceRequest(prompt_tokens=5), now=0.0) == 1  # no id used up by the refusal


def test_a_request_larger_than_every_kv_budget_does_not_block_the_queue() -> None:
    # Found by fuzzing: prompt + max_new tokens above every device's kv_tokens is never a
    # candidate anywhere; placement stopped its group at it ("nothing of its group
    # overtakes it"), so it and every request queued behind it waited forever. Now
    # submit refuses it, naming the tokens and the largest budget, and accepts nothing.
    s = Scheduler([Device("big", kv_tokens=5000)], policy="fcfs")
    too_big = InferenceRequest(prompt_tokens=10_000, priority=0.9)
    with pytest.raises(InvalidRequestError, match=r"needs 10256 KV tokens .* largest kv_tokens is 5000"):
        s.submit(too_big, now=0.0)
    assert s.stats()["accepted"] == 0
    small = s.submit(InferenceRequest(prompt_tokens=10), now=0.1)
    dispatched = [rid for t in range(1, 20) for rid in s.step(float(t)).dispatched]
    assert small in dispatched


def test_a_dependency_failure_pending_at_checkpoint_is_reported_after_restore(tmp_path: Path) -> None:
    # Found by fuzzing: cancel(a) fails b (which depends on a) at once in stats() and
    # status(), but StepResult.failed reports it at the next step. Checkpoint + restore
    # in between: the restored scheduler's steps never report b, so a server that learns
    # of dependency failures from steps never hears that b ended.
    s = Scheduler(["a"], clock=lambda: 0.0)
    a = s.submit(InferenceRequest(prompt_tokens=10, priority=0.1), now=0.0)
    b = s.submit(InferenceRequest(prompt_tokens=10, depends_on=(a,)), now=0.0)
    assert s.cancel(a)
    assert s.status(b) == "failed"
    path = os.fspath(tmp_path / "ckpt.json")
    s.checkpoint(path)
    r = Scheduler.restore(path, clock=lambda: 0.0)
    assert r.status(b) == "failed"
    reported = [rid for t in range(1, 4) for rid, _ in r.step(float(t)).failed]
    assert reported == [b]
