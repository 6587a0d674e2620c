"""Regression tests for the second review of the public Python API: a bad input gets a
precise CapschedError naming the bad value, nothing accepted is lost, a refused call
changes nothing."""

from __future__ import annotations

import fractions
import json
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import capsched.config as capsched_config
from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import (
    CheckpointError,
    DependencyError,
    InvalidArgumentError,
    InvalidRequestError,
    QueueFullError,
    RequestTypeError,
)


def _payload(s: Scheduler, path: Path) -> dict[str, Any]:
    s.checkpoint(path)
    doc = json.loads(path.read_bytes())
    payload: dict[str, Any] = doc["payload"]
    return payload


# ---------------------------------------------------------------- 1. refused submits leave no name


@pytest.mark.parametrize("after_construction", [False, True], ids=["fast path", "checked path"])
def test_a_refused_submit_numbers_no_tenant_or_class(tmp_path: Path, after_construction: bool) -> None:
    s = Scheduler(["a"], config=Config(max_queued=1))
    s.submit(InferenceRequest(prompt_tokens=1), now=1.0)
    before = (tmp_path / "before.ckpt")
    s.checkpoint(before)
    tenants_before = list(s.fair_share()["tenants"])
    refused = [
        InferenceRequest(prompt_tokens=1, tenant="t-past-deadline", deadline=0.5),
        InferenceRequest(prompt_tokens=1, request_class="c-past-deadline", deadline=0.5),
        InferenceRequest(prompt_tokens=1, tenant="t-both", request_class="c-both", deadline=0.5),
    ]
    for req in refused:
        if after_construction:
            req.max_new_tokens = 8  # (set again: no longer the validated fast-path tuple)
        with pytest.raises(InvalidRequestError, match="deadline 0.5 is not after now"):
            s.submit(req, now=1.0)
    after = tmp_path / "after.ckpt"
    s.checkpoint(after)
    assert list(s.fair_share()["tenants"]) == tenants_before
    assert before.read_bytes() == after.read_bytes()


def test_a_queue_full_refusal_numbers_no_tenant(tmp_path: Path) -> None:
    s = Scheduler(["a"], config=Config(max_queued=1))
    s.submit(InferenceRequest(prompt_tokens=1), now=1.0)
    p0 = _payload(s, tmp_path / "a.ckpt")
    with pytest.raises(QueueFullError):
        s.submit(InferenceRequest(prompt_tokens=1, tenant="t-queue-full", request_class="c"), now=1.0)
    p1 = _payload(s, tmp_path / "b.ckpt")
    assert p1["rejected"] == p0["rejected"] + 1  # (the refusal is counted, as documented)
    p0.pop("rejected"), p1.pop("rejected")
    assert p0 == p1
    assert "t-queue-full" not in s.fair_share()["tenants"]


def test_refused_submits_cannot_fill_the_tenant_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capsched_config, "MAX_TENANTS", 8)
    s = Scheduler(["a"])
    for i in range(50):
        with pytest.raises(InvalidRequestError):
            s.submit(InferenceRequest(prompt_tokens=1, tenant=f"bad{i}", deadline=0.5), now=1.0)
    assert s.submit(InferenceRequest(prompt_tokens=1, tenant="legit"), now=2.0) == 1
    assert list(s.fair_share()["tenants"]) == [None, "legit"]


def test_a_refused_submit_journals_nothing_and_an_accepted_one_replays(tmp_path: Path) -> None:
    ck, jl = tmp_path / "s.ckpt", tmp_path / "s.journal"
    s = Scheduler(["a"], config=Config(tenant_weights={"w": 2.0}))
    s.checkpoint(ck)
    s.open_journal(jl)
    size = jl.stat().st_size
    with pytest.raises(InvalidRequestError):
        s.submit(InferenceRequest(prompt_tokens=1, tenant="refused", deadline=0.5), now=1.0)
    assert jl.stat().st_size == size
    rid = s.submit(InferenceRequest(prompt_tokens=3, tenant="w", request_class="k"), now=1.0)
    lines = [json.loads(line.split("\t")[0]) for line in jl.read_text().splitlines()]
    assert [e["op"] for e in lines][-2:] == ["names", "submit"]  # (the names before the call using them)
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    s.close_journal()
    r = Scheduler.restore(ck, journal=jl)
    assert r.status(rid) == "queued"
    assert list(r.fair_share()["tenants"]) == [None, "w"]
    assert r.fair_share()["tenants"]["w"]["weight"] == 2.0
    r.close_journal()


