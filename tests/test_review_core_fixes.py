"""Defects found by the 2026-11-29 review of the core API, each with the test that
failed before its fix."""

from __future__ import annotations

import pytest

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import InvalidArgumentError, InvalidRequestError, QueueFullError
from _checkpoint_forge import edit_rows, outcomes, set_outcomes


def test_a_request_no_device_is_open_to_is_refused_naming_its_tenant() -> None:
    # Every device is pinned to other tenants: carol's request used to be accepted and
    # stay queued for ever (and hold a max_queued slot).
    s = Scheduler([Device("d1", tenants=("alice",)), Device("d2", tenants=("bob",))], clock=lambda: 0.0)
    with pytest.raises(InvalidRequestError, match="no device is open to tenant 'carol'"):
        s.submit(InferenceRequest(prompt_tokens=10, tenant="carol"), now=0.0)
    assert s.stats()["accepted"] == 0
    ok = s.submit(InferenceRequest(prompt_tokens=10, tenant="alice"), now=0.0)
    assert [b.request_ids for b in s.step(now=0.0).batches] == [[ok]]


def test_a_request_whose_pool_has_no_device_open_to_its_tenant_is_refused() -> None:
    s = Scheduler([Device("d1", pool="x", tenants=("bob",)), "shared"], clock=lambda: 0.0)
    with pytest.raises(InvalidRequestError, match="no device is open to tenant 'carol' in the request's pool"):
        s.submit(InferenceRequest(prompt_tokens=10, tenant="carol", pool="x"), now=0.0)
    s.submit(InferenceRequest(prompt_tokens=10, tenant="bob", pool="x"), now=0.0)  # bob's is fine
    s.submit(InferenceRequest(prompt_tokens=10, tenant="carol"), now=0.0)  # and carol's without the pool
    assert s.stats()["accepted"] == 2


def test_submit_many_names_tenant_none_when_refused() -> None:
    pinned = Scheduler([Device("d1", tenants=("alice",))], clock=lambda: 0.0)
    with pytest.raises(InvalidRequestError, match="no device is open to tenant None"):
        pinned.submit_many([1, 2, 3], now=0.0)
    assert pinned.stats()["accepted"] == 0
    s = Scheduler(["g"], clock=lambda: 0.0, config=Config(max_queued_per_tenant=3))
    with pytest.raises(QueueFullError, match="for tenant None:"):
        s.submit_many([1] * 5, now=0.0)


def _forge(path, edit) -> None:
    """Edit a checkpoint's payload and sign it again (the checksum is not a secret)."""
    import hashlib
    import json

    from capsched.checkpoint import _canonical

    with open(path) as f:
        doc = json.load(f)
    edit(doc["payload"])
    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    with open(path, "w") as f:
        json.dump(doc, f)


@pytest.mark.parametrize("tenant", [1, 2**31, 2**32 - 1])
@pytest.mark.parametrize("in_flight", [False, True])
def test_restore_refuses_a_request_naming_a_tenant_beyond_the_table(tmp_path, tenant: int, in_flight: bool) -> None:
    # A forged tenant index made the core size its per-tenant arrays by it: a bare
    # MemoryError, or the process killed for memory.
    from capsched.errors import CheckpointError

    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    if in_flight:
        s.step(now=1.0)
    path = str(tmp_path / "t.ckpt")
    s.checkpoint(path)

    def edit(p):
        edit_rows(p["core"], lambda rows: rows[0].update(tenant=tenant))

    _forge(path, edit)
    with pytest.raises(CheckpointError, match=f"tenant number {tenant}; the tenant table has 1"):
        Scheduler.restore(path, clock=lambda: 0.0)


def test_the_core_bounds_tenant_indexes() -> None:
    from capsched import _core
    from capsched.errors import InvalidArgumentError

    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    with pytest.raises(InvalidArgumentError, match="tenant 65536 is beyond the limit of 65536 tenants"):
        s._core.set_tenant_weight(65536, 1.0)
    assert _core is not None


