"""Defects found by an adversarial review of the public API (2026-11-28), each pinned.

The bad-input rows of the same review (fields set after construction, huge numbers,
2-d id arrays, re-signed checkpoints that restored into a stalled scheduler) are in
``test_bad_input_catalogue.py``; these are the ones that need threads, journals or
several calls.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

capsched = pytest.importorskip("capsched")
from capsched import Config, Device, InferenceRequest, Scheduler  # noqa: E402
from capsched.errors import (  # noqa: E402
    CapschedError,
    InvalidArgumentError,
    InvalidRequestError,
    QueueFullError,
    RequestTypeError,
)


def _racing_journaled_submit(s: Scheduler, other) -> list[BaseException]:
    """Submits from one thread, held after the core has taken the call and before its
    journal line is written; runs ``other`` in a second thread meanwhile, checks that it
    waits for the line, then lets both finish. Returns the submitting thread's errors."""
    journal = s._core.journal
    write = journal.write
    in_window, go = threading.Event(), threading.Event()

    def slow_write(body: str) -> None:  # the core has the call; its line is not written yet
        in_window.set()
        go.wait(10)
        write(body)

    journal.write = slow_write
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
        except BaseException as exc:  # noqa: BLE001 - returned
            errors.append(exc)

    submitter = threading.Thread(target=submit)
    submitter.start()
    assert in_window.wait(10)
    waiter = threading.Thread(target=other)
    waiter.start()
    time.sleep(0.2)
    waited = waiter.is_alive()
    go.set()
    submitter.join(10)
    waiter.join(10)
    journal.write = write
    assert waited, f"{other} did not wait for the journaled call"
    return errors


def test_a_checkpoint_waits_for_a_journaled_call_in_progress(tmp_path):
    """A journaled call changes the core, then writes its line (raising the journal's
    seq). A checkpoint taken between the two recorded the call in its state but not in
    its seq, and a restore replayed it a second time (a phantom request)."""
    s = Scheduler(["a"])
    s.open_journal(tmp_path / "j.log", sync=False)
    s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    assert not _racing_journaled_submit(s, lambda: s.checkpoint(tmp_path / "c.ckpt"))
    s.close_journal()
    assert s.stats()["accepted"] == 2
    restored = Scheduler.restore(tmp_path / "c.ckpt", journal=tmp_path / "j.log")
    restored.close_journal()
    assert restored.stats()["accepted"] == 2
    assert restored.stats()["conservation_ok"]


