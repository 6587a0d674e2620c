"""Capacity-aware placement through the public API (docs/placement.md)."""

from __future__ import annotations

import pytest

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import InvalidArgumentError, InvalidRequestError

# With the default 1e-4 s of invariant work per token, a request of 1,000 + 1,000
# tokens needs W = 0.2 s of the strongest device; with a 0.5 s timeout its utilization
# is u = 1024 x 0.2 / 0.5 = 409.6, and it fits a device when 1.25 u = 512 < spare.


def heavy(**kw) -> InferenceRequest:
    return InferenceRequest(prompt_tokens=1000, max_new_tokens=1000, timeout=0.5, **kw)


def test_a_request_goes_where_it_fits() -> None:
    # small: capacity 256 < 512, so only big fits, although small is listed first.
    s = Scheduler([Device("small", 1.0), Device("big", 4.0)], max_batch_size=4)
    rid = s.submit(heavy(), now=0.0)
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [("big", [rid])]
    st = s.stats()
    assert (st["placed_fitting"], st["placed_fallback"]) == (1, 0)
    big = st["devices"][1]
    assert big["placed_util"] == pytest.approx(409.6)
    s.complete(rid, now=0.1)
    assert s.stats()["devices"][1]["placed_util"] == 0.0


def test_nothing_fits_so_the_largest_spare_capacity_takes_it_and_it_is_counted() -> None:
    s = Scheduler([Device("small", 1.0), Device("big", 4.0)], max_batch_size=4)
    # 0.05 s left: u = 4096, clamped to 1024 (uclamp_max 1.0); 1.25 x 1024 fits nothing.
    rid = s.submit(InferenceRequest(prompt_tokens=1000, max_new_tokens=1000, timeout=0.05), now=0.0)
    r = s.step(now=0.0)
    assert r.batches[0].device == "big" and r.batches[0].request_ids == [rid]
    st = s.stats()
    assert (st["placed_fitting"], st["placed_fallback"]) == (0, 1)
    assert st["devices"][1]["placed_util"] == 1024.0


def test_uclamp_bounds_the_utilization() -> None:
    s = Scheduler([Device("small", 1.0), Device("big", 4.0)], max_batch_size=4)
    # A tiny request that asks for at least 60 % of the strongest device: only big fits.
    rid = s.submit(InferenceRequest(prompt_tokens=1, max_new_tokens=1, uclamp_min=0.6), now=0.0)
    assert s.step(now=0.0).batches[0].device == "big"
    assert s.stats()["devices"][1]["placed_util"] == pytest.approx(0.6 * 1024)
    # A heavy one capped at 20 % fits the small device too (1.25 x 204.8 = 256 is not < 256:
    # it does not), so cap it at 19 %.
    s2 = Scheduler([Device("small", 1.0)], max_batch_size=4)
    s2.submit(InferenceRequest(prompt_tokens=1000, max_new_tokens=1000, timeout=0.5, uclamp_max=0.19), now=0.0)
    s2.step(now=0.0)
    assert s2.stats()["placed_fitting"] == 1
    del rid


def test_requests_spread_by_headroom_score() -> None:
    # Two equal big devices and one small: heavy requests go to whichever has the most
    # spare capacity, so they alternate between the big ones.
    s = Scheduler([Device("a", 4.0), Device("b", 4.0), Device("c", 1.0, max_inflight_batches=1)], max_batch_size=8)
    ids = [s.submit(heavy(), now=0.0) for _ in range(4)]
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [("a", [ids[0], ids[2]]), ("b", [ids[1], ids[3]])]


def test_a_clock_drop_moves_new_work_to_another_device() -> None:
    s = Scheduler([Device("a", 4.0), Device("b", 3.0)], max_batch_size=4)
    first = s.submit(heavy(), now=0.0)
    assert s.step(now=0.0).batches[0].device == "a"
    s.complete(first, now=0.1)
    # a throttled to half its clock: capacity 512, and 1.25 x 409.6 = 512 no longer fits.
    s.set_clock("a", 700.0, 1400.0, now=0.1)
    st = s.stats()["devices"][0]
    assert st["clock_scale"] == 0.5 and st["capacity"] == 512.0 and st["capacity_orig"] == 1024.0
    second = s.submit(heavy(), now=0.1)
    r = s.step(now=0.1)
    assert [(b.device, b.request_ids) for b in r.batches] == [("b", [second])]