def _fail_writes(s: Scheduler) -> None:
    def broken(body: str) -> None:
        raise OSError(28, "No space left on device")

    s._core.journal.write = broken  # type: ignore[union-attr]


def test_a_failed_journal_write_says_the_change_was_made_and_refuses_later_changes(tmp_path) -> None:
    # It used to raise a bare OSError after the change was made (the caller could not
    # tell), and the next calls did the same, accepting requests each time.
    from capsched import JournalError

    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    s.open_journal(str(tmp_path / "j.log"))
    first = s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    _fail_writes(s)
    with pytest.raises(JournalError, match="the change was made but is not durable") as info:
        s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    made = info.value.result
    assert s.status(made) == "queued" and s.stats()["accepted"] == 2
    with pytest.raises(JournalError, match="nothing was changed"):
        s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    with pytest.raises(JournalError, match="nothing was changed"):
        s.step(now=1.0)
    with pytest.raises(JournalError, match="nothing was changed"):
        s.submit_many([5, 6], now=0.0)
    assert s.stats()["accepted"] == 2 and s.status(first) == "queued"
    s.close_journal()  # then it works again, unjournaled, and a checkpoint keeps it all
    third = s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    s.checkpoint(str(tmp_path / "c.ckpt"))
    back = Scheduler.restore(str(tmp_path / "c.ckpt"), clock=lambda: 0.0)
    assert [back.status(i) for i in (first, made, third)] == ["queued"] * 3


def test_a_journal_whose_first_line_cannot_be_written_is_not_left_open() -> None:
    # open_journal('/dev/full') raised OSError but left the journal installed: every
    # later submit raised OSError too, after accepting its request.
    from capsched.errors import CheckpointError

    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    with pytest.raises(CheckpointError, match="cannot write journal '/dev/full'"):
        s.open_journal("/dev/full")
    rid = s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    assert s.status(rid) == "queued" and s.stats()["accepted"] == 1


def test_submit_many_refuses_odd_arrays_with_a_capsched_error() -> None:
    from capsched.errors import RequestTypeError

    s = Scheduler(["g"], clock=lambda: 0.0)
    # a 2-d timeout holding None was flattened and accepted
    with pytest.raises(InvalidRequestError, match="timeout must be a scalar or a 1-d array, got shape"):
        s.submit_many([1, 2], timeout=[[1.0, None]], now=0.0)
    # ragged input was numpy's bare ValueError
    with pytest.raises(InvalidRequestError, match="prompt_tokens must be a scalar or a 1-d array"):
        s.submit_many([[1], [2, 3]], now=0.0)
    # priority=None said "priority has 1 values but prompt_tokens has 3"
    with pytest.raises(RequestTypeError, match="priority must be numbers, got None"):
        s.submit_many([1, 2, 3], priority=None, now=0.0)
    assert s.stats()["accepted"] == 0
    ids = s.submit_many([1, 2], timeout=[1.0, None], now=0.0)  # None in a 1-d timeout is none
    assert len(ids) == 2



def test_integers_too_long_to_print_are_named_not_a_crash() -> None:
    # Python refuses to print an integer of more than 4,300 digits: the error message
    # itself raised ValueError.
    from capsched.errors import InvalidArgumentError, UnknownRequestError

    s = Scheduler(["g"], clock=lambda: 0.0)
    with pytest.raises(InvalidArgumentError, match="an integer of about 5,001 digits"):
        s.step(now=10**5000)
    with pytest.raises(UnknownRequestError, match="an integer of about 5,001 digits"):
        s.status(10**5000)


