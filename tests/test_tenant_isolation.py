"""Tenant isolation: the weighted fair share between tenants (``Config(fair_share=True)``,
a virtual token counter as VTC; docs/policies.md) and per-tenant queue quotas.

The exact rule is checked against the reference model by the property tests
(tests/test_reference_properties.py draws fair_share, its charge weights and tenant
weights); these tests pin down what it is for: a tenant flooding the queue cannot starve
the others, weights share service in proportion, idle time is not banked, and in the
simulator the light tenants keep their SLO attainment next to a tenant sending 20x their
load.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Optional

import numpy as np
import pytest

from capsched import Config, InferenceRequest, Scheduler
from capsched.errors import CheckpointError, ConfigError, InvalidArgumentError, QueueFullError


def req(tenant: Optional[str], prompt_tokens: int = 100, max_new_tokens: int = 50) -> InferenceRequest:
    return InferenceRequest(prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens, tenant=tenant)


def drain_order(s: Scheduler, owner: dict[int, str], t: float = 1.0, output_tokens: Optional[int] = None) -> str:
    """Step and complete until nothing is queued; the tenants in dispatch order."""
    order = []
    for _ in range(10_000):
        res = s.step(now=t)
        ids = [i for b in res.batches for i in b.request_ids]
        if not ids and s.stats()["queued"] == 0:
            break
        order += [owner[i] for i in ids]
        for i in ids:
            s.complete(i, now=t + 0.01, output_tokens=output_tokens)
        t += 0.1
    assert s.check_invariants()
    return "".join(order)


@pytest.mark.parametrize("policy", ["fcfs", "priority", "edf", "srtf", "weighted"])
def test_a_flood_does_not_starve_a_late_tenant(policy):
    """Tenant a queues 60 requests, then b queues 4: with fair share b's requests go out
    at once, interleaved with a's; without it (fcfs: by arrival) b waits behind all of a."""
    orders = {}
    for fair in (False, True):
        s = Scheduler(["H100-SXM"], policy=policy, max_batch_size=4, config=Config(fair_share=fair))
        owner = {}
        for _ in range(60):
            owner[s.submit(req("a"), now=0.0)] = "a"
        for _ in range(4):
            owner[s.submit(req("b"), now=0.5)] = "b"
        orders[fair] = drain_order(s, owner)
    assert orders[True].count("b") == 4 and len(orders[True]) == 64
    # Fair: b has had no service, so it goes first as soon as it is queued; it and a
    # then alternate while b has work (equal charges per request).
    assert orders[True][:8] == "abababab" or orders[True][:8] == "babababa"
    if policy in ("fcfs", "priority", "edf"):  # (equal keys but arrival: a first, all of it)
        assert orders[False] == "a" * 60 + "b" * 4


def test_weights_share_service_in_proportion():
    """Both tenants always backlogged: dispatches (equal-sized requests) follow the
    weights 3 : 1 to within one request."""
    s = Scheduler(["H100-SXM"], policy="fcfs", max_batch_size=1,
                  config=Config(fair_share=True, tenant_weights={"gold": 3.0, "bronze": 1.0}))
    owner = {}
    for _ in range(200):
        owner[s.submit(req("gold"), now=0.0)] = "gold"
        owner[s.submit(req("bronze"), now=0.0)] = "bronze"
    got = Counter()
    t = 1.0
    for _ in range(120):
        res = s.step(now=t)
        for b in res.batches:
            for i in b.request_ids:
                got[owner[i]] += 1
                s.complete(i, now=t + 0.01)
        t += 0.1
    assert got["gold"] + got["bronze"] == 120
    assert abs(got["gold"] - 3 * got["bronze"]) <= 3, got
    state = s.fair_share()
    assert state["tenants"]["gold"]["weight"] == 3.0
    # Counters are service over weight: equal to within one request's charge.
    charge = 1.0 * 100 + 2.0 * 50
    assert abs(state["tenants"]["gold"]["counter"] - state["tenants"]["bronze"]["counter"]) <= charge


def test_idle_time_is_not_banked():
    """A tenant that had nothing queued while another was served starts from the virtual
    time, not from zero: it does not then monopolise the device to "catch up"."""
    s = Scheduler(["H100-SXM"], policy="fcfs", max_batch_size=1, config=Config(fair_share=True))
    owner = {}
    for _ in range(50):
        owner[s.submit(req("a"), now=0.0)] = "a"
    t = 1.0
    for _ in range(30):  # a alone for 30 dispatches
        res = s.step(now=t)
        for b in res.batches:
            for i in b.request_ids:
                s.complete(i, now=t + 0.01)
        t += 0.1
    for _ in range(10):
        owner[s.submit(req("b"), now=t)] = "b"
    before = s.fair_share()
    assert before["tenants"]["b"]["counter"] >= before["virtual_time"] > 0
    order = drain_order(s, owner, t=t + 0.1)
    # Not 10 b's in a row: they alternate with a's remaining 20.
    assert "bbb" not in order[:20], order