def test_pressure_reduces_usable_capacity() -> None:
    s = Scheduler([Device("a", 4.0), Device("b", 3.0)], max_batch_size=4)
    s.set_pressure("a", 0.5, now=0.0)
    assert s.stats()["devices"][0]["capacity"] == 512.0
    rid = s.submit(heavy(), now=0.0)
    assert s.step(now=0.0).batches[0].device == "b"
    del rid


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda s: s.set_clock("nope", 1.0), "unknown device"),
        (lambda s: s.set_clock(0, 1.0), "device name"),
        (lambda s: s.set_clock("a", 1.0), "no known max clock"),
        (lambda s: s.set_clock("a", 0.0, 1.0), "current clock"),
        (lambda s: s.set_clock("a", 2.0, 1.0), "current clock"),
        (lambda s: s.set_clock("a", float("nan"), 1.0), "current clock"),
        (lambda s: s.set_clock("a", 1.0, -1.0), "max clock"),
        (lambda s: s.set_pressure("a", 1.0), "pressure"),
        (lambda s: s.set_pressure("a", -0.1), "pressure"),
        (lambda s: s.set_pressure("a", "high"), "pressure"),
    ],
)
def test_bad_clock_and_pressure_change_nothing(call, fragment: str) -> None:
    s = Scheduler([Device("a", 4.0), Device("b", 1.0)])
    before = s.stats()["devices"]
    with pytest.raises(InvalidArgumentError, match=fragment):
        call(s)
    assert s.stats()["devices"] == before


def test_util_est_learns_work_per_token_from_completions() -> None:
    s = Scheduler([Device("a", 4.0), Device("b", 1.0)], max_batch_size=4)
    assert s.class_estimate("chat") is None
    rid = s.submit(InferenceRequest(prompt_tokens=600, max_new_tokens=400, request_class="chat"), now=0.0)
    s.step(now=0.0)  # alone in its batch, on a (capacity 1024, full clock)
    s.complete(rid, now=2.0)  # 2 s of the strongest device for 1,000 tokens
    est = s.class_estimate("chat")
    assert est == {"ewma": pytest.approx(2e-3), "last": pytest.approx(2e-3), "estimate": pytest.approx(2e-3)}
    # A faster second run lowers the EWMA by a quarter of the gap; the estimate keeps the
    # larger of EWMA and last.
    rid = s.submit(InferenceRequest(prompt_tokens=600, max_new_tokens=400, request_class="chat"), now=2.0)
    s.step(now=2.0)
    s.complete(rid, now=3.0)
    est = s.class_estimate("chat")
    assert est["last"] == pytest.approx(1e-3)
    assert est["ewma"] == pytest.approx(2e-3 + (1e-3 - 2e-3) / 4)
    assert est["estimate"] == pytest.approx(est["ewma"])
    # The learned estimate drives placement: 1,000 tokens x 1.75e-3 s = 1.75 s of work
    # with 4 s left: u = 448, which fits a (1024) and not b (256).
    rid = s.submit(InferenceRequest(prompt_tokens=600, max_new_tokens=400, request_class="chat", timeout=4.0), now=3.0)
    r = s.step(now=3.0)
    assert r.batches[0].device == "a"
    assert s.stats()["devices"][0]["placed_util"] == pytest.approx(1024 * 1.75 / 4.0)
    # Another class is unaffected.
    assert s.class_estimate("code") is None


def test_config_rejects_bad_placement_settings() -> None:
    from capsched.errors import ConfigError

    for key, value in [("fit_margin", 0.5), ("score_compute", -1.0), ("pelt_period", 0.0),
                       ("default_work_per_token", -1e-4)]:
        with pytest.raises(ConfigError, match=key):
            Scheduler(["a"], config={key: value})


def test_energy_aware_prefers_lower_energy_per_work() -> None:
    # Both fit; b draws 100 W for capacity 3, a 700 W for capacity 4: b spends less
    # energy per unit of work, so energy-aware placement picks it; plain scoring picks a.
    fleet = [Device("a", 4.0, power_w=700.0), Device("b", 3.0, power_w=100.0)]
    plain = Scheduler(fleet, max_batch_size=4)
    plain.submit(heavy(), now=0.0)
    assert plain.step(now=0.0).batches[0].device == "a"
    green = Scheduler(fleet, max_batch_size=4, config=Config(energy_aware=True))
    green.submit(heavy(), now=0.0)
    assert green.step(now=0.0).batches[0].device == "b"


def test_kv_memory_budget_is_respected_and_the_head_is_not_overtaken() -> None:
    s = Scheduler([Device("a", 4.0, kv_tokens=3000), Device("b", 1.0, kv_tokens=1500)], policy="fcfs", max_batch_size=8)
    first = s.submit(InferenceRequest(prompt_tokens=1000, max_new_tokens=1000), now=0.0)   # 2000 tokens
    big = s.submit(InferenceRequest(prompt_tokens=1500, max_new_tokens=500), now=0.0)      # 2000: fits nowhere now
    small = s.submit(InferenceRequest(prompt_tokens=100, max_new_tokens=100), now=0.0)     # would fit b
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [("a", [first])]
    assert s.status(big) == "queued" and s.status(small) == "queued"  # small does not overtake
    assert s.stats()["devices"][0]["kv_used"] == 2000
    s.complete(first, now=1.0)
    r = s.step(now=1.0)
    assert r.dispatched == [big, small]