@pytest.mark.parametrize("record", [0, 2**64 - 1])
def test_restore_refuses_an_outcome_record_that_contradicts_the_counters(tmp_path, record: int) -> None:
    # Forged all "completed" (or all "cancelled"), it restored: failed requests reported
    # completed, and a new request could depend on one that had failed.
    from capsched.errors import CheckpointError

    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    ids = [s.submit(InferenceRequest(prompt_tokens=10), now=0.0) for _ in range(5)]
    batch = s.step(now=0.0).batches[0].request_ids
    s.complete(batch[0], now=0.1)
    s.fail(batch[1], now=0.1, retryable=False)
    s.cancel(ids[-1])
    path = str(tmp_path / "t.ckpt")
    s.checkpoint(path)
    back = Scheduler.restore(path, clock=lambda: 0.0)  # as written, it restores
    assert [back.status(i) for i in (batch[0], batch[1], ids[-1])] == ["completed", "failed", "cancelled"]

    def edit(p):
        set_outcomes(p["core"], [record] * len(outcomes(p["core"])))

    _forge(path, edit)
    with pytest.raises(CheckpointError, match="outcome record does not match its counters"):
        Scheduler.restore(path, clock=lambda: 0.0)


def test_depends_on_refuses_a_request_object_another_scheduler_accepted() -> None:
    # It was taken by its id, which in this scheduler names an unrelated request: the
    # child waited on that one and ran once it completed.
    from capsched.errors import DependencyError

    s1, s2 = Scheduler(["g"], clock=lambda: 0.0), Scheduler(["g"], clock=lambda: 0.0)
    parent = InferenceRequest(prompt_tokens=10)
    s1.submit(parent, now=0.0)
    s2.submit(InferenceRequest(prompt_tokens=10), now=0.0)  # id 1 in s2 too
    with pytest.raises(DependencyError, match="another Scheduler object accepted"):
        s2.submit(InferenceRequest(prompt_tokens=10, depends_on=[parent]), now=0.0)
    assert s2.stats()["accepted"] == 1
    child = s1.submit(InferenceRequest(prompt_tokens=10, depends_on=[parent]), now=0.0)  # its own: fine
    assert s1.status(child) == "waiting"


@pytest.mark.parametrize("bad", [5, "", "a\0b", b"j.log"])
def test_journal_paths_are_file_names(tmp_path, bad) -> None:
    # An int was taken for a file descriptor (restore) or gave a bare TypeError (open_journal).
    from capsched.errors import CheckpointError

    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    with pytest.raises(CheckpointError, match="journal path must"):
        s.open_journal(bad)
    s.checkpoint(str(tmp_path / "c.ckpt"))
    with pytest.raises(CheckpointError, match="journal path must"):
        Scheduler.restore(str(tmp_path / "c.ckpt"), journal=bad)
    s.submit(InferenceRequest(prompt_tokens=10), now=0.0)  # still works, unjournaled


def test_simulate_refuses_an_empty_capsched_policy() -> None:
    # After --capsched-policy became optional (None: edf), an empty one was taken as edf.
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "capsched", "simulate", "--no-progress", "--requests", "50",
                          "--policies", "capsched", "--load", "0.5", "--capsched-policy", ""],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "capsched_policy" in run.stderr, run.stderr


@pytest.mark.parametrize("arrays", [False, True])
def test_a_step_whose_journal_line_fails_hands_back_its_batches(tmp_path, arrays: bool) -> None:
    # JournalError.result used to be the core's raw tuple for step(): the batches it had
    # dispatched (now in flight) were there only as offsets into an id list.
    from capsched import JournalError, StepArrays, StepResult

    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    s.open_journal(str(tmp_path / "j.log"))
    ids = [s.submit(InferenceRequest(prompt_tokens=10), now=0.0) for _ in range(3)]
    _fail_writes(s)
    with pytest.raises(JournalError, match="the change was made but is not durable") as info:
        s.step_many(now=1.0) if arrays else s.step(now=1.0)
    got = info.value.result
    if arrays:
        assert isinstance(got, StepArrays) and got.devices == ["gpu0"]
        dispatched = got.request_ids.tolist()
    else:
        assert isinstance(got, StepResult) and [b.device for b in got.batches] == ["gpu0"]
        dispatched = got.dispatched
    assert sorted(dispatched) == ids and {s.status(i) for i in ids} == {"in_flight"}
    s.close_journal()


