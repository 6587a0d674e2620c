"""A pure-Python scheduler with capsched's ``weighted`` policy, built on :mod:`heapq`.

The baseline for ``bench_core.py``: what a careful Python implementation of the same
policy costs. It follows docs/policies.md exactly, with the same IEEE-double arithmetic
as the core, so it dispatches the same ids in the same order (bench_core.py checks that):

* key (lower first): ``-(w_u*p + w_r*R + w_d*L/Q) + aging_weighted*a``, ties by id, with
  ``R = 0.1/(u + 0.1)``, ``u = min(1, T/resource_scale_tokens)``, ``T = prompt + new``;
* deadline level ``L = #{k in 1..Q : now >= c_k}``, ``c_k = d + 1 - Q/k``; a timer heap
  holds each queued request's next ``c_k``, and a step applies the due ones;
* a step: (1) expire queued requests with ``d <= now``, (2) apply due level changes,
  (3) for each device with a free batch slot, strongest first (capacity descending, then
  device order), pop up to ``max_batch_size`` requests into one batch.

heapq has no decrease-key or erase, so the heaps use lazy deletion: a request's ready
entry carries a version, and entries whose request changed or left are skipped on pop.
Only what the benchmark needs is here: submit, step and complete (no dependencies,
retries, cancellation, non-batchable requests or tenants).
"""

from __future__ import annotations

import math
from heapq import heappop, heappush
from typing import List, Optional, Sequence, Tuple

__all__ = ["HeapqWeightedScheduler"]

_QUEUED, _IN_FLIGHT, _DONE = 0, 1, 2
# Fields of a request record (a list, for speed).
_ARRIVAL, _DEADLINE, _BASE, _LEVEL, _STATE, _VERSION, _BATCH = range(7)