def test_misfit_moves_to_a_bigger_device_after_a_clock_drop() -> None:
    s = Scheduler([Device("a", 4.0), Device("b", 3.0), Device("c", 1.0)], max_batch_size=4)
    rid = s.submit(heavy(), now=0.0)
    assert s.step(now=0.0).batches[0].device == "a"
    # a throttles to half clock: capacity 512; 1.25 x 409.6 = 512 no longer fits.
    s.set_clock("a", 500.0, 1000.0, now=0.01)
    other = s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=10), now=0.01)
    r = s.step(now=0.01)
    assert r.migrated == [(rid, "a")]
    # The migrant comes first in its new device's batch; new work is placed after it.
    assert r.batches[0].device == "b" and r.batches[0].request_ids[0] == rid
    assert other in r.dispatched
    st = s.stats()
    assert (st["misfits"], st["migrated"]) == (1, 1)
    on_a = [i for b in r.batches if b.device == "a" for i in b.request_ids]
    assert rid not in on_a and st["devices"][0]["inflight_requests"] == len(on_a)
    assert st["devices"][1]["placed_util"] >= 409.6
    assert s.status(rid) == "in_flight"
    s.complete(rid, now=0.2)
    assert s.stats()["devices"][1]["completed_requests"] == 1
    assert s.check_invariants()


def test_misfit_without_a_bigger_device_stays_and_is_counted() -> None:
    s = Scheduler([Device("a", 4.0), Device("c", 1.0)], max_batch_size=4)
    rid = s.submit(heavy(), now=0.0)
    s.step(now=0.0)
    s.set_pressure("a", 0.6, now=0.01)  # capacity 409.6: does not fit, and c is smaller
    r = s.step(now=0.01)
    assert r.migrated == [] and s.status(rid) == "in_flight"
    st = s.stats()
    assert (st["misfits"], st["migrated"]) == (1, 0)
    # Checked once per capacity drop, not at every step.
    s.step(now=0.02)
    assert s.stats()["misfits"] == 1


def test_strict_requests_come_first_and_want_capacity_above_uclamp_min() -> None:
    s = Scheduler([Device("small", 1.0), Device("big", 4.0)], max_batch_size=4)
    normal = s.submit(InferenceRequest(prompt_tokens=10, priority=1.0), now=0.0)
    strict = s.submit(InferenceRequest(prompt_tokens=10, priority=0.1, sched_class="strict", uclamp_min=0.5), now=0.0)
    r = s.step(now=0.0)
    assert r.dispatched[0] == strict
    assert [b.device for b in r.batches if strict in b.request_ids] == ["big"]
    assert normal in r.dispatched


def test_strict_falls_back_to_priority_alone_when_no_big_device_has_room() -> None:
    s = Scheduler([Device("small", 1.0), Device("big", 4.0)], max_batch_size=1)
    s.submit(InferenceRequest(prompt_tokens=10, sched_class="strict"), now=0.0)
    s.step(now=0.0)  # big is now busy (one batch in flight)
    rid = s.submit(InferenceRequest(prompt_tokens=10, sched_class="strict", uclamp_min=0.9), now=0.0)
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [("small", [rid])]


def test_deadline_requests_are_admitted_by_bandwidth_and_refused_beyond_it() -> None:
    from capsched.errors import AdmissionError

    s = Scheduler([Device("a", 4.0), Device("b", 1.0)], max_batch_size=8)
    # Each needs u = 409.6; a admits 0.95 x 1024 = 972.8 in all, b 243.2.
    first = s.submit(heavy(sched_class="deadline"), now=0.0)
    second = s.submit(heavy(sched_class="deadline"), now=0.0)
    assert s.stats()["devices"][0]["dl_bw"] == pytest.approx(819.2)
    before = s.stats()
    with pytest.raises(AdmissionError, match="409.6"):
        s.submit(heavy(sched_class="deadline"), now=0.0)
    after = s.stats()
    # Nothing changed but the count of refused submits.
    assert after.pop("rejected") == before.pop("rejected") + 1 and after == before
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [("a", [first, second])]
    s.complete(first, now=0.1)
    assert s.stats()["devices"][0]["dl_bw"] == pytest.approx(409.6)
    s.submit(heavy(sched_class="deadline"), now=0.1)  # room again