def test_unused_output_is_given_back_at_completion():
    s = Scheduler(["H100-SXM"], policy="fcfs", max_batch_size=1, config=Config(fair_share=True))
    rid = s.submit(req("a", prompt_tokens=100, max_new_tokens=50), now=0.0)
    (batch,) = s.step(now=0.1).batches
    assert s.fair_share()["tenants"]["a"]["counter"] == 100 + 2 * 50
    s.complete(rid, now=0.2, output_tokens=10)
    assert s.fair_share()["tenants"]["a"]["counter"] == 100 + 2 * 10


@pytest.mark.parametrize("preferred", [(), (2,)])
def test_a_held_or_trimmed_batch_leaves_the_counters_and_virtual_time_as_before(preferred):
    # The held members' charges were given back, but each was queued again with the lift
    # to a virtual time raised by the batch that did not go: one tenant kept a request's
    # charge, V stayed up, and the next step's order changed.
    def make(delay: float) -> Scheduler:
        s = Scheduler(["g"], policy="fcfs", max_batch_size=8,
                      config=Config(fair_share=True, max_queue_delay=delay, preferred_batch_sizes=preferred))
        for tenant in "aaabb":
            s.submit(InferenceRequest(prompt_tokens=100, max_new_tokens=1, tenant=tenant), now=0.0)
        return s

    held = make(1.0)
    first = held.step(now=0.1)
    if preferred:  # trimmed to 2: a and b each keep one dispatch
        assert [i for b in first.batches for i in b.request_ids] == [1, 4]
        f = held.fair_share()
        assert f["virtual_time"] == 0.0
        assert {t: v["counter"] for t, v in f["tenants"].items() if t} == {"a": 102.0, "b": 102.0}
        return
    assert first.held == 1 and not first.batches
    for k in range(3):
        f = held.fair_share()
        assert f["virtual_time"] == 0.0 and all(v["counter"] == 0.0 for v in f["tenants"].values()), f
        assert held.step(now=0.2 + 0.1 * k).held == 1
    order = [i for b in held.step(now=1.0).batches for i in b.request_ids]
    assert order == [i for b in make(0.0).step(now=1.0).batches for i in b.request_ids] == [1, 4, 2, 5, 3]


def test_fair_share_off_by_default_and_counters_untouched():
    s = Scheduler(["H100-SXM"], policy="fcfs", max_batch_size=2)
    rid = s.submit(req("a"), now=0.0)
    s.step(now=0.1)
    s.complete(rid, now=0.2)
    state = s.fair_share()
    assert state["enabled"] is False
    assert state["tenants"]["a"]["counter"] == 0.0 and state["virtual_time"] == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fair_share="yes"), "fair_share must be a bool, got 'yes'"),
        (dict(fair_input_weight=-1.0), r"fair_input_weight must be a finite number >= 0, got -1.0"),
        (dict(fair_output_weight=float("nan")), r"fair_output_weight must be a finite number >= 0, got nan"),
        (dict(tenant_weights=[("a", 1.0)]), r"tenant_weights must be a mapping"),
        (dict(tenant_weights={"a": 0.0}), r"tenant_weights\['a'\] must be a finite number > 0, got 0.0"),
        (dict(tenant_weights={"a": float("inf")}), r"tenant_weights\['a'\] must be a finite number > 0, got inf"),
        (dict(tenant_weights={"a": 2e6}), r"tenant_weights\['a'\] must be in \[1e-06, 1e\+06\], got 2000000.0"),
        (dict(tenant_weights={"a": "2"}), r"tenant_weights\['a'\] must be a number, got '2'"),
        (dict(tenant_weights={3: 1.0}), r"a tenant name must be a str or None, got 3"),
    ],
)
def test_bad_fair_share_config_is_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Config(**kwargs)


def test_core_refuses_a_bad_tenant_weight():
    s = Scheduler(["H100-SXM"])
    with pytest.raises(InvalidArgumentError, match=r"tenant weight must be in \(0, 1e\+06\], got -1"):
        s._core.set_tenant_weight(0, -1.0)
    assert s.fair_share()["tenants"][None]["weight"] == 1.0


