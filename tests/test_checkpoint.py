"""Checkpoint and restore (capsched.checkpoint, docs/operations.md)."""

from __future__ import annotations

import hashlib
import json
import os
import random

import pytest

from capsched import CheckpointError, Config, Device, InferenceRequest, Scheduler
from capsched.checkpoint import VERSION, _canonical, load_checkpoint
from _checkpoint_forge import edit_rows, request_rows


def busy_scheduler(seed: int = 0) -> Scheduler:
    """A scheduler with a bit of everything: tenants, classes, deadlines, dependencies,
    deadline-class reservations, retries backing off, clock and pressure changes."""
    rnd = random.Random(seed)
    s = Scheduler(
        [Device("a", 4.0, kv_tokens=50_000, max_clock_mhz=1000.0), Device("b", 2.0),
         Device("s", 1.0, tenants=("t",))],
        policy="weighted", max_batch_size=3,
        config=Config(retry_base=0.5, retry_seed=3, breaker_failures=2),
    )
    ids = []
    t = 0.0
    for i in range(40):
        t += rnd.random() * 0.1
        deps = tuple(rnd.sample(ids, 2)) if len(ids) > 5 and rnd.random() < 0.2 else ()
        live_deps = tuple(d for d in deps if s.status(d) in ("waiting", "queued", "in_flight", "retrying", "completed"))
        kind = rnd.random()
        req = InferenceRequest(
            prompt_tokens=rnd.randint(1, 500), max_new_tokens=rnd.randint(1, 300),
            priority=rnd.random(), timeout=rnd.choice([None, 5.0, 50.0]),
            tenant=rnd.choice([None, None, "t"]), request_class=rnd.choice([None, "chat"]),
            depends_on=live_deps if kind > 0.1 else (),
            sched_class="deadline" if kind < 0.05 else "normal",
        ) if kind >= 0.05 else InferenceRequest(prompt_tokens=10, timeout=20.0, sched_class="deadline")
        ids.append(s.submit(req, now=t))
        if i % 5 == 4:
            r = s.step(now=t)
            for b in r.batches:
                for rid in b.request_ids:
                    x = rnd.random()
                    if x < 0.5:
                        s.complete(rid, now=t + 0.05, output_tokens=rnd.randint(0, 100))
                    elif x < 0.7:
                        s.fail(rid, now=t + 0.05, retryable=True, error="flaky")
        if i == 20:
            s.set_clock("a", 700.0, now=t)
            s.set_pressure("b", 0.2, now=t)
    return s


def test_round_trip_keeps_the_whole_state(tmp_path) -> None:
    s = busy_scheduler()
    path = tmp_path / "state.json"
    s.checkpoint(path)
    # The file holds the exact state, in-flight requests and batches included ...
    exact = load_checkpoint(path)
    assert exact._core.export_state() == s._core.export_state() and exact.check_invariants()
    # ... and restore queues what was in flight again (the server lost it).
    r = Scheduler.restore(path)
    assert r.check_invariants() and r.stats()["conservation_ok"]
    st, rt = s.stats(), r.stats()
    assert rt["queued"] == st["queued"] + st["in_flight"] and rt["in_flight"] == 0
    for k in ("accepted", "completed", "failed", "expired", "cancelled", "retried", "waiting", "retrying"):
        assert rt[k] == st[k], k
    for i in range(1, st["accepted"] + 1):
        want = s.status(i)
        assert r.status(i) == ("queued" if want == "in_flight" else want)
    assert [d["name"] for d in rt["devices"]] == ["a", "b", "s"]
    assert rt["devices"][0]["clock_scale"] == 0.7 and rt["devices"][1]["pressure"] == 0.2


def test_a_restored_scheduler_continues_exactly_like_the_original(tmp_path) -> None:
    s = busy_scheduler(seed=1)
    # Finish what is in flight so that both sides hold the same live requests.
    for i in range(1, s.stats()["accepted"] + 1):
        if s.status(i) == "in_flight":
            s.complete(i, now=10.0)
    s.checkpoint(tmp_path / "c.json")
    r = Scheduler.restore(tmp_path / "c.json")
    rnd = random.Random(9)
    t = 10.0
    for step in range(30):
        t += 0.37
        out = []
        for sched in (s, r):
            res = sched.step(now=t)
            out.append((res.dispatched, res.expired, res.failed, res.next_step_at))
        assert out[0] == out[1], f"step {step} differs"
        for rid in out[0][0]:
            x = rnd.random()
            for sched in (s, r):
                if x < 0.7:
                    sched.complete(rid, now=t)
                else:
                    sched.fail(rid, now=t, retryable=True, error="e")
        req = dict(prompt_tokens=rnd.randint(1, 100), timeout=rnd.choice([None, 3.0]), tenant=rnd.choice([None, "t"]))
        assert s.submit(InferenceRequest(**req), now=t) == r.submit(InferenceRequest(**req), now=t)
    assert s._core.export_state() == r._core.export_state()