def test_new_names_from_many_threads_are_numbered_once_each(tmp_path: Path) -> None:
    s = Scheduler(["a"])
    errors: list[BaseException] = []
    accepted: list[tuple[int, str]] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            for i in range(200):
                name = f"t{i % 37}"
                late = (i + k) % 3 == 0
                try:
                    rid = s.submit(InferenceRequest(prompt_tokens=1, tenant=name, deadline=0.5 if late else None),
                                   now=1.0)
                except InvalidRequestError:
                    assert late
                    continue
                with lock:
                    accepted.append((rid, name))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    tenants = s._tenants
    assert sorted(tenants.values()) == list(range(len(tenants)))
    assert set(tenants) == {None} | {name for _, name in accepted}
    # The checkpoint restores (every request's tenant number has a name).
    s.checkpoint(tmp_path / "t.ckpt")
    r = Scheduler.restore(tmp_path / "t.ckpt")
    assert r.stats()["accepted"] == len(accepted)


# ---------------------------------------------------------------- 2. numpy scalars in Config


@pytest.mark.parametrize(
    "field, value, plain",
    [
        ("max_queued", np.int64(50), 50),
        ("weight_urgency", np.float32(0.5), 0.5),
        ("aging_edf", fractions.Fraction(1, 2), 0.5),
        ("retry_seed", np.uint64(2**64 - 1), 2**64 - 1),
        ("fit_margin", np.int32(2), 2),
    ],
)
def test_config_stores_numpy_and_fraction_values_as_plain_numbers(
    tmp_path: Path, field: str, value: object, plain: object
) -> None:
    c = Config(**{field: value})
    got = getattr(c, field)
    assert type(got) is type(plain) and got == plain
    s = Scheduler(["a"], config=c)
    s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    s.checkpoint(tmp_path / "c.ckpt")
    assert getattr(Scheduler.restore(tmp_path / "c.ckpt").config, field) == plain


def test_a_device_field_json_cannot_hold_is_a_checkpoint_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Device keeps plain numbers (below), so a value JSON cannot hold has to be planted.
    from capsched import checkpoint

    s = Scheduler([Device("a", kv_tokens=1000)])
    s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    real = checkpoint._device_dicts
    monkeypatch.setattr(checkpoint, "_device_dicts",
                        lambda devices: [dict(d, kv_tokens=np.int64(1000)) for d in real(devices)])
    target = tmp_path / "d.ckpt"
    with pytest.raises(CheckpointError, match=r"devices\[0\]\.kv_tokens is np\.int64\(1000\)"):
        s.checkpoint(target)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_device_numpy_and_fraction_fields_become_plain_numbers(tmp_path: Path) -> None:
    from fractions import Fraction

    d = Device("a", capacity=np.float32(2), kv_tokens=np.int64(1000), max_inflight_batches=np.int64(2),  # type: ignore[arg-type]
               power_w=np.float32(300), prefill_s_per_token=Fraction(1, 10_000))  # type: ignore[arg-type]
    assert type(d.capacity) is float and type(d.kv_tokens) is int and type(d.max_inflight_batches) is int
    assert type(d.power_w) is float and d.prefill_s_per_token == 1e-4
    s = Scheduler([d, Device("b")])
    s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    s.checkpoint(tmp_path / "c.ckpt")  # (was a CheckpointError: no JSON form for np.int64)
    assert Scheduler.restore(tmp_path / "c.ckpt").stats()["accepted"] == 1


# ---------------------------------------------------------------- 3, 4. set_clock


def _split_scheduler() -> Scheduler:
    from capsched import Slice

    return Scheduler(list(Device("g", model="H100-SXM").split(Slice("a", 0.5, 0.5), Slice("b", 0.5, 0.5))),
                     max_batch_size=2)