def test_checkpoint_keeps_tenant_weights(tmp_path):
    """Weights are configuration and survive a checkpoint (the counters are soft state
    and start again at 0, as documented)."""
    cfg = Config(fair_share=True, tenant_weights={"gold": 4.0, None: 0.5})
    s = Scheduler(["H100-SXM"], policy="fcfs", max_batch_size=1, config=cfg)
    s.submit(req("gold"), now=0.0)
    s.submit(req("silver"), now=0.0)
    s.step(now=0.1)
    path = tmp_path / "c.ckpt"
    s.checkpoint(path)
    r = Scheduler.restore(path)
    assert r.config.tenant_weights == {"gold": 4.0, None: 0.5}
    state = r.fair_share()
    assert state["enabled"] is True
    assert state["tenants"]["gold"]["weight"] == 4.0 and state["tenants"][None]["weight"] == 0.5
    assert state["tenants"]["silver"]["weight"] == 1.0
    assert r.check_invariants()
    # A hostile weight list in the payload is refused, naming it.
    doc = json.loads(path.read_bytes())
    doc["payload"]["config"]["tenant_weights"] = {"gold": 4.0}
    from capsched.checkpoint import _canonical  # noqa: PLC0415 (test-only re-signing)
    import hashlib

    doc["sha256"] = hashlib.sha256(_canonical(doc["payload"])).hexdigest()
    bad = tmp_path / "bad.ckpt"
    bad.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="tenant_weights"):
        Scheduler.restore(bad)


def test_per_tenant_quota_refuses_only_the_flooding_tenant():
    s = Scheduler(["H100-SXM"], config=Config(max_queued_per_tenant=5, fair_share=True))
    for _ in range(5):
        s.submit(req("flood"), now=0.0)
    before = s.stats()
    with pytest.raises(QueueFullError, match="'flood'"):
        s.submit(req("flood"), now=0.0)
    assert s.stats()["queued"] == before["queued"]
    s.submit(req("other"), now=0.0)  # another tenant still gets in
    assert s.stats()["queued"] == before["queued"] + 1


# --- the simulator: one tenant sends 20x the others' load ---------------------------


def _tenant_run(parts, fair: bool):
    from capsched.sim.engine import DONE, Simulation
    from capsched.sim.fleet import parse_fleet
    from capsched.sim.workload import Workload

    arr = np.concatenate([w.arrival_s for w, _ in parts])
    prompt = np.concatenate([w.prompt_tokens for w, _ in parts])
    out = np.concatenate([w.output_tokens for w, _ in parts])
    names = np.concatenate([[n] * len(w) for w, n in parts])
    idx = np.argsort(arr, kind="stable")
    names = names[idx]
    workload = Workload(arr[idx], prompt[idx], out[idx], "tenants")
    fleet = parse_fleet("H100-SXM:1,L4:1")
    devices = fleet.build(float(prompt.mean()), float(out.mean()))
    res = Simulation(devices, workload, "capsched", tenants=[str(n) for n in names],
                     capsched_config={"fair_share": fair}).run()
    stats = {}
    for n in sorted(set(names.tolist())):
        m = names == n
        done = res.status[m] == DONE
        met = done & (res.finish_s[m] <= res.deadline_s[m])
        lat = (res.finish_s - res.arrival_s)[m][done]
        stats[n] = {"slo": float(met.mean()), "mean": float(lat.mean()), "n": int(m.sum())}
    return stats, fleet.capacity(float(prompt.mean()), float(out.mean()))


# The stated bound (README, docs/policies.md): next to a tenant sending 20x their load
# into a fleet at about twice its capacity, each light tenant's SLO attainment stays
# within 0.15 of its solo run (measured, three seeds: 0.03 to 0.12 below) and its mean
# latency within 3.5x of it (measured 2.75x to 3.03x). Latency cannot stay at its solo
# value: the flood's requests share every iteration of continuous batching, which slows
# every token, with or without fair share; fair share bounds the queueing, not that.
# Without fair share the same light tenants lose 0.28 to 0.40 of their SLO attainment
# (asserted: more than 0.20).
SLO_BOUND = 0.15
LATENCY_BOUND = 3.5


def test_light_tenants_keep_their_slo_next_to_a_20x_flood():
    from capsched.sim.workload import poisson

    rate, dur = 2.0, 60.0
    light = [(poisson(rate, duration_s=dur, seed=s), name) for s, name in ((1, "a"), (2, "b"))]
    flood = (poisson(20 * rate, duration_s=dur, seed=3), "flood")
    solo, _ = _tenant_run(light, fair=True)
    fair, capacity = _tenant_run(light + [flood], fair=True)
    unfair, _ = _tenant_run(light + [flood], fair=False)
    assert 22 * rate > 1.8 * capacity  # overload: the flood alone exceeds the fleet
    for t in ("a", "b"):
        assert fair[t]["n"] == solo[t]["n"] == unfair[t]["n"]
        assert fair[t]["slo"] >= solo[t]["slo"] - SLO_BOUND, (t, solo[t], fair[t])
        assert fair[t]["mean"] <= LATENCY_BOUND * solo[t]["mean"], (t, solo[t], fair[t])
        # The test can fail: without fair share the flood takes their SLO.
        assert unfair[t]["slo"] < solo[t]["slo"] - 0.20, (t, solo[t], unfair[t])
    # The flood is what gives way.
    assert fair["flood"]["slo"] < min(fair["a"]["slo"], fair["b"]["slo"])