class HeapqWeightedScheduler:
    """Pure-Python ``weighted`` scheduler.

    Args:
        capacities: one relative capacity per device (device names are their indices).
        max_batch_size: requests per batch.
        max_inflight: batches a device may have in flight at once (one value for all).
        The keyword tunables default to capsched.Config's defaults.
    """

    def __init__(
        self,
        capacities: Sequence[float],
        *,
        max_batch_size: int = 32,
        max_inflight: int = 1,
        weight_urgency: float = 0.5,
        weight_resource: float = 0.3,
        weight_deadline: float = 0.2,
        resource_scale_tokens: float = 4096.0,
        deadline_levels: int = 16,
        aging_weighted: float = 0.01,
    ) -> None:
        self.w_u = float(weight_urgency)
        self.w_r = float(weight_resource)
        self.w_d = float(weight_deadline)
        self.scale = float(resource_scale_tokens)
        self.q = int(deadline_levels)
        self.qf = float(self.q)
        self.aging = float(aging_weighted)
        self.max_batch_size = int(max_batch_size)
        self.max_inflight = int(max_inflight)
        self.device_order = sorted(range(len(capacities)), key=lambda i: (-float(capacities[i]), i))
        self.inflight_batches = [0] * len(capacities)
        self.now = -math.inf
        self.recs: List[Optional[list]] = [None]  # index = id; ids start at 1
        self.ready: list = []  # (key, id, version)
        self.deadlines: list = []  # (d, id)
        self.levels: list = []  # (next c_k, id)
        self.batches: List[list] = []  # [device, remaining]
        self.free_batches: List[int] = []
        self.completed = 0
        self.expired = 0
        self.live = 0

    # ------------------------------------------------------------------ helpers

    def _clock(self, now: float) -> float:
        if now > self.now:
            self.now = now
        return self.now

    def _level(self, r: list, now: float) -> int:
        """The deadline level at ``now``, from the closed form corrected against the exact
        ``c_k`` comparisons (like the core); levels never go down."""
        d = r[_DEADLINE]
        q, qf = self.q, self.qf
        cur = level = r[_LEVEL]
        est = math.floor(qf / (d - now + 1.0))
        if est > level:
            level = q if est >= q else est
        while level > cur and now < d + 1.0 - qf / level:
            level -= 1
        while level < q and now >= d + 1.0 - qf / (level + 1):
            level += 1
        return level

    def _key(self, r: list) -> float:
        return -(r[_BASE] + self.w_d * (r[_LEVEL] / self.qf)) + self.aging * r[_ARRIVAL]

    # ------------------------------------------------------------------ API

    def submit(
        self,
        prompt_tokens: int,
        max_new_tokens: int = 256,
        priority: float = 0.5,
        timeout: Optional[float] = None,
        *,
        now: float,
    ) -> int:
        t = self._clock(now)
        rid = len(self.recs)
        tokens = float(prompt_tokens) + float(max_new_tokens)
        u = min(1.0, tokens / self.scale)
        base = self.w_u * priority + self.w_r * (0.1 / (u + 0.1))
        d = t + timeout if timeout is not None else math.inf
        r = [t, d, base, 0, _QUEUED, 0, -1]
        self.recs.append(r)
        self.live += 1
        if d != math.inf:
            heappush(self.deadlines, (d, rid))
            level = r[_LEVEL] = self._level(r, t)
            if level < self.q:
                heappush(self.levels, (d + 1.0 - self.qf / (level + 1), rid))
        heappush(self.ready, (self._key(r), rid, 0))
        return rid

    def step(self, now: float) -> Tuple[List[Tuple[int, List[int]]], List[int]]:
        """Returns ``(batches, expired)``: ``[(device index, [ids...]), ...]`` and ids."""
        t = self._clock(now)
        recs = self.recs
        # 1. Expire queued requests whose deadline has come.
        expired = []
        dl = self.deadlines
        while dl and dl[0][0] <= t:
            rid = heappop(dl)[1]
            r = recs[rid]
            if r is not None and r[_STATE] == _QUEUED:
                r[_STATE] = _DONE
                recs[rid] = None
                expired.append(rid)
        self.expired += len(expired)
        self.live -= len(expired)
        # 2. Deadline-level changes that are due.
        lv = self.levels
        ready = self.ready
        q, qf = self.q, self.qf
        while lv and lv[0][0] <= t:
            rid = heappop(lv)[1]
            r = recs[rid]
            if r is None or r[_STATE] != _QUEUED:
                continue
            level = r[_LEVEL] = self._level(r, t)
            r[_VERSION] += 1
            heappush(ready, (self._key(r), rid, r[_VERSION]))
            if level < q:
                heappush(lv, (r[_DEADLINE] + 1.0 - qf / (level + 1), rid))
        # 3. One batch per device with a free slot, strongest first.
        batches = []
        bmax = self.max_batch_size
        for dev in self.device_order:
            if not ready:
                break
            if self.inflight_batches[dev] >= self.max_inflight:
                continue
            ids = []
            while ready and len(ids) < bmax:
                _, rid, ver = heappop(ready)
                r = recs[rid]
                if r is None or r[_STATE] != _QUEUED or r[_VERSION] != ver:
                    continue  # stale entry
                r[_STATE] = _IN_FLIGHT
                ids.append(rid)
            if not ids:
                break
            if self.free_batches:
                b = self.free_batches.pop()
                self.batches[b] = [dev, len(ids)]
            else:
                b = len(self.batches)
                self.batches.append([dev, len(ids)])
            for rid in ids:
                recs[rid][_BATCH] = b
            self.inflight_batches[dev] += 1
            batches.append((dev, ids))
        return batches, expired

    def complete(self, rid: int, now: float) -> None:
        self._clock(now)
        r = self.recs[rid] if 0 < rid < len(self.recs) else None
        if r is None or r[_STATE] != _IN_FLIGHT:
            raise KeyError(f"request {rid} is not in flight")
        r[_STATE] = _DONE
        self.recs[rid] = None
        b = self.batches[r[_BATCH]]
        b[1] -= 1
        if b[1] == 0:
            self.inflight_batches[b[0]] -= 1
            self.free_batches.append(r[_BATCH])
        self.completed += 1
        self.live -= 1
