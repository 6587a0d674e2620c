"""Defects found by the 2026-11-29 review of the core API, each with the test that
failed before its fix."""

from __future__ import annotations

import pytest

from capsched import Config, Device, InferenceRequest, Scheduler
from capsched.errors import InvalidRequestError, QueueFullError


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
