"""Hand-worked tests of batch assembly (issue 4) through the public Python API.

Every expected value below is worked out by hand from the rules in the core
(``cpp/src/scheduler.cpp``: ``has_room``, ``hold_batches``, ``preempt``,
``batch_finished``; ``ServiceModel`` in ``cpp/include/capsched/device.hpp``):

* token budget: a batch's tokens are the sum of its members' prompt + max_new tokens;
  a request joins only if the sum stays within ``Config.max_batch_tokens`` (a larger one
  opening a batch runs alone). In continuous mode it bounds each step's joiners.
* wait or go (batch mode, dynamic batching on, ``max_queue_delay > 0``): a batch below
  the size limit (and below the token budget) is held unless its oldest member has
  waited ``max_queue_delay`` or its slack ``min(deadline) - now - estimate <= 0``;
  ``next_step_at = min(oldest + delay, now + slack)``.
* service estimate with seeds (p, d, e) = (prefill_s_per_token, decode_step_s,
  decode_s_per_seq): ``(p*P + d*S + e*S*B) / clock_scale``, with P the batch's prompt
  tokens, S its decode steps (largest max_new_tokens), B its size.

The seeds used are powers of two so that the arithmetic is exact:
p = 2^-10, d = 2^-5, e = 2^-6. A request of 128 prompt tokens and 8 new tokens alone:
0.125 + 0.25 + 0.125 = 0.5 s; two of them: 0.25 + 0.25 + 0.25 = 0.75 s.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import InvalidArgumentError

P_S = 2.0**-10  # prefill seconds per prompt token
D_S = 2.0**-5  # one decode step
E_S = 2.0**-6  # a decode step's extra per sequence


def req(prompt: int = 128, new: int = 8, **kw) -> InferenceRequest:
    return InferenceRequest(prompt_tokens=prompt, max_new_tokens=new, **kw)


def seeded(name: str = "a", **kw) -> Device:
    return Device(name, prefill_s_per_token=P_S, decode_step_s=D_S, decode_s_per_seq=E_S, **kw)


def shape(res) -> list[tuple[str, list[int]]]:
    return [(b.device, list(b.request_ids)) for b in res.batches]


def healthy(s: Scheduler) -> None:
    assert s.stats()["conservation_ok"]
    assert s.check_invariants()


# --------------------------------------------------------------------- token budget


def test_token_budget_batch_mode():
    s = Scheduler([Device("a")], policy="fcfs", max_batch_size=8, config=Config(max_batch_tokens=1000))
    ids = [s.submit(req(300, 100), now=0.0) for _ in range(5)]  # 400 tokens each
    # 400 + 400 = 800 <= 1000; a third would make 1200.
    r = s.step(now=0.0)
    assert shape(r) == [("a", ids[0:2])]
    s.complete_many(ids[0:2], now=1.0)
    r = s.step(now=1.0)
    assert shape(r) == [("a", ids[2:4])]
    s.complete_many(ids[2:4], now=2.0)
    big = s.submit(req(1400, 100), now=2.0)  # 1500 tokens: over the budget on its own
    r = s.step(now=2.0)
    assert shape(r) == [("a", [ids[4]])]  # 400 + 1500 > 1000: the big one does not join
    s.complete(ids[4], now=3.0)
    small = s.submit(req(300, 100), now=3.0)
    r = s.step(now=3.0)
    assert shape(r) == [("a", [big])]  # larger than the budget: runs alone
    assert s.status(small) == "queued"
    s.complete(big, now=4.0)
    assert shape(s.step(now=4.0)) == [("a", [small])]
    s.complete(small, now=5.0)
    st_ = s.stats()
    assert (st_["completed"], st_["batches"], st_["dispatched"]) == (7, 5, 7)
    healthy(s)


def test_token_budget_continuous_mode_bounds_joiners_per_step():
    s = Scheduler([Device("a"), Device("b")], policy="fcfs", max_batch_size=8,
                  config=Config(max_batch_tokens=1000))
    ids = [s.submit(req(300, 100), now=0.0) for _ in range(7)]
    # Eight free slots on each device, unlimited KV: the budget alone bounds the joiners.
    r = s.step(now=0.0, free_slots={"a": 8, "b": 8})
    assert shape(r) == [("a", ids[0:2]), ("b", ids[2:4])]
    r = s.step(now=0.5, free_slots={"a": 8, "b": 8})  # a new step: a new budget
    assert shape(r) == [("a", ids[4:6]), ("b", [ids[6]])]
    assert all(sum(400 for _ in b.request_ids) <= 1000 for b in r.batches)
    healthy(s)


# --------------------------------------------------------------------- wait or go


def wait_sched(max_batch_size: int = 4, delay: float = 1.0, **cfg) -> Scheduler:
    return Scheduler([seeded()], policy="fcfs", max_batch_size=max_batch_size,
                     config=Config(max_queue_delay=delay, **cfg))


def test_estimate_service_is_the_seeded_model():
    s = wait_sched()
    assert s.estimate_service("a", 128, 8, 1) == 0.5
    assert s.estimate_service("a", 256, 8, 2) == 0.75
    assert s.estimate_service("a", 0, 0, 1) == 0.0
    # Divided by the clock scale: at half clock everything takes twice as long.
    half = Scheduler([seeded(max_clock_mhz=2000, clock_mhz=1000)])
    assert half.estimate_service("a", 256, 8, 2) == 1.5
    half.set_clock("a", 2000, now=0.0)
    assert half.estimate_service("a", 256, 8, 2) == 0.75
    # Unseeded: default work per token (1e-4 s) x (P + S x B) on the capacity (1024 here).
    plain = Scheduler([Device("u")])
    assert plain.estimate_service("u", 128, 8, 2) == pytest.approx(1e-4 * (128 + 16))
    with pytest.raises(InvalidArgumentError):
        s.estimate_service("nope", 1, 1, 1)


def test_batch_below_limit_is_held_until_the_queue_delay():
    s = wait_sched()
    a = s.submit(req(), now=0.0)
    b = s.submit(req(), now=0.25)
    r = s.step(now=0.5)
    # 2 < 4, waited 0.5 < 1.0, no deadline (infinite slack): held.
    assert (r.batches, r.held, r.next_step_at) == ([], 1, 1.0)  # oldest 0 + delay 1
    assert not r
    assert (s.status(a), s.status(b)) == ("queued", "queued")
    st_ = s.stats()
    assert (st_["held"], st_["dispatched"], st_["batches"], st_["queued"], st_["in_flight"]) == (1, 0, 0, 2, 0)
    assert st_["placed_fitting"] + st_["placed_fallback"] == 0
    assert st_["devices"][0]["inflight_batches"] == 0 and st_["devices"][0]["kv_used"] == 0
    healthy(s)
    r = s.step(now=0.75)
    assert (r.held, r.next_step_at) == (1, 1.0)
    assert s.stats()["held"] == 2  # counted per step
    r = s.step(now=1.0)  # the oldest has waited the delay: it goes
    assert shape(r) == [("a", [a, b])]
    assert (r.held, r.next_step_at) == (0, math.inf)
    assert s.stats()["placed_fitting"] == 2
    s.complete_many([a, b], now=2.0)
    healthy(s)


def test_full_batch_goes_at_once():
    s = wait_sched()
    ids = [s.submit(req(), now=0.0) for _ in range(5)]
    r = s.step(now=0.0)
    assert shape(r) == [("a", ids[:4])]
    assert (r.held, r.next_step_at) == (0, math.inf)
    healthy(s)


def test_batch_at_the_token_budget_counts_as_full():
    s = wait_sched(max_batch_tokens=272)  # two requests of 136 tokens fill it
    ids = [s.submit(req(), now=0.0) for _ in range(3)]
    r = s.step(now=0.0)
    assert shape(r) == [("a", ids[:2])]
    assert r.held == 0
    healthy(s)


def test_batch_goes_when_its_most_urgent_members_slack_runs_out():
    s = wait_sched()
    a = s.submit(req(), now=0.0)
    b = s.submit(req(deadline=1.5), now=0.25)
    r = s.step(now=0.5)
    # estimate (256, 8, 2) = 0.75; slack = 1.5 - 0.5 - 0.75 = 0.25 > 0: held,
    # next_step_at = min(0 + 1.0, 0.5 + 0.25) = 0.75.
    assert (r.batches, r.held, r.next_step_at) == ([], 1, 0.75)
    r = s.step(now=0.75)  # slack = 1.5 - 0.75 - 0.75 = 0: it goes
    assert shape(r) == [("a", [a, b])]
    assert (r.held, r.next_step_at) == (0, math.inf)
    healthy(s)


def test_no_slack_from_the_start_goes_at_once():
    s = wait_sched()
    a = s.submit(req(deadline=0.75), now=0.0)
    r = s.step(now=0.25)  # alone: 0.5; slack = 0.75 - 0.25 - 0.5 = 0
    assert shape(r) == [("a", [a])]
    assert s.stats()["held"] == 0
    healthy(s)


def test_slack_uses_the_clock_scaled_estimate():
    s = Scheduler([seeded(max_clock_mhz=2000, clock_mhz=1000)], policy="fcfs", max_batch_size=4,
                  config=Config(max_queue_delay=1.0))
    a = s.submit(req(deadline=1.25), now=0.0)
    # At half clock one request takes 1.0: slack at 0.25 is 1.25 - 0.25 - 1.0 = 0: goes.
    assert shape(s.step(now=0.25)) == [("a", [a])]
    s2 = Scheduler([seeded(max_clock_mhz=2000, clock_mhz=1000)], policy="fcfs", max_batch_size=4,
                   config=Config(max_queue_delay=1.0))
    s2.submit(req(deadline=1.5), now=0.0)
    r = s2.step(now=0.25)  # slack 0.25: held until 0.5
    assert (r.held, r.next_step_at) == (1, 0.5)
    healthy(s)
    healthy(s2)


def test_dynamic_batching_off_ignores_the_queue_delay():
    s = Scheduler([seeded()], policy="fcfs", max_batch_size=4, enable_dynamic_batching=False,
                  config=Config(max_queue_delay=1.0, preferred_batch_sizes=(2, 4)))
    a = s.submit(req(), now=0.0)
    r = s.step(now=0.0)
    assert shape(r) == [("a", [a])]
    assert (r.held, r.next_step_at) == (0, math.inf)
    s.complete(a, now=0.5)
    ids = [s.submit(req(), now=0.5) for _ in range(3)]
    r = s.step(now=0.5)
    assert shape(r) == [("a", ids)]  # not cut to the preferred 2
    st_ = s.stats()
    assert (st_["held"], st_["trimmed"], st_["dynamic_batching"]) == (0, 0, False)
    healthy(s)


def test_zero_queue_delay_goes_at_once():
    s = Scheduler([seeded()], policy="fcfs", max_batch_size=4)
    a = s.submit(req(), now=0.0)
    assert shape(s.step(now=0.0)) == [("a", [a])]
    healthy(s)


# Regression (failed on 853b9ce): hold_batches decides 'waited long enough' with now -
# oldest >= max_queue_delay but reports next_step_at = oldest + max_queue_delay; with
# rounding (1.4 - 0.4 = 0.9999999999999999 < 1.0 while 0.4 + 1.0 == 1.4) the batch is
# held with next_step_at == now, and a server that steps at next_step_at on a virtual
# clock holds it again forever
def test_queue_delay_boundary_is_consistent():
    s = Scheduler([Device("a")], policy="fcfs", max_batch_size=2, config=Config(max_queue_delay=1.0))
    a = s.submit(req(), now=0.4)
    r = s.step(now=0.4 + 1.0)
    for _ in range(3):  # step again when told to
        if not r.held:
            break
        assert r.next_step_at > r.now  # else stepping at next_step_at changes nothing
        r = s.step(now=r.next_step_at)
    assert r.dispatched == [a]


# --------------------------------------------------------------------- preferred sizes


def test_preferred_sizes_cut_and_wait():
    s = wait_sched(max_batch_size=8, preferred_batch_sizes=(2, 4))
    ids = [s.submit(req(), now=0.0) for _ in range(7)]
    r = s.step(now=0.0)
    # 7 < 8: not full; the largest preferred size reached is 4: cut to 4, the last 3
    # placed go back to the queue (in order).
    assert shape(r) == [("a", ids[:4])]
    assert (r.held, r.next_step_at) == (0, math.inf)
    assert [s.status(i) for i in ids[4:]] == ["queued"] * 3
    st_ = s.stats()
    assert (st_["trimmed"], st_["held"], st_["dispatched"], st_["queued"]) == (3, 0, 4, 3)
    assert st_["devices"][0]["inflight_requests"] == 4
    assert st_["devices"][0]["kv_used"] == 4 * 136
    healthy(s)
    s.complete_many(ids[:4], now=0.5)
    r = s.step(now=0.5)  # 3 queued: cut to 2
    assert shape(r) == [("a", ids[4:6])]
    assert s.stats()["trimmed"] == 4
    s.complete_many(ids[4:6], now=0.6)
    r = s.step(now=0.6)  # 1 < smallest preferred size: held until 0 + 1.0
    assert (r.batches, r.held, r.next_step_at) == ([], 1, 1.0)
    r = s.step(now=1.0)
    assert shape(r) == [("a", [ids[6]])]
    s.complete(ids[6], now=1.5)
    assert s.stats()["completed"] == 7
    healthy(s)


def test_preferred_size_exactly_reached_goes_uncut():
    s = wait_sched(max_batch_size=8, preferred_batch_sizes=(2, 4))
    ids = [s.submit(req(), now=0.0) for _ in range(4)]
    assert shape(s.step(now=0.0)) == [("a", ids)]
    assert s.stats()["trimmed"] == 0
    healthy(s)


# --------------------------------------------------------------------- non-batchable


def test_non_batchable_goes_alone_at_once():
    s = Scheduler([seeded("x"), seeded("y")], policy="fcfs", max_batch_size=4,
                  config=Config(max_queue_delay=1.0))
    nb = s.submit(req(batchable=False), now=0.0)
    a = s.submit(req(), now=0.0)
    b = s.submit(req(), now=0.0)
    r = s.step(now=0.0)
    # nb takes x alone (not held: it never waits to fill); a and b fill y's batch, which
    # is below 4 and so held.
    assert shape(r) == [("x", [nb])]
    assert (r.held, r.next_step_at) == (1, 1.0)
    assert (s.status(a), s.status(b)) == ("queued", "queued")
    healthy(s)


def test_non_batchable_alone_in_continuous_mode():
    s = Scheduler([Device("x")], policy="fcfs", max_batch_size=4)
    nb = s.submit(req(batchable=False), now=0.0)
    a = s.submit(req(), now=0.0)
    r = s.step(now=0.0, free_slots={"x": 4})
    assert shape(r) == [("x", [nb])]
    assert s.status(a) == "queued"
    r = s.step(now=0.1, free_slots={"x": 3})
    assert shape(r) == [("x", [a])]
    healthy(s)


# --------------------------------------------------------------------- AIMD


def test_aimd_batch_limit():
    s = Scheduler([Device("a")], policy="fcfs", max_batch_size=8, config=Config(latency_target=1.0))

    def limit() -> float:
        return s.stats()["devices"][0]["batch_limit"]

    ids = [s.submit(req(), now=0.0) for _ in range(20)]
    assert limit() == 8.0
    r = s.step(now=0.0)
    assert len(r.batches[0]) == 8
    s.complete_many(r.dispatched, now=2.0)  # took 2.0 > 1.0: halve
    assert limit() == 4.0
    r = s.step(now=2.0)
    assert len(r.batches[0]) == 4
    s.complete_many(r.dispatched, now=2.5)  # 0.5 <= 1.0: + 1
    assert limit() == 5.0
    r = s.step(now=2.5)
    assert len(r.batches[0]) == 5
    s.complete_many(r.dispatched, now=4.0)  # 1.5: floor(5 / 2) = 2
    assert limit() == 2.0
    r = s.step(now=4.0)
    assert len(r.batches[0]) == 2
    s.complete_many(r.dispatched, now=5.0)  # exactly the target counts as within
    assert limit() == 3.0
    r = s.step(now=5.0)
    assert r.dispatched == [ids[19]]
    s.complete(ids[19], now=10.0)  # 5.0 > 1: floor(3 / 2) = 1
    assert limit() == 1.0
    healthy(s)


def test_aimd_limit_never_below_one_nor_above_max():
    s = Scheduler([Device("a")], policy="fcfs", max_batch_size=2, config=Config(latency_target=1.0))
    for t in range(3):
        i = s.submit(req(), now=float(t * 10))
        s.step(now=float(t * 10))
        s.complete(i, now=float(t * 10 + 5))
    assert s.stats()["devices"][0]["batch_limit"] == 1.0
    for t in range(3, 6):
        i = s.submit(req(), now=float(t * 10))
        s.step(now=float(t * 10))
        s.complete(i, now=float(t * 10))
    assert s.stats()["devices"][0]["batch_limit"] == 2.0
    healthy(s)


def test_aimd_off_without_dynamic_batching():
    s = Scheduler([Device("a")], policy="fcfs", max_batch_size=8, enable_dynamic_batching=False,
                  config=Config(latency_target=1.0))
    for _ in range(16):
        s.submit(req(), now=0.0)
    r = s.step(now=0.0)
    s.complete_many(r.dispatched, now=5.0)
    assert s.stats()["devices"][0]["batch_limit"] == 8.0
    assert len(s.step(now=5.0).batches[0]) == 8
    healthy(s)


def test_failed_member_teaches_nothing():
    s = Scheduler([seeded()], policy="fcfs", max_batch_size=8, config=Config(latency_target=1.0))
    a, b = s.submit(req(), now=0.0), s.submit(req(), now=0.0)
    s.step(now=0.0)
    s.complete(a, now=5.0)
    s.fail(b, now=5.0, retryable=False)
    d = s.stats()["devices"][0]
    assert (d["batch_limit"], d["service_samples"]) == (8.0, 0)
    healthy(s)


# --------------------------------------------------------------------- service model


def _rls_once(z: tuple[float, float, float], observed: float) -> tuple[float, ...]:
    # One recursive-least-squares step from m = (1, 1, 1), covariance I, lambda 0.98.
    denom = 0.98 + sum(v * v for v in z)
    err = observed - sum(z)
    return tuple(1.0 + v / denom * err for v in z)


def test_service_model_learns_from_a_batch_with_reported_output_tokens():
    s = Scheduler([seeded()], policy="fcfs", max_batch_size=4)
    a = s.submit(req(128, 16), now=0.0)
    assert s.estimate_service("a", 128, 8, 1) == 0.5
    s.step(now=0.0)
    s.complete(a, now=1.5, output_tokens=8)  # 8 decode steps, not max_new_tokens' 16
    d = s.stats()["devices"][0]
    assert d["service_samples"] == 1
    m = _rls_once((P_S * 128, D_S * 8, E_S * 8), 1.5)
    assert d["service_multipliers"] == pytest.approx(m, rel=1e-12)
    est = s.estimate_service("a", 128, 8, 1)
    assert est == pytest.approx(0.5 + 0.09375 / 1.07375, rel=1e-12)
    assert 0.5 < est < 1.5  # moved toward the observed 1.5
    healthy(s)


def test_service_model_uses_max_new_tokens_when_output_not_reported():
    s = Scheduler([seeded()], policy="fcfs", max_batch_size=4)
    a = s.submit(req(128, 16), now=0.0)
    s.step(now=0.0)
    s.complete(a, now=1.5)
    m = _rls_once((P_S * 128, D_S * 16, E_S * 16), 1.5)
    assert s.stats()["devices"][0]["service_multipliers"] == pytest.approx(m, rel=1e-12)


def test_service_model_batch_size_and_clock_are_folded_in():
    # A batch of two at half clock taking 3.0 s is 1.5 s of full-clock work.
    s = Scheduler([seeded(max_clock_mhz=2000, clock_mhz=1000)], policy="fcfs", max_batch_size=4)
    ids = [s.submit(req(128, 8), now=0.0) for _ in range(2)]
    s.step(now=0.0)
    s.complete_many(ids, now=3.0)
    m = _rls_once((P_S * 256, D_S * 8, E_S * 8 * 2), 1.5)
    assert s.stats()["devices"][0]["service_multipliers"] == pytest.approx(m, rel=1e-12)


def _rls(m, cov, z, observed, lam=0.98):
    # The core's update (ServiceModel::learn), multipliers clamped to [1/16, 16].
    pz = [sum(cov[i][j] * z[j] for j in range(3)) for i in range(3)]
    denom = lam + sum(z[i] * pz[i] for i in range(3))
    err = observed - sum(m[i] * z[i] for i in range(3))
    m = [min(16.0, max(1.0 / 16.0, m[i] + pz[i] / denom * err)) for i in range(3)]
    cov = [[(cov[i][j] - pz[i] * pz[j] / denom) / lam for j in range(3)] for i in range(3)]
    return m, cov


def test_service_model_moves_toward_the_observed_time_and_counts_samples():
    s = Scheduler([seeded()], policy="fcfs", max_batch_size=4)
    z = (P_S * 128, D_S * 8, E_S * 8)
    m, cov = [1.0, 1.0, 1.0], [[float(i == j) for j in range(3)] for i in range(3)]
    t, last = 0.0, 0.5
    for k in range(1, 31):
        i = s.submit(req(128, 8), now=t)
        s.step(now=t)
        t += 1.5
        s.complete(i, now=t)
        m, cov = _rls(m, cov, z, 1.5)
        d = s.stats()["devices"][0]
        assert d["service_samples"] == k
        assert d["service_multipliers"] == pytest.approx(tuple(m), rel=1e-9)
        est = s.estimate_service("a", 128, 8, 1)
        assert last < est < 1.5  # every sample moves it closer to the observed 1.5 s
        last = est
    # (Slowly: the covariance starts at I whatever the seeds' scale; 30 identical
    # samples of 1.5 s take the estimate from 0.5 s to about 1.30 s.)
    assert last == pytest.approx(1.2961588554338466, rel=1e-9)
    healthy(s)


def test_service_model_learns_per_request_in_continuous_mode():
    s = Scheduler([seeded()], policy="fcfs", max_batch_size=4)
    a, b = s.submit(req(), now=0.0), s.submit(req(), now=0.0)
    s.step(now=0.0, free_slots={"a": 2})
    s.complete(a, now=1.0)
    assert s.stats()["devices"][0]["service_samples"] == 1
    s.complete(b, now=2.0)
    d = s.stats()["devices"][0]
    assert d["service_samples"] == 2
    assert d["batch_limit"] == 4.0  # no AIMD outside batch mode
    healthy(s)


def test_unseeded_device_learns_nothing():
    s = Scheduler([Device("a")], policy="fcfs", max_batch_size=4)
    a = s.submit(req(), now=0.0)
    s.step(now=0.0)
    s.complete(a, now=1.0)
    d = s.stats()["devices"][0]
    assert (d["service_samples"], d["service_multipliers"]) == (0, (1.0, 1.0, 1.0))


# --------------------------------------------------------------------- placement


def mixed_fleet() -> list[Device]:
    # "big" has more capacity (scores better) but a slow service model: 10 prompt and 10
    # new tokens take 10 x 0.5 = 5.0 s there and 10 x 0.01 = 0.1 s on "small".
    return [Device("big", capacity=2, decode_step_s=0.5), Device("small", capacity=1, decode_step_s=0.01)]


def test_placement_keeps_deadline_work_off_a_device_too_slow_for_it():
    s = Scheduler(mixed_fleet(), policy="fcfs", max_batch_size=4)
    assert s.estimate_service("big", 10, 10, 1) == 5.0
    assert s.estimate_service("small", 10, 10, 1) == pytest.approx(0.1)
    urgent = s.submit(req(10, 10, deadline=1.0), now=0.0)
    relaxed = s.submit(req(10, 10), now=0.0)
    r = s.step(now=0.0)
    assert shape(r) == [("small", [urgent]), ("big", [relaxed])]
    st_ = s.stats()
    assert (st_["placed_fitting"], st_["placed_fallback"]) == (2, 0)
    healthy(s)


def test_placement_falls_back_when_no_device_is_in_time():
    s = Scheduler(mixed_fleet(), policy="fcfs", max_batch_size=4)
    hopeless = s.submit(req(10, 10, deadline=0.05), now=0.0)
    r = s.step(now=0.0)
    # Fits nowhere in time: the device with the most spare capacity, as a fallback.
    assert shape(r) == [("big", [hopeless])]
    st_ = s.stats()
    assert (st_["placed_fitting"], st_["placed_fallback"]) == (0, 1)
    healthy(s)


# Regression (failed on 853b9ce): a symmetric placement group (same capacity, KV budget
# and energy) takes the first device with room without the in_time check, so a deadline
# request lands on a device whose service model says it cannot finish in time (and
# counts as placed_fitting)
def test_placement_in_time_also_in_a_symmetric_group():
    s = Scheduler([Device("slow", decode_step_s=0.5), Device("fast", decode_step_s=0.01)],
                  policy="fcfs", max_batch_size=4)
    urgent = s.submit(req(10, 10, deadline=1.0), now=0.0)  # slow: 5.0 s, fast: 0.1 s
    r = s.step(now=0.0)
    assert shape(r) == [("fast", [urgent])]
    assert s.stats()["placed_fitting"] == 1
    healthy(s)


def test_deadline_work_waits_for_a_device_in_time_with_defer_late():
    # Config(defer_late=True): only "big" (5.0 s, too slow for the deadline) has room
    # while "small" (0.1 s) is busy: the request waits for "small" (stats()['deferred']).
    s = Scheduler(mixed_fleet(), policy="fcfs", max_batch_size=4, config=Config(defer_late=True))
    u1 = s.submit(req(10, 10, deadline=1.0), now=0.0)
    assert shape(s.step(now=0.0)) == [("small", [u1])]
    u2 = s.submit(req(10, 10, deadline=1.0), now=0.0)
    r = s.step(now=0.05)
    assert r.batches == [] and s.status(u2) == "queued"
    assert s.stats()["deferred"] == 1
    s.complete(u1, now=0.1)
    assert shape(s.step(now=0.1)) == [("small", [u2])]
    healthy(s)


def test_deadline_work_runs_late_without_defer_late():
    # The default (defer_late off): the same request runs late on "big", as a fallback.
    s = Scheduler(mixed_fleet(), policy="fcfs", max_batch_size=4)
    u1 = s.submit(req(10, 10, deadline=1.0), now=0.0)
    assert shape(s.step(now=0.0)) == [("small", [u1])]
    u2 = s.submit(req(10, 10, deadline=1.0), now=0.0)
    assert shape(s.step(now=0.05)) == [("big", [u2])]
    st_ = s.stats()
    assert (st_["deferred"], st_["placed_fitting"], st_["placed_fallback"]) == (0, 1, 1)
    healthy(s)


# --------------------------------------------------------------------- continuous mode


def test_continuous_devices_not_named_take_nothing():
    s = Scheduler([Device("x"), Device("y")], policy="fcfs", max_batch_size=8)
    ids = [s.submit(req(90, 10), now=0.0) for _ in range(6)]
    r = s.step(now=0.0, free_slots={"y": 2})
    assert shape(r) == [("y", ids[:2])]
    r = s.step(now=0.1, free_slots={"x": 1, "y": 0})
    assert shape(r) == [("x", [ids[2]])]
    r = s.step(now=0.2, free_slots={})
    assert r.batches == [] and not r
    # Slots beyond max_inflight_batches and several steps in a row: no batch-count limit.
    r = s.step(now=0.3, free_slots={"x": 2, "y": 1})
    assert shape(r) == [("x", ids[3:5]), ("y", [ids[5]])]
    st_ = s.stats()
    assert st_["in_flight"] == 6
    assert [d["inflight_batches"] for d in st_["devices"]] == [0, 0]
    assert [d["inflight_requests"] for d in st_["devices"]] == [3, 3]
    s.complete_many(ids, now=1.0)
    healthy(s)


def test_continuous_reported_kv_bounds_joiners():
    s = Scheduler([Device("x")], policy="fcfs", max_batch_size=8)
    ids = [s.submit(req(90, 10), now=0.0) for _ in range(5)]  # 100 tokens each
    r = s.step(now=0.0, free_slots={"x": 5}, free_kv_tokens={"x": 250})
    assert shape(r) == [("x", ids[:2])]
    r = s.step(now=0.1, free_slots={"x": 5}, free_kv_tokens={"x": 99})
    assert r.batches == []
    r = s.step(now=0.2, free_slots={"x": 5}, free_kv_tokens={"x": 100})
    assert shape(r) == [("x", [ids[2]])]
    healthy(s)


def test_continuous_device_kv_budget_applies_when_not_reported():
    s = Scheduler([Device("x", kv_tokens=300)], policy="fcfs", max_batch_size=8)
    ids = [s.submit(req(90, 10), now=0.0) for _ in range(5)]
    r = s.step(now=0.0, free_slots={"x": 5})
    assert shape(r) == [("x", ids[:3])]  # 3 x 100 = the whole budget
    assert s.stats()["devices"][0]["kv_used"] == 300
    assert s.step(now=0.1, free_slots={"x": 5}).batches == []
    s.complete(ids[0], now=0.2)
    assert shape(s.step(now=0.2, free_slots={"x": 5})) == [("x", [ids[3]])]
    healthy(s)


@pytest.mark.parametrize("kwargs", [
    {"free_slots": {"nope": 1}},
    {"free_slots": {"x": -1}},
    {"free_slots": {"x": 1.5}},
    {"free_slots": {"x": True}},
    {"free_slots": {"x": "2"}},
    {"free_slots": {"x": 65537}},
    {"free_slots": [("x", 1)]},
    {"free_slots": {"x": 1}, "free_kv_tokens": {"x": -5}},
    {"free_slots": {"x": 1}, "free_kv_tokens": {"x": 10.0}},
    {"free_slots": {"x": 1}, "free_kv_tokens": {"y": 10}},
    {"free_kv_tokens": {"x": 10}},
])
def test_continuous_bad_input_changes_nothing(kwargs):
    s = Scheduler([Device("x", kv_tokens=1000)], policy="fcfs", max_batch_size=8)
    a = s.submit(req(), now=0.0)
    s.step(now=0.0, free_slots={"x": 1})
    s.submit(req(), now=0.5)
    before = s.stats()
    with pytest.raises(InvalidArgumentError):
        s.step(now=1.0, **kwargs)
    assert s.stats() == before
    assert s.status(a) == "in_flight"
    healthy(s)


# --------------------------------------------------------------------- preemption


def preempt_sched(**cfg) -> Scheduler:
    return Scheduler([Device("a", kv_tokens=1000)], policy="fcfs", max_batch_size=8, config=Config(**cfg))


def fill(s: Scheduler, priorities_and_times: list[tuple[float, float]], tokens: int = 300) -> list[int]:
    ids = []
    for prio, t in priorities_and_times:
        i = s.submit(req(tokens - 10, 10, priority=prio), now=t)
        r = s.step(now=t, free_slots={"a": 8})
        assert r.dispatched == [i]
        ids.append(i)
    return ids


def test_preemption_evicts_lowest_priority_latest_dispatched():
    s = preempt_sched()
    n1, n2, n3 = fill(s, [(0.5, 0.0), (0.2, 1.0), (0.2, 2.0)])  # 900 of 1000 KV used
    urgent = s.submit(req(290, 10, priority=0.9, sched_class="strict"), now=3.0)
    r = s.step(now=3.0, free_slots={"a": 1})
    # No KV room (100 left < 300). Lowest priority: n2 and n3 (0.2); the later dispatched
    # (n3, at 2.0) loses the least work.
    assert r.preempted == [(n3, "a")]
    assert shape(r) == [("a", [urgent])]
    assert bool(r)
    assert s.status(n3) == "queued"
    assert s.preemptions(n3) == (1, 1.0)
    assert s.preemptions(n2) == (0, 0.0)
    st_ = s.stats()
    assert (st_["preempted"], st_["devices"][0]["preempted_requests"]) == (1, 1)
    assert st_["devices"][0]["kv_used"] == 900
    healthy(s)
    # It comes back once there is room, its progress recorded; a second eviction adds up.
    s.complete(n1, now=4.0)
    r = s.step(now=4.0, free_slots={"a": 1})
    assert shape(r) == [("a", [n3])]
    again = s.submit(req(290, 10, sched_class="strict"), now=6.0)
    r = s.step(now=6.0, free_slots={"a": 0})
    assert r.preempted == [(n3, "a")]
    assert s.preemptions(n3) == (2, 3.0)
    assert s.status(again) == "in_flight"
    s.complete_many([n2, urgent, again], now=7.0)
    s.step(now=7.0, free_slots={"a": 1})
    s.complete(n3, now=8.0)
    assert s.stats()["completed"] == 5
    healthy(s)


def test_preemption_ties_go_to_the_highest_id():
    s = preempt_sched()
    ids = [s.submit(req(290, 10, priority=0.2), now=0.0) for _ in range(3)]
    s.step(now=0.0, free_slots={"a": 3})  # same priority, same dispatch time
    urgent = s.submit(req(390, 10, sched_class="strict"), now=1.0)  # 400 > 100 free
    r = s.step(now=1.0, free_slots={"a": 5})
    assert r.preempted == [(ids[2], "a")]
    assert r.dispatched == [urgent]
    healthy(s)


def test_preemption_victim_must_free_enough_kv():
    s = preempt_sched()
    small = s.submit(req(90, 10, priority=0.1), now=0.0)  # 100 tokens
    big = s.submit(req(790, 10, priority=0.2), now=0.0)  # 800 tokens
    s.step(now=0.0, free_slots={"a": 2})  # 900 used, 100 free
    urgent = s.submit(req(290, 10, sched_class="strict"), now=1.0)
    r = s.step(now=1.0, free_slots={"a": 1})
    # Evicting `small` would leave 200 < 300: `big` goes although its priority is higher.
    assert r.preempted == [(big, "a")]
    assert r.dispatched == [urgent]
    assert s.status(small) == "in_flight"
    healthy(s)


def test_preemption_for_a_deadline_class_request():
    s = preempt_sched()
    (n1,) = fill(s, [(0.5, 0.0)], tokens=1000)
    dl = s.submit(req(90, 10, sched_class="deadline", timeout=100.0), now=1.0)
    r = s.step(now=1.0, free_slots={"a": 4})
    assert r.preempted == [(n1, "a")]
    assert r.dispatched == [dl]
    assert s.preemptions(n1) == (1, 1.0)
    healthy(s)


def test_normal_requests_never_preempt():
    s = preempt_sched()
    fill(s, [(0.1, 0.0)], tokens=1000)
    hi = s.submit(req(90, 10, priority=1.0), now=1.0)
    r = s.step(now=1.0, free_slots={"a": 4})
    assert (r.preempted, r.batches, s.status(hi)) == ([], [], "queued")
    healthy(s)


def test_preemption_disabled():
    s = preempt_sched(preemption=False)
    fill(s, [(0.5, 0.0), (0.2, 1.0), (0.2, 2.0)])
    urgent = s.submit(req(290, 10, sched_class="strict"), now=3.0)
    r = s.step(now=3.0, free_slots={"a": 1})
    assert (r.preempted, r.batches, s.status(urgent)) == ([], [], "queued")
    assert s.stats()["preempted"] == 0
    healthy(s)


def test_batch_mode_never_preempts():
    s = Scheduler([Device("a", kv_tokens=1000, max_inflight_batches=2)], policy="fcfs", max_batch_size=8)
    ids = [s.submit(req(290, 10, priority=0.1), now=0.0) for _ in range(3)]
    assert s.step(now=0.0).dispatched == ids
    urgent = s.submit(req(290, 10, sched_class="strict"), now=1.0)
    r = s.step(now=1.0)
    assert (r.preempted, r.batches, s.status(urgent)) == ([], [], "queued")
    assert s.stats()["preempted"] == 0
    healthy(s)


# Regression (failed on 853b9ce): preempt() evicts a victim that frees enough KV, but
# the urgent request was blocked by the step's token budget (max_batch_tokens, with a
# deadline-class joiner already in the step), so has_room still fails after the
# eviction: the victim is evicted and re-queued for nothing and the urgent request
# stays queued
def test_preemption_does_not_evict_when_the_eviction_cannot_help():
    s = Scheduler([Device("a", kv_tokens=2000)], policy="fcfs", max_batch_size=8,
                  config=Config(max_batch_tokens=1000))
    n1 = s.submit(req(800, 100), now=0.0)  # 900 tokens
    s.step(now=0.0, free_slots={"a": 4})
    dl = s.submit(req(400, 100, sched_class="deadline", deadline=100.0), now=1.0)  # 500
    urgent = s.submit(req(500, 100, sched_class="strict"), now=1.0)  # 600: 500 + 600 > 1000
    r = s.step(now=1.0, free_slots={"a": 4})
    # No eviction can help within this step's budget: nobody is evicted, it waits.
    assert (shape(r), r.preempted) == ([("a", [dl])], [])
    assert (s.status(n1), s.status(urgent)) == ("in_flight", "queued")
    # A new step, a new budget: 600 tokens join, and 2000 - 900 - 500 = 600 KV is free.
    r = s.step(now=1.5, free_slots={"a": 4})
    assert (shape(r), r.preempted) == ([("a", [urgent])], [])
    assert s.stats()["preempted"] == 0
    healthy(s)


# --------------------------------------------------------------------- property test


submit_ops = st.tuples(
    st.just("submit"),
    st.integers(1, 4),  # how many at once
    st.integers(0, 390),
    st.integers(1, 200),
    st.sampled_from([0.1, 0.5, 0.9]),
    st.sampled_from([None, None, 0.5, 2.0, 10.0]),  # timeout
    st.sampled_from([True, True, True, False]),
    st.sampled_from(["normal", "normal", "strict"]),
)


@st.composite
def scenarios(draw):
    n_dev = draw(st.integers(1, 3))
    devices = []
    for k in range(n_dev):
        seeded_ = draw(st.booleans())
        devices.append(Device(
            f"d{k}",
            capacity=draw(st.sampled_from([1.0, 1.0, 2.0])),
            max_inflight_batches=draw(st.integers(1, 2)),
            kv_tokens=draw(st.sampled_from([None, 600, 600, 2000])),
            prefill_s_per_token=P_S if seeded_ else None,
            decode_step_s=D_S if seeded_ else None,
            decode_s_per_seq=E_S if seeded_ else None,
        ))
    max_bs = draw(st.integers(1, 6))
    cfg = Config(
        max_batch_tokens=draw(st.sampled_from([0, 0, 300, 800])),
        max_queue_delay=draw(st.sampled_from([0.0, 0.25, 1.0, 1.0])),
        preferred_batch_sizes=tuple(
            p for p in draw(st.sampled_from([(), (2,), (1, 3), (2, 4)])) if p <= max_bs
        ),
        latency_target=draw(st.sampled_from([0.0, 0.5])),
        preemption=draw(st.sampled_from([True, True, False])),
    )
    ops = draw(st.lists(st.one_of(
        submit_ops,
        # Decimal time steps on purpose: sums round (test_queue_delay_boundary_is_consistent).
        st.tuples(st.just("step"), st.sampled_from([0.0, 0.1, 0.3, 0.25, 1.0])),
        st.tuples(st.just("cstep"), st.sampled_from([0.0, 0.1, 0.25]),
                  st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=n_dev, max_size=n_dev),
                  st.lists(st.one_of(st.none(), st.integers(0, 900)), min_size=n_dev, max_size=n_dev)),
        st.tuples(st.just("complete"), st.integers(0, 50), st.one_of(st.none(), st.integers(0, 50)),
                  st.sampled_from([0.0, 0.2, 0.625])),
    ), min_size=4, max_size=30))
    return devices, cfg, draw(st.sampled_from([True, True, False])), max_bs, ops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(sc=scenarios())
def test_property_budgets_and_invariants(sc):
    devices, cfg, dynamic, max_bs, ops = sc
    s = Scheduler(devices, policy="fcfs", max_batch_size=max_bs, enable_dynamic_batching=dynamic, config=cfg)
    names = [d.name for d in devices]
    tokens: dict[int, int] = {}
    running: list[int] = []
    now = 0.0
    budget = cfg.max_batch_tokens
    for op in ops:
        kind = op[0]
        if kind == "submit":
            _, k, p, n, prio, timeout, batchable, sclass = op
            for _ in range(k):
                r_ = req(p, n, priority=prio, timeout=timeout, batchable=batchable, sched_class=sclass)
                tokens[s.submit(r_, now=now)] = p + n
        elif kind == "complete":
            _, k, out, dt = op
            now += dt
            if running:
                i = running.pop(k % len(running))
                s.complete(i, now=now, output_tokens=out)
        else:
            now += op[1]
            if kind == "step":
                res = s.step(now=now)
                for b in res.batches:
                    assert len(b) <= max_bs
                    if budget and len(b) > 1:
                        assert sum(tokens[i] for i in b.request_ids) <= budget
                assert res.preempted == []
            else:
                _, _, slots, kvs = op
                free = {nm: v for nm, v in zip(names, slots) if v is not None}
                kv = {nm: v for nm, v in zip(names, kvs) if v is not None and nm in free}
                stats_before = s.stats()["devices"]
                res = s.step(now=now, free_slots=free, free_kv_tokens=kv)
                assert res.held == 0 and res.next_step_at == math.inf
                evicted = {nm: [i for i, dn in res.preempted if dn == nm] for nm in names}
                for b in res.batches:
                    joined = b.request_ids
                    freed = sum(tokens[i] for i in evicted[b.device])
                    assert len(joined) <= free.get(b.device, 0) + len(evicted[b.device])
                    t_in = sum(tokens[i] for i in joined)
                    if b.device in kv:
                        assert t_in <= kv[b.device] + freed
                    else:
                        dd = stats_before[b.device_index]
                        if dd["kv_budget"] >= 0:
                            assert t_in <= dd["kv_budget"] - dd["kv_used"] + freed
                    if budget and len(joined) > 1:
                        assert t_in <= budget
                for i, _ in res.preempted:
                    running.remove(i)
                    assert s.status(i) == "queued"
            if res.held:
                # Every held batch had positive slack and an unexpired delay: the next
                # step is due strictly later, and no later than the delay.
                assert dynamic and cfg.max_queue_delay > 0
                assert res.now < res.next_step_at <= res.now + cfg.max_queue_delay
            else:
                assert res.next_step_at == math.inf
            for i in res.dispatched:
                assert s.status(i) == "in_flight"
            running.extend(i for i in res.dispatched if i not in running)
            for i in res.expired:
                assert s.status(i) == "expired"
        assert s.stats()["conservation_ok"]
        assert s.check_invariants()
    assert sorted(running) == sorted(i for i in tokens if s.status(i) == "in_flight")