def _rewrite(path, mutate) -> None:
    doc = json.loads(path.read_text())
    mutate(doc)
    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "not valid JSON"),
        (lambda p: p.write_bytes(p.read_bytes().replace(b'"policy":"weighted"', b'"policy":"fcfs"')), "checksum"),
        (lambda p: p.write_text("[]"), "not a capsched checkpoint"),
        (lambda p: _rewrite(p, lambda d: d.update(version=VERSION + 1)), "newer capsched"),
        (lambda p: _rewrite(p, lambda d: edit_rows(d["payload"]["core"], lambda rows: next(q for q in rows if q["batch"] == 2**32 - 1).update(waits_on=[10**9], state=1))),
         "waits on a request not live"),
        (lambda p: _rewrite(p, lambda d: d["payload"]["core"].update(counters=[0])), "counters"),
        (lambda p: _rewrite(p, lambda d: d["payload"].pop("core")), "malformed"),
        (lambda p: _rewrite(p, lambda d: d["payload"]["devices"].pop()), "devices|device"),
        (lambda p: p.unlink(), "cannot read"),
    ],
    ids=["truncated", "tampered", "not-ours", "future-version", "dangling-dependency", "counters",
         "missing-core", "device-count", "missing-file"],
)
def test_a_bad_checkpoint_is_refused_with_a_clear_error(tmp_path, damage, message) -> None:
    path = tmp_path / "state.json"
    busy_scheduler().checkpoint(path)
    damage(path)
    with pytest.raises(CheckpointError, match=message):
        Scheduler.restore(path)


def test_a_failed_write_leaves_the_previous_checkpoint_usable(tmp_path, monkeypatch) -> None:
    path = tmp_path / "state.json"
    s = busy_scheduler()
    s.checkpoint(path)
    before = path.read_bytes()
    s.submit(InferenceRequest(prompt_tokens=5), now=100.0)

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(CheckpointError, match="disk full"):
        s.checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name != "state.json"]  # no temp file left
    assert Scheduler.restore(path).stats()["accepted"] == s.stats()["accepted"] - 1


def test_restore_keeps_ids_outcomes_and_dependencies(tmp_path) -> None:
    s = Scheduler(["g"], policy="fcfs", max_batch_size=1, config=Config(retry_base=0.0))
    a = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    b = s.submit(InferenceRequest(prompt_tokens=5, depends_on=(a,)), now=0.0)
    c = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    s.cancel(c)
    assert s.step(now=0.0).dispatched == [a]
    s.checkpoint(tmp_path / "c.json")
    r = Scheduler.restore(tmp_path / "c.json")
    assert (r.status(a), r.status(b), r.status(c)) == ("queued", "waiting", "cancelled")
    assert r.step(now=1.0).dispatched == [a]  # run again: it was in flight
    r.complete(a, now=2.0)
    assert r.step(now=2.0).dispatched == [b]  # its dependent was released
    assert r.submit(InferenceRequest(prompt_tokens=1), now=3.0) == c + 1  # ids continue


def test_journal_recovers_everything_accepted_since_the_checkpoint(tmp_path) -> None:
    ck, jn = tmp_path / "state.json", tmp_path / "journal.log"
    s = busy_scheduler(seed=2)
    s.checkpoint(ck)
    s.open_journal(jn)
    rnd = random.Random(4)
    t = 20.0
    for i in range(25):
        t += 0.2
        rid = s.submit(InferenceRequest(prompt_tokens=rnd.randint(1, 50), tenant=rnd.choice([None, "t", "new"]),
                                        request_class=rnd.choice([None, "chat", "batch"])), now=t)
        if i % 3 == 0:
            res = s.step(now=t) if i % 2 else s.step(now=t, free_slots={"a": 2, "b": 1})
            for x in res.dispatched[:2]:
                s.complete(x, now=t)
        if i == 10:
            s.set_clock("a", 500.0, now=t)
            s.cancel(rid)
        if i == 12:
            s.submit_many([5, 6, 7], now=t)
    # A crash: the journal is left as it is, with a torn half line at its end.
    s.close_journal()  # (only closes the file; its contents are what the crash left)
    with open(jn, "a", encoding="utf-8") as fh:
        fh.write('{"seq": 99999, "op": "sub')
    s._core.requeue_in_flight(t)  # what recovery does with what was in flight
    want = s._core.export_state()
    r = Scheduler.restore(ck, journal=jn)
    got = r._core.export_state()
    assert got == want
    assert r.check_invariants() and r.stats()["conservation_ok"]
    assert r.stats()["devices"][0]["clock_scale"] == 0.5
    # The journal goes on, and a second recovery needs only the fresh checkpoint + it.
    r.submit(InferenceRequest(prompt_tokens=3, tenant="new"), now=t + 1)
    want2 = r._core.export_state()
    r.close_journal()
    r2 = Scheduler.restore(ck, journal=jn)
    assert r2._core.export_state() == want2
    r2.close_journal()