def test_set_clock_on_a_split_device_checks_every_slice_first(tmp_path: Path) -> None:
    s = _split_scheduler()
    s.set_clock("g/b", 400.0, 500.0, now=0.0)
    before = s.stats()
    with pytest.raises(InvalidArgumentError, match=r"device 'g': its slice 'g/b': current clock must be in "
                                                   r"\(0, max clock 500\], got 1000"):
        s.set_clock("g", 1000.0, now=1.0)
    assert s.stats() == before
    # ... and a max clock given for all of them applies to all of them.
    s.set_clock("g", 1000.0, 2000.0, now=1.0)
    assert [d["clock_scale"] for d in s.stats()["devices"]] == [0.5, 0.5]


def test_set_clock_on_a_split_device_with_a_slice_of_no_known_max_clock() -> None:
    devices = [Device("q/1", max_clock_mhz=2000.0), Device("q/2")]
    s = Scheduler(devices)
    s._index["q"] = [0, 1]  # (a parent name over both, as Device.split gives)
    before = s.stats()
    with pytest.raises(InvalidArgumentError, match=r"its slice 'q/2' has no known max clock"):
        s.set_clock("q", 1000.0, now=1.0)
    assert s.stats() == before


def test_the_max_clocks_set_clock_gave_survive_checkpoint_and_journal(tmp_path: Path) -> None:
    ck, jl = tmp_path / "s.ckpt", tmp_path / "s.journal"
    s = _split_scheduler()
    s.set_clock("g/b", 400.0, 500.0, now=0.0)
    s.checkpoint(ck)
    s.open_journal(jl)
    s.set_clock("g/a", 300.0, 600.0, now=1.0)
    s.close_journal()
    r = Scheduler.restore(ck, journal=jl)
    for bad, slice_ in ((550.0, "g/b"), (650.0, "g/a")):
        with pytest.raises(InvalidArgumentError, match=f"its slice '{slice_}'"):
            r.set_clock("g", bad, now=2.0)
    r.close_journal()


@pytest.mark.parametrize("bad", [math.nan, np.float64("nan"), math.inf, -math.inf, 0.0, -5.0])
def test_set_clock_refuses_a_max_clock_that_is_not_finite_and_positive(bad: float) -> None:
    s = Scheduler([Device("h", max_clock_mhz=2000.0), "big"])
    before = s.stats()
    for dev in ("h", "big"):
        with pytest.raises(InvalidArgumentError, match=r"max_clock_mhz must be a finite number > 0"):
            s.set_clock(dev, 500.0, bad, now=1.0)
    assert s.stats() == before


# ---------------------------------------------------------------- 5. fail(error=...) is bounded


def test_a_long_fail_error_is_cut_and_marked_not_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert capsched_config.MAX_ERROR_CHARS == 4096
    jl = tmp_path / "j"
    s = Scheduler(["a"], max_batch_size=1)
    s.open_journal(jl, sync=False)
    root = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    s.step(now=0.0)
    before = jl.stat().st_size
    assert s.fail(root, now=1.0, error="x" * 2**20) is False  # accepted: the report is not lost
    line = jl.read_text()[before:]
    assert len(line) < 4096 + 400
    assert "x" * 4096 + " [... cut: 1048576 characters in all]" in line
    s.close_journal()
    # What the dependents see is the cut text (the core cuts it again, to 256 bytes).
    monkeypatch.setattr(capsched_config, "MAX_ERROR_CHARS", 20)
    s = Scheduler(["a"], max_batch_size=1)
    root = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    dep = s.submit(InferenceRequest(prompt_tokens=1, depends_on=[root]), now=0.0)
    s.step(now=0.0)
    s.fail(root, now=1.0, error="y" * 100 + "\udc80")
    reason = dict(s.step(now=2.0).failed)[dep]
    assert reason.endswith(": " + "y" * 20 + " [... cut: 101 characters in all]"), reason


def test_a_short_fail_error_is_kept_whole() -> None:
    s = Scheduler(["a"], max_batch_size=1)
    root = s.submit(InferenceRequest(prompt_tokens=1), now=0.0)
    dep = s.submit(InferenceRequest(prompt_tokens=1, depends_on=[root]), now=0.0)
    s.step(now=0.0)
    s.fail(root, now=1.0, error="CUDA out of memory \udc80")
    assert dict(s.step(now=2.0).failed)[dep].endswith(": CUDA out of memory \\udc80")