def test_deadline_class_orders_by_deadline_before_everything() -> None:
    s = Scheduler([Device("a", 4.0), Device("b", 1.0)], max_batch_size=8)
    normal = s.submit(InferenceRequest(prompt_tokens=10, priority=1.0), now=0.0)
    strict = s.submit(InferenceRequest(prompt_tokens=10, sched_class="strict"), now=0.0)
    late = s.submit(InferenceRequest(prompt_tokens=10, sched_class="deadline", timeout=9.0), now=0.0)
    soon = s.submit(InferenceRequest(prompt_tokens=10, sched_class="deadline", timeout=3.0), now=0.0)
    r = s.step(now=0.0)
    order = [i for b in r.batches for i in b.request_ids]
    assert order[:2] == [soon, late] and set(order[2:]) == {strict, normal}


def test_deadline_class_needs_a_deadline() -> None:
    from capsched.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="deadline-class"):
        InferenceRequest(prompt_tokens=10, sched_class="deadline")
    with pytest.raises(InvalidRequestError, match="sched_class"):
        InferenceRequest(prompt_tokens=10, sched_class="realtime")


def test_slices_pin_tenants_and_share_the_parent_clock() -> None:
    from capsched import Slice

    gpu = Device("gpu0", 4.0, kv_tokens=80_000)
    a, b, shared = gpu.split(
        Slice("a", compute=3 / 7, memory=0.5, tenants=("alice",)),
        Slice("b", compute=2 / 7, memory=0.25, tenants=("bob",)),
        Slice("rest", compute=2 / 7, memory=0.25),
    )
    assert (a.name, a.parent, a.kv_tokens, a.tenants) == ("gpu0/a", "gpu0", 40_000, ("alice",))
    assert a.effective_capacity == pytest.approx(4.0 * 3 / 7)
    s = Scheduler([a, b, shared, Device("other", 1.0)], max_batch_size=8)
    ids = {who: [s.submit(InferenceRequest(prompt_tokens=10, tenant=who), now=0.0) for _ in range(3)]
           for who in ("alice", "bob", None)}
    r = s.step(now=0.0)
    where = {i: b.device for b in r.batches for i in b.request_ids}
    assert {where[i] for i in ids["alice"]} == {"gpu0/a"}
    assert {where[i] for i in ids["bob"]} == {"gpu0/b"}
    assert {where[i] for i in ids[None]} <= {"gpu0/rest", "other"}  # never on a pinned slice
    # set_clock on the parent reaches every slice, not the other device.
    s.set_clock("gpu0", 900.0, 1800.0, now=0.1)
    scales = [d["clock_scale"] for d in s.stats()["devices"]]
    assert scales == [0.5, 0.5, 0.5, 1.0]


def test_bad_slices_are_refused() -> None:
    from capsched import Slice
    from capsched.errors import ConfigError

    with pytest.raises(ConfigError, match="compute share"):
        Slice("x", compute=0.0, memory=0.5)
    with pytest.raises(ConfigError, match="add up"):
        Device("g", 1.0).split(Slice("x", 0.6, 0.5), Slice("y", 0.6, 0.5))
    with pytest.raises(ConfigError, match="tenants"):
        Device("g", 1.0, tenants="alice")


def test_symmetric_fast_path_is_per_partition() -> None:
    # Two equal shared cards and a pinned slice of another size: the shared group is
    # symmetric (the first card's batch fills before the second opens one) although the
    # fleet as a whole is not; the slice is its own (one-device) group.
    s = Scheduler([Device("a", 2.0), Device("b", 2.0), Device("s", 1.0, tenants=("t",))],
                  max_batch_size=3)
    shared = [s.submit(InferenceRequest(prompt_tokens=10), now=0.0) for _ in range(4)]
    pinned = s.submit(InferenceRequest(prompt_tokens=10, tenant="t"), now=0.0)
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [
        ("a", shared[:3]), ("b", shared[3:]), ("s", [pinned])]
    assert s.stats()["placed_fitting"] == 5
    # By fitness instead (a clock drop makes a and b unequal), work spreads by headroom.
    s2 = Scheduler([Device("a", 2.0, max_clock_mhz=1000.0), Device("b", 2.0)], max_batch_size=3)
    s2.set_clock("a", 900.0, now=0.0)
    ids = [s2.submit(heavy(), now=0.0) for _ in range(2)]
    r2 = s2.step(now=0.0)
    assert {b.device for b in r2.batches} == {"a", "b"}
    del ids


