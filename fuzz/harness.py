"""The fuzz harness: bytes -> a run of capsched's Python API, with conservation as the oracle.

Each input (bytes) decodes into a scheduler configuration and a sequence of operations:
submits with random fields (bad ones included), bulk submits, steps at random times
(backwards, NaN and infinite ones included; batch and continuous mode), complete / fail /
cancel / complete_many of random ids (unknown ones, 0, negative, non-int included),
device clock and pressure changes, status queries, and checkpoint + restore.

After every operation the harness checks the oracle against its own model of the run:

* ``stats()['conservation_ok']``, and each counter equal to what the model saw end;
* every accepted id ends at most once (and, after a final drain, exactly once), in the
  way ``status()`` says; ids are 1, 2, 3, ... with no gaps or repeats;
* no id is handed out by a step while an earlier dispatch of it is still in flight
  (only a migration re-lists it);
* a call that raises leaves the scheduler's counters unchanged (``rejected`` aside);
* ``check_invariants()``.

Expected exceptions are capsched's own errors (``capsched.errors.CapschedError``), with a
non-empty message; any other exception, or an oracle failure, is a crash (an
``AssertionError`` / the exception itself propagates).

fuzz/fuzz_scheduler.py drives :func:`run_one` with atheris (coverage-guided). The decoding is the harness's own (:class:`Reader`), not atheris's, so that
:func:`run_one` replays any input identically without atheris (tests/test_fuzz_smoke.py
replays ``fuzz/corpus/``; tests/test_fuzz_regressions.py keeps every crash found).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import CapschedError

__all__ = ["Reader", "Model", "check", "run_one", "MAX_OPS"]

#: Most operations decoded from one input (keeps each run short).
MAX_OPS = 80

_POLICIES = ("fcfs", "priority", "edf", "srtf", "weighted")
_SCHED_CLASSES = ("normal", "normal", "normal", "strict", "deadline", "background", "bogus")
_SPECIAL_FLOATS = (0.0, -0.0, 1.0, -1.0, 0.5, 1e-9, 1e308, -1e308, math.inf, -math.inf, math.nan, 2.0)
_COUNTERS = ("accepted", "completed", "failed", "expired", "cancelled", "waiting", "queued", "in_flight",
             "retrying", "dispatched", "retried", "migrated")
_ENDED = ("completed", "failed", "expired", "cancelled")


class Reader:
    """Decodes fuzz bytes into choices; returns zeros once the bytes run out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        """Bytes not yet consumed."""
        return len(self.data) - self.pos

    def u8(self) -> int:
        """Next byte (0 when exhausted)."""
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u16(self) -> int:
        """Next two bytes, little-endian."""
        return self.u8() | (self.u8() << 8)

    def below(self, n: int) -> int:
        """An int in ``0..n-1`` (n >= 1)."""
        return (self.u16() if n > 256 else self.u8()) % n

    def chance(self, per256: int) -> bool:
        """True with probability per256/256."""
        return self.u8() < per256

    def pick(self, seq: Sequence[Any]) -> Any:
        """One element of a non-empty sequence."""
        return seq[self.below(len(seq))]

    def real(self, lo: float, hi: float, special: int = 16) -> float:
        """Mostly a float in [lo, hi]; sometimes (special/256) an edge value (NaN, inf...)."""
        if self.chance(special):
            return float(self.pick(_SPECIAL_FLOATS))
        return lo + (hi - lo) * self.u16() / 65535.0


class Model:
    """What the harness knows of a run: the ids it was given, how each ended, which are
    in flight. The oracle compares the scheduler with it."""

    def __init__(self) -> None:
        self.accepted = 0  # ids 1..accepted were issued
        self.ended: Dict[int, str] = {}
        self.in_flight: Set[int] = set()
        self.background: Set[int] = set()  # sched_class="background" ids

    def end(self, rid: int, how: str, where: str) -> None:
        """Record that ``rid`` ended; a second end of the same id is a crash."""
        assert 1 <= rid <= self.accepted, f"{where}: id {rid} ended but was never issued (issued 1..{self.accepted})"
        assert rid not in self.ended, f"{where}: id {rid} ended twice ({self.ended[rid]}, then {how})"
        self.ended[rid] = how
        self.in_flight.discard(rid)


def _counters(s: Scheduler) -> Dict[str, Any]:
    st = s.stats()
    return {k: st[k] for k in _COUNTERS}


