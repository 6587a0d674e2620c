"""Bad input gets a precise exception naming the bad value, and changes nothing.

The full catalogue, one row per entry point and bad value with the real messages, is
tests/test_bad_input_catalogue.py (docs/bad_inputs.md is generated from it); the cases
here are the original hand-written set, kept as they check a few things the catalogue
does not (a mutated request can be fixed and submitted again, its id is not taken).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import (
    CapschedError,
    ConfigError,
    DependencyError,
    DuplicateRequestError,
    InvalidArgumentError,
    InvalidRequestError,
    RequestStateError,
    RequestTypeError,
    UnknownRequestError,
)


def _fleet() -> tuple[Scheduler, dict[str, int]]:
    """A scheduler with one request in each live state and one of each ending."""
    s = Scheduler([Device("big", 2.0), Device("small", 1.0)], max_batch_size=2)
    ids = {}
    ids["done"] = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    ids["flight"] = s.submit(InferenceRequest(prompt_tokens=5), now=0.0)
    s.step(now=0.0)
    s.complete(ids["done"], now=0.1)
    ids["queued"] = s.submit(InferenceRequest(prompt_tokens=5), now=0.2)
    ids["gone"] = s.submit(InferenceRequest(prompt_tokens=5), now=0.2)
    s.cancel(ids["gone"])
    ids["waiting"] = s.submit(InferenceRequest(prompt_tokens=5, depends_on=[ids["flight"]]), now=0.2)
    return s, ids


def _snapshot(s: Scheduler, ids: dict[str, int]) -> tuple:
    st = s.stats()
    st.pop("now")
    return st, {k: s.status(v) for k, v in ids.items()}


REQUEST_CASES = [
    (dict(prompt_tokens=5, priority=math.nan), InvalidRequestError, "priority"),
    (dict(prompt_tokens=5, priority=1.5), InvalidRequestError, "priority"),
    (dict(prompt_tokens=5, priority=-0.1), InvalidRequestError, "priority"),
    (dict(prompt_tokens=5, priority="high"), RequestTypeError, "priority"),
    (dict(prompt_tokens=5, priority=True), RequestTypeError, "priority"),
    (dict(prompt_tokens=5, timeout=-1.0), InvalidRequestError, "timeout"),
    (dict(prompt_tokens=5, timeout=0.0), InvalidRequestError, "timeout"),
    (dict(prompt_tokens=5, timeout=math.nan), InvalidRequestError, "timeout"),
    (dict(prompt_tokens=5, timeout=math.inf), InvalidRequestError, "timeout"),
    (dict(prompt_tokens=5, deadline=math.inf), InvalidRequestError, "deadline"),
    (dict(prompt_tokens=5, timeout=1.0, deadline=5.0), InvalidRequestError, "not both"),
    (dict(prompt_tokens=-1), InvalidRequestError, "prompt_tokens"),
    (dict(prompt_tokens=10**12), InvalidRequestError, "prompt_tokens"),
    (dict(prompt_tokens=2.5), RequestTypeError, "prompt_tokens"),
    (dict(prompt_tokens=5, max_new_tokens=0), InvalidRequestError, "max_new_tokens"),
    (dict(prompt_tokens=5, max_new_tokens=-3), InvalidRequestError, "max_new_tokens"),
    (dict(prompt_tokens=5, uclamp_min=0.8, uclamp_max=0.2), InvalidRequestError, "uclamp_min"),
    (dict(prompt_tokens=5, uclamp_max=2.0), InvalidRequestError, "uclamp_max"),
    (dict(prompt_tokens=5, tenant=7), RequestTypeError, "tenant"),
    (dict(prompt_tokens=5, batchable="yes"), RequestTypeError, "batchable"),
    (dict(prompt_tokens=5, depends_on="12"), RequestTypeError, "depends_on"),
    (dict(prompt_tokens=5, depends_on=[0]), RequestTypeError, "depends_on"),
    (dict(prompt_tokens=5, depends_on=list(range(1, 2000))), InvalidRequestError, "limit"),
    (dict(), InvalidRequestError, "prompt"),
    (dict(prompt=b"bytes"), RequestTypeError, "prompt"),
]


@pytest.mark.parametrize("kwargs, exc, fragment", REQUEST_CASES)
def test_bad_request_fields_are_refused_at_construction(kwargs: dict, exc: type, fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        InferenceRequest(**kwargs)


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("priority", math.nan, "priority"),
        ("priority", 3.0, "priority"),
        ("timeout", -2.0, "timeout"),
        ("prompt_tokens", -5, "prompt_tokens"),
        ("max_new_tokens", 0, "max_new_tokens"),
        ("uclamp_min", 0.9, "uclamp_min"),  # above uclamp_max below
    ],
)
def test_fields_mutated_after_construction_are_refused_at_submit(field: str, value: object, fragment: str) -> None:
    s, ids = _fleet()
    before = _snapshot(s, ids)
    req = InferenceRequest(prompt_tokens=5, uclamp_max=0.5)
    setattr(req, field, value)
    with pytest.raises(InvalidRequestError, match=fragment):
        s.submit(req, now=1.0)
    assert _snapshot(s, ids) == before
    assert req.id is None  # not taken: may be fixed and submitted again
    setattr(req, field, {"priority": 0.5, "timeout": 1.0, "prompt_tokens": 5, "max_new_tokens": 3, "uclamp_min": 0.1}[field])
    assert s.submit(req, now=1.0) == ids["waiting"] + 1


def _call_cases(ids: dict[str, int]) -> list:
    """(description, call, exception, message fragment)."""
    never = 10**6
    return [
        ("complete unknown id", lambda s: s.complete(never, now=1.0), UnknownRequestError, "never issued"),
        ("complete id 0", lambda s: s.complete(0, now=1.0), UnknownRequestError, "0"),
        ("complete negative id", lambda s: s.complete(-4, now=1.0), UnknownRequestError, "-4"),
        ("complete queued", lambda s: s.complete(ids["queued"], now=1.0), RequestStateError, "not in flight"),
        ("complete waiting", lambda s: s.complete(ids["waiting"], now=1.0), RequestStateError, "not in flight"),
        ("complete twice", lambda s: s.complete(ids["done"], now=1.0), RequestStateError, "already ended as completed"),
        ("complete cancelled", lambda s: s.complete(ids["gone"], now=1.0), RequestStateError, "cancelled"),
        ("complete string id", lambda s: s.complete("3", now=1.0), RequestTypeError, "ints"),
        ("complete_many one bad", lambda s: s.complete_many([ids["flight"], ids["queued"]], now=1.0),
         RequestStateError, "element 1"),
        ("complete_many duplicate", lambda s: s.complete_many([ids["flight"], ids["flight"]], now=1.0),
         RequestStateError, "twice"),
        ("complete_many unknown", lambda s: s.complete_many(np.array([ids["flight"], never]), now=1.0),
         UnknownRequestError, "never issued"),
        ("fail queued", lambda s: s.fail(ids["queued"], now=1.0), RequestStateError, "not in flight"),
        ("fail unknown", lambda s: s.fail(never, now=1.0), UnknownRequestError, "never issued"),
        ("fail bad retryable", lambda s: s.fail(ids["flight"], now=1.0, retryable="yes"), InvalidArgumentError,
         "retryable"),
        ("cancel unknown", lambda s: s.cancel(never), UnknownRequestError, "never issued"),
        ("status unknown", lambda s: s.status(never), UnknownRequestError, "never issued"),
        ("step at nan", lambda s: s.step(now=math.nan), InvalidArgumentError, "nan"),
        ("step at inf", lambda s: s.step(now=math.inf), InvalidArgumentError, "inf"),
        ("step at text", lambda s: s.step(now="noon"), InvalidArgumentError, "noon"),
        ("submit non-request", lambda s: s.submit({"prompt": "x"}), RequestTypeError, "InferenceRequest"),
        ("submit past deadline", lambda s: s.submit(InferenceRequest(prompt_tokens=1, deadline=0.1), now=1.0),
         InvalidRequestError, "not after now"),
        ("depend on unknown", lambda s: s.submit(InferenceRequest(prompt_tokens=1, depends_on=[never]), now=1.0),
         DependencyError, "never issued"),
        ("depend on cancelled", lambda s: s.submit(InferenceRequest(prompt_tokens=1, depends_on=[ids["gone"]]), now=1.0),
         DependencyError, "cancelled"),
        ("depend twice", lambda s: s.submit(InferenceRequest(prompt_tokens=1, depends_on=[ids["queued"], ids["queued"]]),
                                            now=1.0), DependencyError, "twice"),
        ("depend on unsubmitted object", lambda s: s.submit(
            InferenceRequest(prompt_tokens=1, depends_on=[InferenceRequest(prompt_tokens=1)]), now=1.0),
         DependencyError, "not submitted"),
        ("submit_many nan priority", lambda s: s.submit_many([1, 2, 3], priority=[0.5, math.nan, 0.5], now=1.0),
         InvalidRequestError, "element 1: priority"),
        ("submit_many negative tokens", lambda s: s.submit_many([1, -2], now=1.0), InvalidRequestError,
         "element 1: prompt_tokens"),
        ("submit_many length mismatch", lambda s: s.submit_many([1, 2], max_new_tokens=[4, 5, 6], now=1.0),
         InvalidRequestError, "3 values"),
        ("submit_many fractional tokens", lambda s: s.submit_many([1.5], now=1.0), InvalidRequestError,
         "whole numbers"),
        ("submit_many negative timeout", lambda s: s.submit_many([1, 1], timeout=[1.0, -1.0], now=1.0),
         InvalidRequestError, "element 1: timeout"),
        ("submit_many strings", lambda s: s.submit_many(["a"], now=1.0), RequestTypeError, "integers"),
        ("reserve negative", lambda s: s.reserve(-1), InvalidArgumentError, "-1"),
        ("complete negative output", lambda s: s.complete(ids["flight"], now=1.0, output_tokens=-3),
         InvalidArgumentError, "output_tokens"),
        ("complete huge output", lambda s: s.complete(ids["flight"], now=1.0, output_tokens=10**9),
         InvalidArgumentError, "output_tokens"),
        ("complete text output", lambda s: s.complete(ids["flight"], now=1.0, output_tokens="5"),
         InvalidArgumentError, "output_tokens"),
        ("continuous unknown device", lambda s: s.step(now=1.0, free_slots={"gpu9": 1}), InvalidArgumentError,
         "gpu9"),
        ("continuous negative slots", lambda s: s.step(now=1.0, free_slots={"big": -1}), InvalidArgumentError,
         "free_slots"),
        ("continuous kv without slots", lambda s: s.step(now=1.0, free_kv_tokens={"big": 5}), InvalidArgumentError,
         "free_kv_tokens"),
        ("continuous float kv", lambda s: s.step(now=1.0, free_slots={"big": 1}, free_kv_tokens={"big": 2.5}),
         InvalidArgumentError, "integer"),
        ("estimate unknown device", lambda s: s.estimate_service("gpu9", 10, 10), InvalidArgumentError, "gpu9"),
        ("estimate nan steps", lambda s: s.estimate_service("big", 10, math.nan), InvalidArgumentError, "steps"),
        ("estimate zero batch", lambda s: s.estimate_service("big", 10, 10, 0), InvalidArgumentError, "batch"),
        ("preemptions of an ended request", lambda s: s.preemptions(ids["done"]), RequestStateError,
         "already ended"),
        ("preemptions unknown", lambda s: s.preemptions(never), UnknownRequestError, "never issued"),
    ]


@pytest.mark.parametrize("index", range(len(_call_cases({k: 1 for k in ("done", "flight", "queued", "waiting", "gone")}))))
def test_bad_calls_raise_precisely_and_change_nothing(index: int) -> None:
    s, ids = _fleet()
    name, call, exc, fragment = _call_cases(ids)[index]
    before = _snapshot(s, ids)
    with pytest.raises(exc, match=fragment) as info:
        call(s)
    assert isinstance(info.value, CapschedError), name
    assert _snapshot(s, ids) == before, name
    assert s.check_invariants(), name


def test_submitting_the_same_object_twice_is_refused() -> None:
    s, ids = _fleet()
    req = InferenceRequest(prompt_tokens=3)
    rid = s.submit(req, now=1.0)
    before = _snapshot(s, {**ids, "new": rid})
    with pytest.raises(DuplicateRequestError, match=f"id {rid}"):
        s.submit(req, now=1.0)
    assert _snapshot(s, {**ids, "new": rid}) == before


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(devices=[]), "empty"),
        (dict(devices="cuda:0"), "list"),
        (dict(devices=["a", "a"]), "twice"),
        (dict(devices=[{"name": "a", "capacity": 0.0}]), "capacity"),
        (dict(devices=[{"name": "a", "capacity": -1}]), "capacity"),
        (dict(devices=[{"name": "a", "speed": 2}]), "speed"),
        (dict(devices=[3]), "device 0"),
        (dict(devices=["a"], policy="lottery"), "lottery"),
        (dict(devices=["a"], max_batch_size=0), "max_batch_size"),
        (dict(devices=["a"], max_batch_size=1.5), "max_batch_size"),
        (dict(devices=["a"], enable_dynamic_batching="on"), "enable_dynamic_batching"),
        (dict(devices=["a"], config={"weight_urgency": -1}), "weight_urgency"),
        (dict(devices=["a"], config={"aging_weighted": math.nan}), "aging_weighted"),
        (dict(devices=["a"], config={"deadline_levels": 0}), "deadline_levels"),
        (dict(devices=["a"], config={"no_such_knob": 1}), "no_such_knob"),
        (dict(devices=["a"], config=42), "config"),
        (dict(devices=["a"], clock=5), "clock"),
        (dict(devices=["a"], config={"max_batch_tokens": -1}), "max_batch_tokens"),
        (dict(devices=["a"], config={"preferred_batch_sizes": [4, 2]}), "ascending"),
        (dict(devices=["a"], max_batch_size=4, config={"preferred_batch_sizes": [8]}), "preferred_batch_sizes"),
        (dict(devices=["a"], config={"max_queue_delay": math.inf}), "max_queue_delay"),
        (dict(devices=["a"], config={"latency_target": -1.0}), "latency_target"),
        (dict(devices=["a"], config={"preemption": "yes"}), "preemption"),
        (dict(devices=["a"], config={"retry_base": -0.1}), "retry_base"),
        (dict(devices=["a"], config={"retry_seed": -1}), "retry_seed"),
        (dict(devices=["a"], config={"breaker_failures": 1.5}), "breaker_failures"),
        (dict(devices=["a"], config={"breaker_cooldown": math.nan}), "breaker_cooldown"),
        (dict(devices=["a"], config={"max_queued_per_tenant": -5}), "max_queued_per_tenant"),
        (dict(devices=["a"], config={"wait_for_fit": 1}), "wait_for_fit"),
        (dict(devices=[{"name": "a", "decode_step_s": -0.1}]), "decode_step_s"),
        (dict(devices=[{"name": "a", "prefill_s_per_token": math.inf}]), "prefill_s_per_token"),
    ],
)
def test_bad_configuration_is_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Scheduler(**kwargs)


def test_config_from_toml(tmp_path) -> None:
    p = tmp_path / "capsched.toml"
    p.write_text("[scheduler]\nweight_urgency = 0.7\ndeadline_levels = 32\n")
    cfg = Config.from_toml(p)
    assert cfg.weight_urgency == 0.7 and cfg.deadline_levels == 32
    bad = tmp_path / "bad.toml"
    bad.write_text("[scheduler\nweight = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.from_toml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        Config.from_toml(tmp_path / "missing.toml")


def test_a_second_journal_is_refused(tmp_path) -> None:
    s, ids = _fleet()
    s.open_journal(tmp_path / "j.log", sync=False)
    before = _snapshot(s, ids)
    with pytest.raises(InvalidArgumentError, match="already open"):
        s.open_journal(tmp_path / "k.log")
    assert _snapshot(s, ids) == before and not (tmp_path / "k.log").exists()
    s.close_journal()