def test_a_full_slice_does_not_hold_back_other_tenants() -> None:
    # alice's slice takes one batch of 1; her second request waits, but bob's request,
    # behind it in FCFS order, is placed on his own slice in the same step.
    s = Scheduler([Device("a", 1.0, tenants=("alice",)), Device("b", 1.0, tenants=("bob",))],
                  policy="fcfs", max_batch_size=1)
    a1 = s.submit(InferenceRequest(prompt_tokens=10, tenant="alice"), now=0.0)
    a2 = s.submit(InferenceRequest(prompt_tokens=10, tenant="alice"), now=0.0)
    b1 = s.submit(InferenceRequest(prompt_tokens=10, tenant="bob"), now=0.0)
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [("a", [a1]), ("b", [b1])]
    assert s.status(a2) == "queued"
    s.complete(a1, now=1.0)
    assert [(b.device, b.request_ids) for b in s.step(now=1.0).batches] == [("a", [a2])]
    assert s.check_invariants()


def test_queued_deadline_readmission_moves_the_latest_deadline_first() -> None:
    s = Scheduler([Device("a", 4.0, max_clock_mhz=1000.0), Device("b", 4.0)], max_batch_size=1)
    busy = [s.submit(InferenceRequest(prompt_tokens=10), now=0.0) for _ in range(2)]
    s.step(now=0.0)  # both devices busy
    # u = 1024 x 0.2 / 1.0 = 204.8 each: admitted a, b, a, b (worst fit).
    dls = [s.submit(InferenceRequest(prompt_tokens=1000, max_new_tokens=1000, timeout=1.0,
                                     sched_class="deadline"), now=0.0) for i in range(4)]
    assert [d["dl_bw"] for d in s.stats()["devices"]] == pytest.approx([409.6, 409.6])
    s.set_clock("a", 400.0, now=0.0)  # a: 0.95 x 409.6 = 389.12 < 409.6
    s.step(now=0.0)
    st = s.stats()
    assert (st["misfits"], st["readmitted"]) == (1, 1)
    assert [d["dl_bw"] for d in st["devices"]] == pytest.approx([204.8, 614.4])
    # Equal deadlines: the one that moved is a's highest id (dls[2]). When both free up,
    # EDF (ties by id) runs dls[0] on a and dls[1] on b; dls[2] waits for b.
    s.complete(busy[0], now=0.1)
    s.complete(busy[1], now=0.1)
    r = s.step(now=0.1)
    assert sorted((b.device, b.request_ids[0]) for b in r.batches) == [("a", dls[0]), ("b", dls[1])]
    assert s.check_invariants()


def test_class_utilization_is_a_pelt_signal_that_adds_up_to_the_devices() -> None:
    period = 1.0 / 32.0
    s = Scheduler([Device("a", 1.0)], max_batch_size=2)
    assert s.class_util("chat") == 0.0
    c1 = s.submit(InferenceRequest(prompt_tokens=10, request_class="chat"), now=0.0)
    c2 = s.submit(InferenceRequest(prompt_tokens=10, request_class="code"), now=0.0)
    s.step(now=0.0)
    # Each holds one of 2 slots: a share of 512. After exactly 32 periods from idle, a
    # signal reaches half of its steady value: 256 each, the device 512.
    s.step(now=32 * period)
    assert s.class_util("chat") == pytest.approx(256.0, rel=1e-12)
    assert s.class_util("code") == pytest.approx(256.0, rel=1e-12)
    assert s.stats()["devices"][0]["util_avg"] == pytest.approx(512.0, rel=1e-12)
    # chat ends; 32 periods later its signal has halved and code's has grown.
    s.complete(c1, now=32 * period)
    s.step(now=64 * period)
    assert s.class_util("chat") == pytest.approx(128.0, rel=1e-12)
    total = s.class_util("chat") + s.class_util("code")
    assert total == pytest.approx(s.stats()["devices"][0]["util_avg"], rel=1e-12)
    # Frequency invariance: at half clock a request's share halves.
    s2 = Scheduler([Device("a", 1.0, max_clock_mhz=1000.0, clock_mhz=500.0)], max_batch_size=1)
    s2.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    s2.step(now=0.0)
    s2.step(now=1000.0)  # long enough to converge
    assert s2.class_util() == pytest.approx(512.0, rel=1e-9)
    with pytest.raises(InvalidArgumentError, match="request_class"):
        s.class_util(3)  # type: ignore[arg-type]
    del c2