def test_a_damaged_journal_line_is_refused(tmp_path) -> None:
    ck, jn = tmp_path / "state.json", tmp_path / "journal.log"
    s = Scheduler(["g"])
    s.checkpoint(ck)
    s.open_journal(jn, sync=False)
    for _ in range(3):
        s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    lines = jn.read_text().split("\n")
    lines[1] = lines[1].replace('"op"', '"oq"')
    s.close_journal()
    jn.write_text("\n".join(lines))
    with pytest.raises(CheckpointError, match="line 2 is damaged"):
        Scheduler.restore(ck, journal=jn)


_BUSY_CHILD = r"""
import sys, random
from capsched import Scheduler, InferenceRequest, Config
ck, jn = sys.argv[1], sys.argv[2]
s = Scheduler(["a", "b"], policy="weighted", max_batch_size=4, config=Config(retry_base=0.0))
s.checkpoint(ck)
s.open_journal(jn)  # fsync per accepted change
rnd = random.Random(1)
t = 0.0
print("ready", flush=True)
while True:
    t += 0.001
    rid = s.submit(InferenceRequest(prompt_tokens=rnd.randint(1, 100)), now=t)
    print(rid, flush=True)  # after submit returned: accepted (and journaled)
    if rid % 7 == 0:
        r = s.step(now=t)
        for x in r.dispatched[::2]:
            s.complete(x, now=t)
        for x in r.dispatched[1::2]:
            s.fail(x, now=t, retryable=True)
"""


def test_journal_survives_sigkill_in_a_busy_run(tmp_path) -> None:
    import signal
    import subprocess
    import sys
    import time

    ck, jn = tmp_path / "state.json", tmp_path / "journal.log"
    script = tmp_path / "busy.py"
    script.write_text(_BUSY_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(ck), str(jn)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        accepted = []
        deadline = time.monotonic() + 30
        while len(accepted) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"the child stopped early (exit code {proc.poll()})"
            accepted.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the run, no clean-up
        proc.wait(timeout=30)
        accepted += [int(x) for x in proc.stdout.read().split()]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert len(accepted) >= 300
    r = Scheduler.restore(ck, journal=jn)
    st = r.stats()
    # Every request the killed process had accepted is accounted for, each in exactly one
    # state, and the books balance.
    assert st["accepted"] >= max(accepted)
    for rid in accepted:  # known to the restored scheduler (never UnknownRequestError)
        assert r.status(rid) in ("queued", "waiting", "retrying", "completed", "failed")
    assert st["in_flight"] == 0 and st["conservation_ok"] and r.check_invariants()
    r.close_journal()


# ------------------------------------------------------------------ journals and their checkpoints


def _journaled(tmp_path, name: str, n: int = 3) -> tuple[Scheduler, str, str]:
    """A scheduler checkpointed to <name>.json, then journaling n submits to <name>.log."""
    s = Scheduler(["g0"], clock=lambda: 0.0)
    ck, log = str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}.log")
    s.checkpoint(ck)
    s.open_journal(log)
    for _ in range(n):
        s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    s.close_journal()
    return s, ck, log


def test_a_journal_from_another_scheduler_is_refused_and_both_files_stay(tmp_path) -> None:
    # Every fresh scheduler's journal starts at seq 1, so any journal replayed onto any
    # fresh checkpoint: scheduler X's requests were merged into Y's state, and the
    # journal was then emptied.
    _, _, x_log = _journaled(tmp_path, "x")
    _, y_ck, _ = _journaled(tmp_path, "y", n=0)
    def contents() -> tuple[bytes, bytes]:
        return (tmp_path / "y.json").read_bytes(), (tmp_path / "x.log").read_bytes()

    before = contents()
    with pytest.raises(CheckpointError, match="belongs to another scheduler's history"):
        Scheduler.restore(y_ck, journal=x_log)
    assert contents() == before
    back = Scheduler.restore(str(tmp_path / "x.json"), journal=x_log)  # its own: replayed
    assert back.stats()["accepted"] == 3
    # The restored scheduler keeps the lineage: its new journal replays onto its new checkpoint.
    back.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    back.close_journal()
    again = Scheduler.restore(str(tmp_path / "x.json"), journal=x_log)
    assert again.stats()["accepted"] == 4
    again.close_journal()