def check(s: Scheduler, m: Model, where: str, full: bool = True, stepped: bool = True) -> None:
    """The oracle: the scheduler's books against the model. Between steps (``stepped``
    False) requests may have failed through a dependency that the next step reports."""
    st = s.stats()
    assert st["conservation_ok"] is True, f"{where}: conservation broken: {st}"
    assert st["accepted"] == m.accepted, f"{where}: accepted {st['accepted']} != {m.accepted} issued"
    for how in _ENDED:
        n = sum(1 for h in m.ended.values() if h == how)
        ok = st[how] == n or (how == "failed" and not stepped and st[how] > n)
        assert ok, f"{where}: stats()[{how!r}] = {st[how]}, but {n} ended that way"
    assert st["in_flight"] == len(m.in_flight), f"{where}: in_flight {st['in_flight']} != {len(m.in_flight)}"
    if full:
        for rid, how in m.ended.items():
            assert s.status(rid) == how, f"{where}: id {rid} ended {how} but status() says {s.status(rid)}"
        for rid in m.in_flight:
            assert s.status(rid) == "in_flight", f"{where}: id {rid} dispatched but status() says {s.status(rid)}"
        assert s.check_invariants() is True, f"{where}: check_invariants() failed"


def _rid(r: Reader, m: Model) -> Any:
    """A request id to pass to a call: mostly a plausible one, sometimes a bad one."""
    k = r.u8()
    if k < 200 and m.accepted:
        return 1 + r.below(m.accepted)
    if k < 215:
        return m.accepted + 1 + r.below(3)  # not issued yet
    return r.pick([0, -1, 2**64, 2**63, True, 1.0, "1", None, np.uint64(1), np.int64(-5)])


def _request(r: Reader, m: Model) -> InferenceRequest:
    """An InferenceRequest with fuzzed fields (construction may raise, as documented)."""
    kw: Dict[str, Any] = {}
    if r.chance(230):
        kw["prompt_tokens"] = r.pick([0, 1, 17, 4000, 10_000_000, 10_000_001, -1, 1.5, True])
        if r.chance(200):
            kw["prompt_tokens"] = r.below(5000)
    else:
        kw["prompt"] = r.pick(["", "hello world", "生成一段技术文档", "a, b; c!"])
    if r.chance(128):
        kw["max_new_tokens"] = r.pick([1, 256, 0, -3, 10_000_001, 3.0]) if r.chance(40) else 1 + r.below(600)
    if r.chance(160):
        kw["priority"] = r.real(0.0, 1.0)
    t = r.u8()
    if t < 60:
        kw["timeout"] = r.real(0.001, 5.0)
    elif t < 80:
        kw["deadline"] = r.real(-1.0, 10.0)
    elif t < 84:
        kw["timeout"], kw["deadline"] = 1.0, 2.0  # both: refused
    if r.chance(60):
        kw["tenant"] = r.pick([None, "a", "b", "", 7])
    if r.chance(30):
        kw["batchable"] = False
    if r.chance(40) and m.accepted:
        kw["depends_on"] = tuple(_rid(r, m) for _ in range(1 + r.below(3)))
    if r.chance(40):
        lo = r.real(0.0, 1.0)
        kw["uclamp_min"], kw["uclamp_max"] = lo, r.real(lo if math.isfinite(lo) else 0.0, 1.0)
    if r.chance(40):
        kw["sched_class"] = r.pick(_SCHED_CLASSES)
        if kw["sched_class"] == "deadline" and "timeout" not in kw and "deadline" not in kw and r.chance(200):
            kw["timeout"] = r.real(0.01, 5.0, special=0)
    if r.chance(30):
        kw["request_class"] = r.pick([None, "chat", "code"])
    if r.chance(20):
        kw["pool"] = r.pick(["fast", "slow", "nope"])
        if r.chance(100):
            kw["fallback_pool"] = r.pick(["fast", "slow"])
    return InferenceRequest(**kw)


def _scheduler(r: Reader, clock: Callable[[], float]) -> Scheduler:
    n = 1 + r.below(3)
    kv = None if r.chance(128) else 2000 + r.below(40000)
    devices = [
        # A KV budget only with another device beside it: a request larger than every
        # device's budget is accepted and then blocks its queue for good, a known bug
        # (tests/test_fuzz_regressions.py, xfail) the fuzzer would otherwise hit at once.
        Device("big", capacity=4.0, max_inflight_batches=1 + r.below(3), max_clock_mhz=1800.0, pool="fast",
               kv_tokens=kv if n > 1 else None),
        Device("mid", capacity=2.0, max_inflight_batches=1 + r.below(2), max_clock_mhz=1800.0, pool="fast"),
        Device("small", capacity=1.0, pool="slow"),
    ][:n]
    cfg = Config(
        max_retries=r.below(4),
        retry_base=r.pick([0.0, 0.001, 0.05, 1.0]),
        breaker_failures=r.below(4),
        breaker_cooldown=r.pick([0.0, 0.01, 1.0]),
        max_queued=r.pick([0, 0, 3, 20]),
        max_queued_per_tenant=r.pick([0, 0, 2]),
        wait_for_fit=r.chance(64),
        defer_late=r.chance(64),
        max_queue_delay=r.pick([0.0, 0.0, 0.01]),
        preferred_batch_sizes=r.pick([(), (), (2, 4)]),
        latency_target=r.pick([0.0, 0.0, 0.05]),
        max_batch_tokens=r.pick([0, 0, 3000]),
    )
    return Scheduler(devices, policy=r.pick(_POLICIES), max_batch_size=r.pick([1, 2, 4, 8]),
                     enable_dynamic_batching=r.chance(128), config=cfg, clock=clock)