# ---------------------------------------------------------------- 6, 7. submit_many arrays


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"prompt_tokens": [1, True]}, r"prompt_tokens\[1\] is True, a bool"),
        ({"prompt_tokens": [1, 2], "max_new_tokens": [True, 5]}, r"max_new_tokens\[0\] is True, a bool"),
        ({"prompt_tokens": [1, 2], "priority": [0.5, True]}, r"priority\[1\] is True, a bool"),
        ({"prompt_tokens": [1, 2], "timeout": (5.0, np.bool_(False))}, r"timeout\[1\] is np\.False_, a bool|"
                                                                       r"timeout\[1\] is False, a bool"),
        ({"prompt_tokens": [1, 2], "deadline": [None, True]}, r"deadline\[1\] is True, a bool"),
    ],
)
def test_submit_many_refuses_a_bool_among_numbers(kwargs: dict[str, Any], fragment: str) -> None:
    s = Scheduler(["a"])
    before = s.stats()
    with pytest.raises(RequestTypeError, match=fragment):
        s.submit_many(**kwargs, now=1.0)
    assert s.stats() == before


def test_submit_many_of_float16_tokens_raises_no_warning() -> None:
    s = Scheduler(["a"])
    # (pytest's filterwarnings = error: a RuntimeWarning from the range check would fail this)
    ids = s.submit_many(np.array([3, 4], dtype=np.float16), priority=np.array([0.5, 1], dtype=np.float16), now=1.0)
    assert list(ids) == [1, 2]
    with pytest.raises(InvalidRequestError, match="whole numbers"):
        s.submit_many(np.array([3.5], dtype=np.float16), now=1.0)


# ---------------------------------------------------------------- 8. depends_on objects with ids set by hand


@pytest.mark.parametrize(
    "bad, exc, fragment",
    [
        ("x", RequestTypeError, r"depends_on\[1\] is an InferenceRequest whose id is 'x'"),
        (-1, RequestTypeError, r"depends_on\[1\] is an InferenceRequest whose id is -1"),
        (0, RequestTypeError, r"depends_on\[1\] is an InferenceRequest whose id is 0"),
        (3.7, RequestTypeError, r"depends_on\[1\] is an InferenceRequest whose id is 3\.7"),
        (True, RequestTypeError, r"depends_on\[1\] is an InferenceRequest whose id is True"),
        (2**64, DependencyError, r"depends_on names request 18446744073709551616, which this scheduler never issued"),
    ],
)
def test_depends_on_checks_the_id_of_an_object_set_by_hand(bad: object, exc: type, fragment: str) -> None:
    s = Scheduler(["a"])
    first = InferenceRequest(prompt_tokens=1)
    s.submit(first, now=0.0)
    r = InferenceRequest(prompt_tokens=1)
    r.id = bad  # type: ignore[assignment]
    before = s.stats()
    with pytest.raises(exc, match=fragment):
        s.submit(InferenceRequest(prompt_tokens=1, depends_on=[first, r]), now=1.0)
    assert s.stats() == before


# ---------------------------------------------------------------- minor


def test_devices_pinning_more_tenants_than_the_limit_are_refused_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from capsched.errors import ConfigError

    monkeypatch.setattr(capsched_config, "MAX_TENANTS", 4)
    Scheduler([Device("a", tenants=("t1", "t2")), Device("b", tenants=("t2", "t3"))])  # 3 + None: at the limit
    with pytest.raises(ConfigError, match=r"name 4 distinct tenants in all; with tenant None that is 5, over the "
                                          r"limit of 4 tenants"):
        Scheduler([Device("a", tenants=("t1", "t2")), Device("b", tenants=("t3", "t4"))])


def test_batchable_message_shows_the_value() -> None:
    with pytest.raises(RequestTypeError, match=r"batchable must be a bool, got np\.True_ \(numpy\.bool"):
        InferenceRequest(prompt_tokens=1, batchable=np.True_)  # type: ignore[arg-type]
    with pytest.raises(RequestTypeError, match=r"batchable must be a bool, got 1 \(int\)"):
        InferenceRequest(prompt_tokens=1, batchable=1)  # type: ignore[arg-type]