def test_circuit_breaker_opens_probes_and_closes() -> None:
    cfg = Config(breaker_failures=2, breaker_cooldown=10.0, breaker_degrade=False, retry_base=0.0)
    s = Scheduler([Device("bad", 4.0), Device("ok", 1.0)], policy="fcfs", max_batch_size=1, config=cfg)

    def dev(name):
        return next(d for d in s.stats()["devices"] if d["name"] == name)

    ids = [s.submit(InferenceRequest(prompt_tokens=10), now=0.0) for _ in range(6)]
    for t in (0.0, 1.0):  # two failures in a row on "bad" open its breaker
        r = s.step(now=t)
        on_bad = [i for b in r.batches if b.device == "bad" for i in b.request_ids]
        for b in r.batches:
            if b.device == "ok":
                s.complete(b.request_ids[0], now=t)
        assert s.fail(on_bad[0], now=t, retryable=True) is True
    assert dev("bad")["breaker"] == "open" and s.stats()["breaker_trips"] == 1
    # Open: it receives nothing until the cool-down ends (t = 11).
    r = s.step(now=5.0)
    assert {b.device for b in r.batches} == {"ok"}
    s.complete(r.batches[0].request_ids[0], now=5.0)
    # Half-open at 11: one probe batch; a completion closes it.
    r = s.step(now=11.0)
    probe = [b for b in r.batches if b.device == "bad"]
    assert len(probe) == 1 and dev("bad")["breaker"] == "half_open"
    s.complete(probe[0].request_ids[0], now=11.5)
    assert dev("bad")["breaker"] == "closed" and dev("bad")["consecutive_failures"] == 0
    assert s.check_invariants()
    del ids


def test_a_failed_probe_opens_the_breaker_again_and_degrade_lowers_capacity() -> None:
    cfg = Config(breaker_failures=1, breaker_cooldown=1.0, retry_base=0.0)
    s = Scheduler([Device("g", 1.0)], policy="fcfs", max_batch_size=1, config=cfg)
    a = s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    s.step(now=0.0)
    s.fail(a, now=0.0, retryable=True)
    d = s.stats()["devices"][0]
    # One failure: failure rate 1/8, usable capacity 1024 x (1 - 1/8) = 896.
    assert d["breaker"] == "open" and d["fail_rate"] == 0.125 and d["capacity"] == 896.0
    assert s.step(now=0.5).batches == []
    r = s.step(now=1.0)  # half-open: the probe is the retried request
    assert r.dispatched == [a]
    s.fail(a, now=1.2, retryable=True)
    d = s.stats()["devices"][0]
    assert d["breaker"] == "open" and d["breaker_trips"] == 2
    assert s.step(now=1.5).batches == []
    assert s.step(now=2.2).dispatched == [a]
    s.complete(a, now=2.3)
    d = s.stats()["devices"][0]
    assert d["breaker"] == "closed" and d["fail_rate"] == pytest.approx((0.125 + (1 - 0.125) / 8) * 7 / 8)


def test_background_work_fills_idle_capacity_and_yields_to_online_requests() -> None:
    s = Scheduler([Device("g", 1.0)], policy="fcfs", max_batch_size=1)
    job = [s.submit(InferenceRequest(prompt_tokens=10, sched_class="background"), now=0.0) for _ in range(2)]
    online = s.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    # Online work first, although the job was submitted earlier.
    assert s.step(now=0.0).dispatched == [online]
    s.complete(online, now=0.5)
    # Idle: background runs, first come first served.
    assert s.step(now=0.5).dispatched == [job[0]]
    # Room left after online work is background's too (the same batch, here 2 slots).
    s2 = Scheduler([Device("g", 1.0)], policy="fcfs", max_batch_size=2)
    bg = s2.submit(InferenceRequest(prompt_tokens=10, sched_class="background"), now=0.0)
    on = s2.submit(InferenceRequest(prompt_tokens=10), now=0.0)
    assert s2.step(now=0.0).dispatched == [on, bg]
    # Continuous mode: a queued online request evicts background work to take its slot.
    late = s.submit(InferenceRequest(prompt_tokens=10), now=1.0)
    r = s.step(now=1.0, free_slots={"g": 0})
    assert r.preempted == [(job[0], "g")] and r.dispatched == [late]
    assert s.status(job[0]) == "queued" and s.preemptions(job[0])[0] == 1
    assert s.check_invariants()