def test_a_checkpoint_without_a_lineage_still_takes_its_journal(tmp_path) -> None:
    _, ck, log = _journaled(tmp_path, "old")
    _rewrite(tmp_path / "old.json", lambda doc: doc["payload"].pop("lineage"))  # as written before lineages
    back = Scheduler.restore(ck, journal=log)
    assert back.stats()["accepted"] == 3
    back.close_journal()
    assert "lineage" in json.loads((tmp_path / "old.json").read_text())["payload"]  # its history has one now


def test_restore_refuses_a_journal_path_it_must_not_empty(tmp_path) -> None:
    _, ck, _ = _journaled(tmp_path, "a")
    kept = (tmp_path / "a.json").read_bytes()
    with pytest.raises(CheckpointError, match="is the checkpoint's own file"):
        Scheduler.restore(ck, journal=ck)
    os.link(ck, tmp_path / "hard.json")
    with pytest.raises(CheckpointError, match="is the checkpoint's own file"):
        Scheduler.restore(ck, journal=str(tmp_path / "hard.json"))
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="is not a regular file"):
        Scheduler.restore(ck, journal=fifo)
    assert (tmp_path / "a.json").read_bytes() == kept and os.path.exists(fifo) and not os.path.isfile(fifo)


def test_open_journal_refuses_a_file_holding_another_history_and_reopens_its_own(tmp_path) -> None:
    # A restarted server that reused the journal path without restore(journal=) appended
    # seq 1.. after the old seq 1..n, and the next restore refused the whole file.
    from capsched import InvalidArgumentError

    s, _, log = _journaled(tmp_path, "a")
    s.open_journal(log)  # the journal it closed: it goes on from there
    s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    s.close_journal()
    other = Scheduler(["g0"], clock=lambda: 0.0)
    with pytest.raises(InvalidArgumentError, match="already holds entries.*restore"):
        other.open_journal(log)
    back = Scheduler.restore(str(tmp_path / "a.json"), journal=log)
    assert back.stats()["accepted"] == 4
    back.close_journal()


def test_a_torn_last_journal_line_is_dropped_with_a_warning(tmp_path, caplog) -> None:
    _, ck, log = _journaled(tmp_path, "t")
    with open(log, "a") as fh:
        fh.write('{"seq": 5, "op": "sub')  # a crash while writing
    with caplog.at_level("WARNING", logger="capsched.journal"):
        back = Scheduler.restore(ck, journal=log)
    assert back.stats()["accepted"] == 3
    assert any("is torn and was dropped" in r.getMessage() for r in caplog.records)
    back.close_journal()


def test_the_file_is_canonical_json_and_a_reformatted_one_still_restores(tmp_path) -> None:
    # save_checkpoint writes the document in parts (head, payload, tail) instead of
    # serialising it whole, and load checks the checksum on the payload's own bytes when
    # the file has that form: the bytes must be exactly the canonical dump.
    s = Scheduler(["g0", "g1"], clock=lambda: 0.0)
    ids = [s.submit(InferenceRequest(prompt_tokens=5 + i, timeout=None if i % 2 else 30.0), now=0.0)
           for i in range(6)]
    s.step(now=0.5)
    path = tmp_path / "c.json"
    s.checkpoint(str(path))
    raw = path.read_bytes()
    assert raw == json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    rows = request_rows(json.loads(raw)["payload"]["core"])  # (format 2: by column)
    assert [r["id"] for r in rows] == ids and [r["prompt_tokens"] for r in rows] == [5 + i for i in range(6)]
    assert sum(r["deadline"] == float("inf") for r in rows) == 3  # the requests without a deadline
    fast = Scheduler.restore(str(path))
    # The same document laid out otherwise takes the general path, to the same state.
    path.write_text(json.dumps(json.loads(raw), indent=1))
    slow = Scheduler.restore(str(path))
    assert fast._core.export_state() == slow._core.export_state()
    assert [fast.status(i) for i in ids] == [slow.status(i) for i in ids]
    # Either way a changed payload byte is caught.
    column = json.loads(raw)["payload"]["core"]["requests"]["columns"]["prompt_tokens"]["base64"].encode()
    bad = raw.replace(column, column[:-4] + (b"AAAA" if column[-4:] != b"AAAA" else b"AAAB"), 1)
    assert bad != raw
    path.write_bytes(bad)
    with pytest.raises(CheckpointError, match="checksum does not match"):
        Scheduler.restore(str(path))