def _after_step(s: Scheduler, m: Model, res: Any, where: str, slots: Optional[Dict[str, Any]] = None) -> None:
    moved = {rid for rid, _ in res.migrated}
    for rid, _ in res.preempted:
        assert rid in m.in_flight, f"{where}: preempted id {rid} was not in flight"
        m.in_flight.discard(rid)  # queued again
    for rid in res.expired:
        m.end(rid, "expired", where)
    for rid, reason in res.failed:
        assert isinstance(reason, str) and reason, f"{where}: dependency failure of {rid} without a reason"
        m.end(rid, "failed", where)
    seen: Set[int] = set()
    for b in res.batches:
        # Batch mode: at most max_batch_size; continuous mode: the device's free slots
        # and the slots its preemptions freed.
        limit = s.max_batch_size
        if slots is not None:
            limit = slots.get(b.device, 0) + sum(1 for _, d in res.preempted if d == b.device)
        assert 1 <= len(b.request_ids) <= limit, f"{where}: batch of {len(b.request_ids)} on {b.device} (limit {limit})"
        for rid in b.request_ids:
            assert rid not in seen, f"{where}: id {rid} twice in one step"
            seen.add(rid)
            assert rid not in m.ended, f"{where}: id {rid} dispatched after it ended ({m.ended.get(rid)})"
            assert rid not in m.in_flight or rid in moved, f"{where}: id {rid} handed out while in flight"
            m.in_flight.add(rid)
    assert moved <= seen, f"{where}: migrated ids missing from the batches: {sorted(moved - seen)}"


class _State:
    def __init__(self) -> None:
        self.t = 0.0  # the harness's virtual clock
        self.tmp: Optional[str] = None
        self.stepped = True  # the last call was a step: dependency failures are reported


def _now(r: Reader, st: _State) -> Any:
    k = r.u8()
    if k < 200:
        st.t += r.below(200) / 1000.0
        return st.t
    if k < 215:
        return None  # the scheduler's clock
    if k < 235:
        return st.t - r.below(100) / 100.0  # backwards: clamped by the core
    return r.pick([math.nan, math.inf, -math.inf, "1.0", True, 1e308, np.float64(st.t)])