def test_close_journal_racing_other_threads_loses_no_change(tmp_path) -> None:
    # A call that had fetched the journal wrapper before close_journal() ran after the
    # file was closed: it changed the core, then died on a raw ValueError (closed file),
    # so a step's batch was in flight with no caller told, and the device stayed full.
    import threading

    s = Scheduler(["gpu0"], max_batch_size=4)
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: set[int] = set()
    lock = threading.Lock()

    def journaler() -> None:
        while not stop.is_set():
            s.open_journal(str(tmp_path / "j.log"), sync=False)
            s.close_journal()

    def worker() -> None:
        try:
            while not stop.is_set():
                s.submit(InferenceRequest(prompt_tokens=5))
                for b in s.step().batches:
                    with lock:
                        seen.update(b.request_ids)
                    for rid in b.request_ids:
                        s.complete(rid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=journaler)] + [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    stop.wait(1.0)
    stop.set()
    for t in threads:
        t.join(30)
    assert errors == []
    st = s.stats()
    assert st["in_flight"] == 0 and st["accepted"] > 0
    assert st["completed"] == len(seen) and s.check_invariants()


def test_two_threads_opening_a_journal_at_once_cannot_both_succeed(tmp_path) -> None:
    import threading

    for trial in range(40):
        s = Scheduler(["gpu0"], clock=lambda: 0.0)
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def opener(k: int) -> None:
            barrier.wait()
            try:
                s.open_journal(str(tmp_path / f"j{trial}-{k}.log"))
                outcomes.append("opened")
            except InvalidArgumentError as exc:
                outcomes.append(str(exc))

        threads = [threading.Thread(target=opener, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(outcomes) == ["a journal is already open; close_journal() first", "opened"]
        s.close_journal()


@pytest.mark.parametrize("sync", [float("nan"), "no", [], {}, 1, None])
def test_journal_sync_must_be_a_bool(tmp_path, sync) -> None:
    # 'no' turned syncing on and [] off; a numpy array raised numpy's own ValueError.
    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    with pytest.raises(InvalidArgumentError, match="sync must be a bool, got"):
        s.open_journal(str(tmp_path / "j.log"), sync=sync)
    assert not (tmp_path / "j.log").exists()
    s.checkpoint(str(tmp_path / "c.ckpt"))
    before = (tmp_path / "c.ckpt").read_bytes()
    with pytest.raises(InvalidArgumentError, match="sync must be a bool, got"):
        Scheduler.restore(str(tmp_path / "c.ckpt"), journal=str(tmp_path / "j.log"), sync=sync)
    assert (tmp_path / "c.ckpt").read_bytes() == before and not (tmp_path / "j.log").exists()


def test_depends_on_a_0d_array_is_a_request_type_error() -> None:
    import numpy as np

    from capsched.errors import RequestTypeError

    with pytest.raises(RequestTypeError, match=r"depends_on must be an iterable of request ids, got array\(3\)"):
        InferenceRequest(prompt_tokens=5, depends_on=np.array(3))


def test_a_timeout_below_the_clocks_resolution_is_refused() -> None:
    # At now = 1e15, now + 1e-9 == now: the request was accepted with its deadline at now
    # and expired at the next step (a deadline-class one got a misleading AdmissionError).
    s = Scheduler(["gpu0"], clock=lambda: 0.0)
    for timeout in (1e-9, 5e-324):
        with pytest.raises(InvalidRequestError, match="is too small to put the deadline after now"):
            s.submit(InferenceRequest(prompt_tokens=5, timeout=timeout), now=1e15)
        with pytest.raises(InvalidRequestError, match="is too small to put the deadline after now"):
            s.submit(InferenceRequest(prompt_tokens=5, timeout=timeout, sched_class="deadline"), now=1e15)
    assert s.stats()["accepted"] == 0
    assert s.status(s.submit(InferenceRequest(prompt_tokens=5, timeout=1.0), now=1e15)) == "queued"