def test_checkpoints_under_concurrent_journaled_calls_all_restore(tmp_path):
    """Many checkpoints while two threads submit and complete through a journal: each
    restores (with the journal as it was then) to a state with as many requests as the
    live scheduler had accepted by that journal line; none replays a call twice."""
    s = Scheduler(["a", "b"], max_batch_size=4)
    s.open_journal(tmp_path / "j.log", sync=False)
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            while not stop.is_set():
                s.submit(InferenceRequest(prompt_tokens=3), now=1.0)
                out = s.step(now=1.0)
                for b in out.batches:
                    s.complete_many(b.request_ids, now=1.0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    taken = []
    try:
        for k in range(15):
            path = tmp_path / f"c{k}.ckpt"
            s.checkpoint(path)
            taken.append((path, (tmp_path / "j.log").read_bytes()))
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    s.close_journal()
    assert not errors, errors
    for k, (path, journal) in enumerate(taken):
        copy = tmp_path / f"j{k}.log"
        copy.write_bytes(journal)
        r = Scheduler.restore(path, journal=copy)
        r.close_journal()
        st = r.stats()
        # (whole lines only: the copy was read while the threads wrote, so its last line
        # may be torn, and restore leaves a torn last line out)
        lines = [json.loads(line.rsplit("\t", 1)[0]) for line in journal.decode().split("\n")[:-1] if line]
        submits = sum(1 for e in lines if e["op"] == "submit")
        assert st["accepted"] == submits, (k, st["accepted"], submits)
        assert st["conservation_ok"] and r.check_invariants()


def test_rejected_survives_a_checkpoint_and_a_journal(tmp_path):
    s = Scheduler(["a"], config=Config(max_queued=1))
    s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    with pytest.raises(QueueFullError):
        s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    s.checkpoint(tmp_path / "c.ckpt")
    assert Scheduler.restore(tmp_path / "c.ckpt").stats()["rejected"] == 1
    s.open_journal(tmp_path / "j.log")
    with pytest.raises(QueueFullError):
        s.submit_many([1, 2, 3], now=0.0)
    assert s.stats()["rejected"] == 4
    s.close_journal()
    r = Scheduler.restore(tmp_path / "c.ckpt", journal=tmp_path / "j.log")
    r.close_journal()
    assert r.stats()["rejected"] == 4


def test_a_refused_submit_numbers_no_tenant_name(tmp_path):
    """A bad field set after construction is refused before the tenant's name is
    numbered (and journaled): a later good submit and a restore see the same table."""
    s = Scheduler(["a"])
    s.checkpoint(tmp_path / "c.ckpt")
    s.open_journal(tmp_path / "j.log")
    for _ in range(2):
        r = InferenceRequest(prompt_tokens=1, tenant="alice")
        r.batchable = 1
        with pytest.raises(RequestTypeError, match="batchable"):
            s.submit(r, now=0.0)
    assert "alice" not in s._tenants
    s.submit(InferenceRequest(prompt_tokens=1, tenant="bob"), now=0.0)
    s.close_journal()
    restored = Scheduler.restore(tmp_path / "c.ckpt", journal=tmp_path / "j.log")
    restored.close_journal()
    assert restored._tenants == s._tenants
    assert restored.stats()["accepted"] == 1


def test_fields_set_after_construction_are_used_as_the_constructor_converts_them():
    s = Scheduler(["a"])
    first = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    r = InferenceRequest(prompt_tokens=1)
    r.depends_on = np.array([first], dtype=np.uint64)  # an iterable of ids, as documented
    r.priority = np.float32(0.25)
    rid = s.submit(r, now=0.0)
    assert s.status(rid) == "waiting"


def test_depends_on_a_numpy_array_at_construction():
    s = Scheduler(["a"])
    a = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    b = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    r = InferenceRequest(prompt_tokens=1, depends_on=np.array([a, b]))
    assert r.depends_on == (a, b)
    assert s.status(s.submit(r, now=0.0)) == "waiting"
    with pytest.raises(RequestTypeError, match="depends_on"):
        InferenceRequest(prompt_tokens=1, depends_on=np.array([1.5]))


def test_a_tokenizer_count_beyond_64_bits_is_a_capsched_error():
    s = Scheduler(["a"], config=Config(tokenizer=lambda text: 2**70))
    with pytest.raises(InvalidRequestError, match="1180591620717411303424"):
        s.submit(InferenceRequest("hi"), now=0.0)
    assert s.stats()["accepted"] == 0


@pytest.mark.parametrize("call", [
    lambda s: s.step(2**2000),
    lambda s: s.submit(InferenceRequest(prompt_tokens=1), now=2**1100),
    lambda s: s.step_many(2**1100),
    lambda s: s.set_pressure("a", 0.5, now=2**1100),
    lambda s: s.estimate_service("a", 2**1100, 1),
])
def test_ints_beyond_any_float_are_capsched_errors(call):
    s = Scheduler(["a"])
    with pytest.raises(InvalidArgumentError, match="within the range of a float"):
        call(s)


def test_fail_takes_an_error_text_with_lone_surrogates():
    """A message decoded with errors='surrogateescape' cannot cross to the core as UTF-8:
    it is kept, escaped."""
    s = Scheduler(["a"], config=Config(max_retries=0))
    rid = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    s.step(now=0.0)
    assert s.fail(rid, now=1.0, error="bad byte \udcff") is False
    assert s.status(rid) == "failed"


def test_class_estimate_refuses_a_name_that_is_not_a_str():
    s = Scheduler(["a"])
    with pytest.raises(InvalidArgumentError, match=r"request_class.*\[1\]"):
        s.class_estimate([1])  # type: ignore[arg-type]
    assert s.class_estimate("never seen") is None


def test_a_clock_ratio_that_underflows_is_refused_at_construction():
    with pytest.raises(CapschedError, match="underflows to 0"):
        Scheduler([Device("a", max_clock_mhz=1e300, clock_mhz=1e-300)])


def test_close_journal_waits_for_a_journaled_call_in_progress(tmp_path):
    """Closing the journal while another thread's journaled call has changed the core
    but not yet written its line made that call fail (a closed file) after its change,
    and lost the line."""
    s = Scheduler(["a"])
    s.checkpoint(tmp_path / "c.ckpt")
    s.open_journal(tmp_path / "j.log", sync=False)
    errors = _racing_journaled_submit(s, s.close_journal)
    assert not errors, errors
    r = Scheduler.restore(tmp_path / "c.ckpt", journal=tmp_path / "j.log")
    r.close_journal()
    assert r.stats()["accepted"] == s.stats()["accepted"] == 1


def test_a_capacity_ratio_that_underflows_is_refused():
    """Capacities are normalised to the largest; one whose share underflows to 0 left a
    device with no capacity at all."""
    with pytest.raises(CapschedError, match="device 1: capacity 1e-308 is too small .*underflows to 0"):
        Scheduler([Device("a", capacity=1e308), Device("b", capacity=1e-308)])
    Scheduler([Device("a", capacity=1e6), Device("b", capacity=1e-6)])  # a wide but usable range