def _op(r: Reader, s: Scheduler, m: Model, st: _State, k: int) -> Scheduler:
    """Decode and run one operation; returns the scheduler (a new one after restore)."""
    op = r.below(16)
    where = f"op {k} ({op})"
    if op <= 3:
        req = _request(r, m)
        rid = s.submit(req, now=_now(r, st))
        assert rid == m.accepted + 1 and req.id == rid, f"{where}: submit gave {rid}, expected {m.accepted + 1}"
        m.accepted += 1
        if req.sched_class == "background":
            m.background.add(rid)
    elif op == 4:
        n = r.below(6)
        p: Any = np.array([r.below(5000) - (r.below(2) if r.chance(10) else 0) for _ in range(n)])
        if r.chance(10):
            p = p.astype(np.float64) + r.pick([0.0, 0.5, math.nan])
        ids = s.submit_many(p, max_new_tokens=1 + r.below(500), priority=r.real(0.0, 1.0),
                            timeout=r.pick([None, math.nan, 0.5, -1.0, r.real(0.0, 3.0)]), now=_now(r, st))
        got = [int(x) for x in ids]
        assert got == list(range(m.accepted + 1, m.accepted + 1 + len(got))) and len(got) == n, f"{where}: {got}"
        m.accepted += n
    elif op <= 7:
        if r.chance(70) and s.devices:
            names = [d.name for d in s.devices]
            slots = {name: r.below(4) for name in names if r.chance(200)}
            if r.chance(8):
                slots[r.pick(["nope", names[0]])] = r.pick([-1, 70000, 1.5])
            kv = {name: r.below(50000) for name in names if r.chance(60)} or None
            res = s.step(_now(r, st), free_slots=slots, free_kv_tokens=kv)
            _after_step(s, m, res, where, slots)
        else:
            res = s.step(_now(r, st))
            _after_step(s, m, res, where)
        st.stepped = True
    elif op <= 9:
        rid = _rid(r, m)
        out = r.pick([None, None, 0, 100, -1, 10**8])
        s.complete(rid, _now(r, st), output_tokens=out)
        m.end(int(rid), "completed", where)
    elif op == 10:
        rid = _rid(r, m)
        retryable = r.pick([True, True, False, 1])
        requeued = s.fail(rid, _now(r, st), retryable=retryable, error=r.pick(["", "oom", "x" * 300]))
        if requeued:
            assert retryable is True, f"{where}: a non-retryable fail was re-queued"
            m.in_flight.discard(int(rid))
        else:
            m.end(int(rid), "failed", where)
    elif op == 11:
        rid = _rid(r, m)
        if s.cancel(rid):
            m.end(int(rid), "cancelled", where)
        else:  # it ended: as the model knows, or through a dependency the next step reports
            ok = int(rid) in m.ended or s.status(rid) == "failed"
            assert ok, f"{where}: cancel({rid}) said it had ended, but it is {s.status(rid)}"
    elif op == 12:
        many = [_rid(r, m) for _ in range(r.below(4))]
        s.complete_many(many, _now(r, st))
        for rid in many:
            m.end(int(rid), "completed", where)
    elif op == 13:
        dev = r.pick([d.name for d in s.devices] + ["nope"])
        if r.chance(128):
            s.set_pressure(dev, r.real(0.0, 1.0), now=_now(r, st))
        else:
            s.set_clock(dev, r.real(100.0, 2000.0), r.pick([None, 1800.0, 0.0]), now=_now(r, st))
    elif op == 14:
        rid = _rid(r, m)
        status = s.status(rid)
        assert status == m.ended.get(int(rid), status), f"{where}: status({rid}) = {status}, model {m.ended[int(rid)]}"
    else:
        if r.chance(64):
            assert st.tmp is not None
            path = os.path.join(st.tmp, "ckpt.json")
            s.checkpoint(path)
            s = Scheduler.restore(path, clock=lambda: st.t)
            m.in_flight.clear()  # what was in flight is queued again
            # Dependency failures no step had reported yet are in the checkpoint: the
            # first step after the restore reports them (st.stepped stays False until
            # then, so check() allows for them).
        else:
            s.check_invariants()
    return s


def _drain(s: Scheduler, m: Model, st: _State) -> None:
    """Run the scheduler dry: every accepted request must end, exactly once."""
    for name in [d.name for d in s.devices]:
        s.set_pressure(name, 0.0, now=st.t)
    for rid in sorted(m.in_flight):  # what the run left running finishes now
        s.complete(rid, st.t)
        m.end(rid, "completed", "drain")
    stalled = 0
    for i in range(1000):
        st.t += 0.5
        res = s.step(st.t)  # at least one: it reports dependency failures still pending
        _after_step(s, m, res, f"drain step {i}")
        snap = s.stats()
        if not res.batches and snap["waiting"] + snap["queued"] + snap["in_flight"] + snap["retrying"] == 0:
            break
        stalled = 0 if res else stalled + 1
        if stalled == 20:
            # Documented: a background request runs only on a device it fits, so one too
            # big for every device stays queued until cancelled. Nothing else may stall.
            for rid in sorted(m.background - set(m.ended)):
                if s.status(rid) == "queued" and s.cancel(rid):
                    m.end(rid, "cancelled", "drain (a background request that fits no device)")
        for b in res.batches:
            for rid in b.request_ids:
                s.complete(rid, st.t)
                m.end(rid, "completed", f"drain step {i}")
    else:
        raise AssertionError(f"drain did not finish: {s.stats()}")
    never = set(range(1, m.accepted + 1)) - set(m.ended)
    assert not never, f"accepted ids that never ended: {sorted(never)[:10]}"
    check(s, m, "after drain")


def run_one(data: bytes) -> None:
    """Decode ``data`` into a run and check the oracle throughout. Raises AssertionError
    (or an unexpected exception) on a bug; capsched's own errors on bad input are fine."""
    r = Reader(data)
    st = _State()
    try:
        s = _scheduler(r, lambda: st.t)
    except CapschedError:
        return
    m = Model()
    with tempfile.TemporaryDirectory(prefix="capsched-fuzz-") as tmp:
        st.tmp = tmp
        for k in range(MAX_OPS):
            if r.left() <= 0:
                break
            before = _counters(s)
            st.stepped = False
            try:
                s = _op(r, s, m, st, k)
            except CapschedError as exc:
                assert str(exc), f"op {k}: {type(exc).__name__} without a message"
                after = _counters(s)
                assert after == before, f"op {k}: {type(exc).__name__}({exc}) changed the scheduler: {before} -> {after}"
            check(s, m, f"after op {k}", full=(k % 8 == 7), stepped=st.stepped)
        check(s, m, "at the end", stepped=st.stepped)
        _drain(s, m, st)