def test_pools_route_requests_and_fall_back_while_a_pool_is_down() -> None:
    from capsched.errors import InvalidRequestError

    cfg = Config(breaker_failures=1, breaker_cooldown=10.0, retry_base=0.0, breaker_degrade=False)
    s = Scheduler([Device("h1", 4.0, pool="h100"), Device("a1", 2.0, pool="a100"), Device("x", 1.0)],
                  policy="fcfs", max_batch_size=1, config=cfg)
    a = s.submit(InferenceRequest(prompt_tokens=5, pool="h100", fallback_pool="a100"), now=0.0)
    b = s.submit(InferenceRequest(prompt_tokens=5, pool="h100"), now=0.0)
    c = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    # b waits for its pool without holding back c (which may use any device).
    r = s.step(now=0.0)
    assert [(x.device, x.request_ids) for x in r.batches] == [("h1", [a]), ("a1", [c])]
    s.complete(c, now=0.1)
    # a fails: h1's breaker opens, the h100 pool is down; a falls back to the a100 pool,
    # while b (no fallback) keeps waiting for its own.
    s.fail(a, now=0.1, retryable=True)
    r = s.step(now=0.2)
    assert [(x.device, x.request_ids) for x in r.batches] == [("a1", [a])]
    assert s.status(b) == "queued"
    s.complete(a, now=0.3)
    r = s.step(now=10.2)  # h1 half-open: b is its probe
    assert [(x.device, x.request_ids) for x in r.batches] == [("h1", [b])]
    with pytest.raises(InvalidRequestError, match="'l4' has no device"):
        s.submit(InferenceRequest(prompt_tokens=5, pool="l4"), now=11.0)
    with pytest.raises(InvalidRequestError, match="fallback_pool"):
        InferenceRequest(prompt_tokens=5, fallback_pool="a100")
    assert s.check_invariants()


def test_a_waiting_pooled_request_does_not_hide_another_tenants_work() -> None:
    # Found by the reference-model property test: a pooled request that found no room was
    # counted as passed over, then counted again when its group (the shared devices)
    # filled up, so the step stopped before reaching a pinned tenant's request.
    # (A shared device in pool p1 too: a pooled request no device is open to is refused
    # at submit since 2026-11-29, so this one is servable and waits for room.)
    s = Scheduler(
        [
            Device("shared", capacity=0.25),
            Device("shared-p1", capacity=0.25, pool="p1"),
            Device("pinned", capacity=0.25, tenants=("t2",), pool="p1"),
        ],
        policy="fcfs",
        max_batch_size=1,
    )
    for _ in range(3):
        s.submit(InferenceRequest(prompt_tokens=100, max_new_tokens=1), now=0.0)
    assert sorted(b.request_ids for b in s.step(now=0.0).batches) == [[1], [2]]
    s.submit(InferenceRequest(prompt_tokens=100, max_new_tokens=1, sched_class="strict", pool="p1"), now=0.0)
    rid = s.submit(InferenceRequest(prompt_tokens=100, max_new_tokens=1, tenant="t2"), now=0.0)
    res = s.step(now=1.0)
    assert [(b.device, b.request_ids) for b in res.batches] == [("pinned", [rid])]
    assert s.check_invariants()


def test_a_pooled_request_no_device_is_open_to_is_refused() -> None:
    s = Scheduler([Device("shared", capacity=0.25), Device("pinned", capacity=0.25, tenants=("t2",), pool="p1")])
    with pytest.raises(InvalidRequestError, match="no device is open to tenant None in the request's pool"):
        s.submit(InferenceRequest(prompt_tokens=100, max_new_tokens=1, pool="p1"), now=0.0)


def test_a_mostly_busy_mixed_fleet_places_only_on_devices_with_room() -> None:
    # Capacity-aware placement scans only the devices that still have room in the step
    # (docs/internals.md): devices fill up one after another within a step, and a step
    # after most of them are busy uses exactly the ones that were freed.
    caps = [4.0, 3.0, 2.0, 1.0] * 4
    names = [f"d{i}" for i in range(len(caps))]
    s = Scheduler([Device(n, c) for n, c in zip(names, caps)], max_batch_size=2)
    ids = [s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=10), now=0.0) for _ in range(40)]
    first = s.step(now=0.0)
    assert sorted(b.device for b in first.batches) == sorted(names)
    assert all(len(b.request_ids) == 2 for b in first.batches)
    assert sorted(i for b in first.batches for i in b.request_ids) == ids[:32]
    on = {b.device: b.request_ids for b in first.batches}
    assert s.step(now=0.5).batches == []  # every device is busy
    for name in ("d14", "d5"):
        for rid in on[name]:
            s.complete(rid, now=1.0)
    again = s.step(now=1.0)
    # d5 (capacity 3) is stronger than d14 (capacity 2): it takes the next two first.
    assert [(b.device, b.request_ids) for b in again.batches] == [("d5", ids[32:34]), ("d14", ids[34:36])]
    assert s.stats()["queued"] == 4


def _seeded(name: str, capacity: float) -> Device:
    # a service model: 1e-5 s a prompt token, 10 ms a decode step
    return Device(name, capacity, prefill_s_per_token=1e-5, decode_step_s=1e-2, max_inflight_batches=2)


