"""Metrics of simulation runs: latency, throughput, utilization, SLO attainment, goodput.

Definitions (per policy and offered load):

* **latency**: end-to-end, completion minus arrival (retries included), over the
  requests that completed; ``mean``, ``p50``, ``p99`` in seconds. **TTFT**: end of the
  (last) prefill minus arrival.
* **SLO attainment**: the share of *all* requests that completed by their deadline
  (arrival + 5 x the unloaded service time on the fastest card); failed and expired
  (dropped by the scheduler past their deadline) requests count as misses.
* **throughput**: completed requests (and output tokens) per second of the run's span
  (first arrival to last completion); **SLO throughput**: requests completed by their
  deadline per second of the same span.
* **utilization**: per device, the share of the span it spent in iterations; the table
  shows the fleet mean and the min-max.
* **goodput**: the highest offered load (of those evaluated) at which, and at every lower
  evaluated load, at least 90 % of the requests meet their deadline; also in requests
  per second (load x fleet capacity).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

from .engine import DONE, EXPIRED, FAILED, SimResult

__all__ = ["RunMetrics", "summarize", "goodput", "utilization_timeline", "SLO_TARGET"]

#: Share of requests that must meet their deadline for a load to count toward goodput.
SLO_TARGET = 0.9


def _pct(a: np.ndarray, q: float) -> float:
    return float(np.percentile(a, q)) if a.size else math.nan


@dataclasses.dataclass
class RunMetrics:
    """The metrics of one (policy, load) run; :meth:`to_dict` for JSON."""

    policy: str
    load: float
    offered_rate: float
    requests: int
    completed: int
    failed: int
    expired: int
    retries: int
    latency_mean_s: float
    latency_p50_s: float
    latency_p99_s: float
    ttft_mean_s: float
    ttft_p99_s: float
    throughput_rps: float
    throughput_tokens_s: float
    slo_throughput_rps: float
    slo_attainment: float
    utilization_mean: float
    utilization: dict[str, float]
    span_s: float
    iterations: int
    wall_s: float = 0.0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (non-finite numbers as None)."""
        out = dataclasses.asdict(self)
        for k, v in list(out.items()):
            if isinstance(v, float) and not math.isfinite(v):
                out[k] = None
        return out


def summarize(result: SimResult, load: float, offered_rate: float, wall_s: float = 0.0) -> RunMetrics:
    """The metrics of one run."""
    st = result.status
    done = st == DONE
    lat = (result.finish_s - result.arrival_s)[done]
    ttft = (result.first_token_s - result.arrival_s)[done]
    met = done & (result.finish_s <= result.deadline_s)
    n = int(st.size)
    start = float(result.arrival_s[0]) if n else 0.0
    end = float(np.nanmax(result.finish_s)) if done.any() else result.end_s
    span = max(end - start, 1e-12)
    util = {name: min(1.0, b / span) for name, b in zip(result.device_names, result.busy_s)}
    extra: dict[str, Any] = {}
    if result.scheduler_stats is not None:
        s = result.scheduler_stats
        extra["scheduler"] = {
            k: s[k]
            for k in ("accepted", "completed", "failed", "expired", "retried", "dispatched", "conservation_ok",
                      "deferred", "breaker_trips", "misfits", "migrated", "preempted")
            if k in s
        }
        extra["scheduler"]["breakers"] = {d["name"]: d.get("breaker") for d in s.get("devices", [])}
        extra["scheduler"]["placed_fallback"] = s.get("placed_fallback")
        extra["scheduler"]["placed_fitting"] = s.get("placed_fitting")
        extra["continuous_api"] = result.continuous_api
        extra["preempted"] = result.preempted
        extra["migrated"] = result.migrated
        extra["restarts"] = getattr(result, "restarts", 0)
    per_dev: Union[np.ndarray, list[int]] = np.bincount(result.device[done], minlength=len(result.device_names)) if n else []
    extra["completed_per_device"] = {name: int(c) for name, c in zip(result.device_names, per_dev)}
    return RunMetrics(
        policy=result.policy,
        load=float(load),
        offered_rate=float(offered_rate),
        requests=n,
        completed=int(done.sum()),
        failed=int((st == FAILED).sum()),
        expired=int((st == EXPIRED).sum()),
        retries=int(result.retries),
        latency_mean_s=float(lat.mean()) if lat.size else math.nan,
        latency_p50_s=_pct(lat, 50),
        latency_p99_s=_pct(lat, 99),
        ttft_mean_s=float(ttft.mean()) if ttft.size else math.nan,
        ttft_p99_s=_pct(ttft, 99),
        throughput_rps=float(done.sum()) / span,
        throughput_tokens_s=float(result.output_tokens[done].sum()) / span,
        slo_throughput_rps=float(met.sum()) / span,
        slo_attainment=float(met.sum()) / n if n else math.nan,
        utilization_mean=float(np.mean(list(util.values()))) if util else math.nan,
        utilization=util,
        span_s=span,
        iterations=int(result.iterations),
        wall_s=float(wall_s),
        extra=extra,
    )


def goodput(loads_and_attainment: Sequence[tuple[float, float]], target: float = SLO_TARGET) -> float:
    """The highest load such that it and every lower load in the list reach ``target``
    SLO attainment (0.0 if the lowest does not)."""
    best = 0.0
    for load, att in sorted(loads_and_attainment):
        if att is None or not att >= target:
            break
        best = load
    return best


def utilization_timeline(result: SimResult, buckets: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Per-device busy share in ``buckets`` equal time buckets over the run.

    Returns:
        ``(bucket_mid_times, shares)`` with shares of shape ``(devices, buckets)``.
    """
    end = max(result.end_s, 1e-9)
    edges = np.linspace(0.0, end, buckets + 1)
    width = edges[1] - edges[0]
    out = np.zeros((len(result.device_names), buckets))
    for i, ivs in enumerate(result.busy_intervals):
        for a, b in ivs:
            ia = min(int(a / width), buckets - 1)
            ib = min(int(b / width), buckets - 1)
            if ia == ib:
                out[i, ia] += b - a
                continue
            out[i, ia] += edges[ia + 1] - a
            out[i, ia + 1 : ib] += width
            out[i, ib] += b - edges[ib]
    return (edges[:-1] + edges[1:]) / 2.0, np.clip(out / width, 0.0, 1.0)


def fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)
