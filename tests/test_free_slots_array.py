"""Scheduler.step(free_slots=..., free_kv_tokens=...) given one integer per device in
device order (a numpy array or a list; -1: not reported) decides exactly as the mapping
form that names the same devices."""

from __future__ import annotations

import random

import numpy as np
import pytest

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import InvalidArgumentError


def _fleet() -> list[Device]:
    return [Device(f"g{i}", capacity=1.0 + (i % 3), kv_tokens=[None, 4000, 20000][i % 3]) for i in range(7)]


def _submit(s: Scheduler, rnd: random.Random, t: float, n: int) -> None:
    for _ in range(n):
        s.submit(InferenceRequest(prompt_tokens=rnd.randint(1, 1500), max_new_tokens=rnd.randint(1, 400),
                                  priority=rnd.random(), timeout=rnd.choice([None, 2.0, 30.0]),
                                  tenant=rnd.choice([None, "a", "b"])), now=t)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("form", ["array", "list", "uint32"])
def test_the_per_device_form_decides_as_the_mapping_form(seed: int, form: str) -> None:
    rnd = random.Random(seed)
    cfg = Config(preemption=seed % 2 == 0)
    a = Scheduler(_fleet(), max_batch_size=16, config=cfg, clock=lambda: 0.0)
    b = Scheduler(_fleet(), max_batch_size=16, config=cfg, clock=lambda: 0.0)
    names = [d.name for d in a.devices]
    t = 0.0
    for _ in range(40):
        t += rnd.choice([0.01, 0.2, 1.0])
        k = rnd.randint(0, 20)
        state = rnd.getstate()
        _submit(a, rnd, t, k)
        rnd.setstate(state)
        _submit(b, rnd, t, k)
        # some devices named (with slots, some with KV), the others not
        named = {n: rnd.randint(0, 12) for n in names if rnd.random() < 0.7}
        kv = {n: rnd.randint(0, 30000) for n in named if rnd.random() < 0.5}
        slots_arr = [named.get(n, -1) for n in names]
        kv_arr = [kv.get(n, -1) for n in names]
        if form == "array":
            sa, ka = np.array(slots_arr), np.array(kv_arr)
        elif form == "uint32":  # (unsigned: -1 cannot be held, so every device is named)
            named = {n: named.get(n, 0) for n in names}
            sa, ka = np.array([named[n] for n in names], dtype=np.uint32), kv_arr
        else:
            sa, ka = slots_arr, kv_arr
        ra = a.step(t, free_slots=named, free_kv_tokens=kv)
        rb = b.step(t, free_slots=sa, free_kv_tokens=ka)
        assert [(x.device, x.request_ids) for x in ra.batches] == [(x.device, x.request_ids) for x in rb.batches]
        assert (ra.expired, ra.preempted, ra.migrated) == (rb.expired, rb.preempted, rb.migrated)
        for x in ra.batches:
            for rid in x.request_ids:
                if rnd.random() < 0.6:
                    a.complete(rid, now=t)
                    b.complete(rid, now=t)
    assert a._core.export_state() == b._core.export_state()


def test_the_callers_array_is_copied() -> None:
    s = Scheduler(["a", "b"], clock=lambda: 0.0)
    s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    slots = np.array([0, 3])
    r = s.step(0.0, free_slots=slots)
    assert [x.device for x in r.batches] == ["b"]
    slots[:] = -5  # (after the call: nothing holds it)
    assert s.step(0.1, free_slots=np.array([1, 1])).batches == []


def test_step_many_takes_the_per_device_form() -> None:
    s = Scheduler(["a", "b"], clock=lambda: 0.0)
    ids = s.submit_many(np.arange(1, 6), now=0.0)
    r = s.step_many(0.0, free_slots=np.array([2, -1]), free_kv_tokens=np.array([-1, -1]))
    assert r.devices == ["a"] and r.request_ids.tolist() == ids[:2].tolist()


@pytest.mark.parametrize(
    "what, value, message",
    [
        ("free_slots", np.array([[1, 1]]), r"one-dimensional integer array, got dtype int64 and shape \(1, 2\)"),
        ("free_slots", np.array([True, False]), r"got dtype bool"),
        ("free_slots", np.array([1, 2**20]), r"free_slots\[1\] \(device 'b'\) must be in -1\.\.65536"),
        ("free_slots", np.array([2**64 - 1, 0], dtype=np.uint64), r"free_slots\[0\] \(device 'a'\) must be in -1\.\.65536"),
        ("free_slots", [1, 2.0], r"free_slots must hold integers, got 2\.0"),
        ("free_slots", [1, 2**70], r"free_slots\[1\] \(device 'b'\) must be in -1\.\.65536 \(-1: not reported\), got 1180591620717411303424"),
        ("free_slots", np.ma.array([1, -7], mask=[False, True]), r"free_slots must not be a masked array"),
        ("free_kv_tokens", np.ma.array([1, -7], mask=[False, True]), r"free_kv_tokens must not be a masked array"),
        ("free_kv_tokens", [1, 2**63 - 1], r"free_kv_tokens\[1\] \(device 'b'\) must be in -1\.\.2\*\*62"),
        ("free_slots", [1] * 3_000_000, r"free_slots must have one value per device \(2\), got 3000000"),
        ("free_slots", (1,), r"free_slots must have one value per device \(2\), got 1"),
        ("free_slots", 5, r"free_slots must be a mapping of device names to integers, or one integer per device"),
        ("free_kv_tokens", np.array([-3, 0]), r"free_kv_tokens\[0\] \(device 'a'\) must be in -1\.\.2\*\*62"),
        ("free_kv_tokens", np.array([0.5, 0.5]), r"free_kv_tokens must be .* got dtype float64"),
        ("free_kv_tokens", [1, 2, 3], r"free_kv_tokens must have one value per device \(2\), got 3"),
    ],
)
def test_bad_per_device_values_are_refused_and_change_nothing(what, value, message) -> None:
    s = Scheduler(["a", "b"], clock=lambda: 0.0)
    rid = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    args = {"free_slots": np.array([1, 1]), what: value}
    with pytest.raises(InvalidArgumentError, match=message):
        s.step(0.0, **args)
    assert s.status(rid) == "queued" and s.stats()["dispatched"] == 0


def test_the_array_checked_is_the_array_the_core_gets(monkeypatch) -> None:
    # The check runs on a copy, and that copy goes to the core: a caller's array changed
    # after the check (another thread) cannot hand the core an unchecked value.
    s = Scheduler(["a", "b"], clock=lambda: 0.0)
    s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    kv = np.array([100, 100])
    seen = []
    real = s._core.step_continuous

    def spy(t, slots, kv_arr):
        seen.append((slots, kv_arr))
        kv[:] = 2**63 - 1  # (what a racing thread could write after the check)
        return real(t, slots, kv_arr)

    monkeypatch.setattr(s, "_core", type("Spy", (), {"__getattr__": lambda self, n: getattr(real.__self__, n),
                                                      "step_continuous": staticmethod(spy)})())
    monkeypatch.setattr(s, "_direct", None)
    s.step(0.0, free_slots=np.array([1, 1]), free_kv_tokens=kv)
    (slots, got), = seen
    assert got is not kv and got.tolist() == [100, 100] and slots.dtype == np.int64