def prompt_heavy() -> InferenceRequest:
    # The per-token estimate (1e-4 s of work a token) gives u = 1024 x 0.4 / 0.3, clamped
    # to 1024: 1.25 x 1024 fits no device, not even an idle one of full capacity. Its
    # service model says it ends in 0.05 s alone (4,000 prompt tokens, one decode step).
    return InferenceRequest(prompt_tokens=4000, max_new_tokens=1, timeout=0.3)


def test_wait_for_fit_runs_a_request_that_fits_no_device_even_idle_on_an_idle_one() -> None:
    # It used to wait for a device it fits, which could never come, and expire on an
    # idle fleet.
    s = Scheduler([_seeded("big", 2.0), _seeded("small", 1.0)], max_batch_size=1, config=Config(wait_for_fit=True))
    rid = s.submit(prompt_heavy(), now=0.0)
    r = s.step(now=0.0)
    assert [(b.device, b.request_ids) for b in r.batches] == [("big", [rid])]
    st = s.stats()
    assert (st["placed_fitting"], st["placed_fallback"], st["deferred"]) == (0, 1, 0)


def test_wait_for_fit_still_holds_it_while_no_device_is_idle() -> None:
    s = Scheduler([_seeded("big", 2.0), _seeded("small", 1.0)], max_batch_size=1, config=Config(wait_for_fit=True))
    fillers = [s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=10), now=0.0) for _ in range(2)]
    r = s.step(now=0.0)
    assert sorted(b.device for b in r.batches) == ["big", "small"]  # both busy, both with room
    rid = s.submit(prompt_heavy(), now=0.0)
    assert s.step(now=0.01).batches == []
    assert s.status(rid) == "queued" and s.stats()["deferred"] == 1
    s.complete(fillers[1], now=0.02)  # small is idle again: it takes it there
    r = s.step(now=0.02)
    assert [(b.device, b.request_ids) for b in r.batches] == [("small", [rid])]


def test_deadline_admission_skips_devices_whose_breaker_stays_open_past_the_deadline() -> None:
    # It admitted the request to a device whose breaker was open until after its
    # deadline: certain to expire, holding deadline bandwidth meanwhile.
    from capsched.errors import AdmissionError

    s = Scheduler([Device("a"), Device("b")], policy="edf", max_batch_size=1,
                  config=Config(breaker_failures=1, breaker_cooldown=10))
    first = [s.submit(InferenceRequest(prompt_tokens=10), now=0.0) for _ in range(2)]
    s.step(now=0.0)
    for rid in first:
        s.fail(rid, now=0.0, error="boom")
    assert [d["breaker"] for d in s.stats()["devices"]] == ["open", "open"]  # until t = 10
    with pytest.raises(AdmissionError, match=r"before its deadline 6 \(device 0: breaker open until 10, "
                                             r"device 1: breaker open until 10\)"):
        s.submit(InferenceRequest(prompt_tokens=10, timeout=5.0, sched_class="deadline"), now=1.0)
    assert [d["dl_bw"] for d in s.stats()["devices"]] == [0.0, 0.0]
    # A deadline after the cool-down: the device will take it once half-open.
    late = s.submit(InferenceRequest(prompt_tokens=10, timeout=60.0, sched_class="deadline"), now=1.0)
    res = s.step(now=10.0)
    assert [rid for b in res.batches for rid in b.request_ids] == [late]


def test_background_work_waits_while_a_trimmed_or_held_batch_queues_online_work_again() -> None:
    # Background placement ran before batches were trimmed to a preferred size: the cut
    # queued normal request 2 again while background request 3 went out on d1, against
    # "only in a step that leaves no online request queued".
    for preferred in ((1, 3), ()):
        s = Scheduler([Device(name="d0"), Device(name="d1")], policy="fcfs", max_batch_size=4,
                      config=Config(max_queue_delay=0.05, preferred_batch_sizes=preferred))
        a, b = (s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=10), now=0.0) for _ in range(2))
        g = s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=10, sched_class="background"), now=0.0)
        res = s.step(0.0)
        if preferred:  # trimmed to 1: b is queued again, so g waits
            assert [bt.request_ids for bt in res.batches] == [[a]] and s.status(b) == "queued"
        else:  # held to fill: both queued again, so g waits
            assert res.batches == [] and res.held == 1 and s.status(a) == s.status(b) == "queued"
        assert s.status(g) == "queued"
        assert s.check_invariants()
    # With no online work queued after the cut, background work goes out and may be held itself.
    s = Scheduler([Device(name="d0")], policy="fcfs", max_batch_size=4, config=Config(max_queue_delay=0.05))
    g = s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=10, sched_class="background"), now=0.0)
    assert s.step(0.0).held == 1 and s.status(g) == "queued"
    assert [bt.request_ids for bt in s.step(0.06).batches] == [[g]]
