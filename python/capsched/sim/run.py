"""Run the simulator over loads and policies: the engine behind ``capsched simulate``.

:func:`run_experiment` takes a :class:`SimConfig`, replays the workload at each offered
load (a share of the fleet capacity, :mod:`capsched.sim.fleet`) under each policy, and
returns an :class:`Experiment` with one :class:`~capsched.sim.metrics.RunMetrics` per
(load, policy), the goodput per policy, and the raw results (for plots).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional, TextIO

import numpy as np

from ..errors import ConfigError
from .engine import DEADLINE_FACTOR, Fault, SimResult, Simulation, Slowdown, deadlines_for
from .fleet import DEFAULT_FLEET, Fleet
from .metrics import SLO_TARGET, RunMetrics, fmt, goodput, summarize
from .policies import POLICIES
from .workload import BUILTIN_TRACES, Workload, gamma_bursty, load_trace, poisson

__all__ = [
    "SimConfig",
    "Experiment",
    "DEFAULT_LOADS",
    "DEFAULT_REQUESTS",
    "load_workload",
    "run_experiment",
    "format_tables",
]

#: Offered loads of the default run (shares of fleet capacity); 1.5 is the overload point.
DEFAULT_LOADS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9, 1.5)
#: Requests per run by default (the first ones of the trace).
DEFAULT_REQUESTS = 2000


def load_workload(trace: str, requests: Optional[int], seed: int) -> Workload:
    """The workload of a run: a built-in trace name (``azure-conv``, ``azure-code``),
    ``poisson`` or ``gamma:CV`` (synthetic arrivals, Azure conversation lengths), or a
    trace file path; its first ``requests`` requests, arrivals shifted to start at 0.

    Raises:
        ConfigError: an unknown name or a file that cannot be read.
    """
    n = requests if requests is not None else DEFAULT_REQUESTS
    if trace == "poisson":
        w = poisson(1.0, n=n, seed=seed)
    elif trace.startswith("gamma:"):
        try:
            cv = float(trace.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"bad trace {trace!r}: expected gamma:CV with a number, e.g. gamma:2") from None
        w = gamma_bursty(1.0, cv, n=n, seed=seed)
    else:
        if trace not in BUILTIN_TRACES and not os.path.exists(trace):
            raise ConfigError(
                f"unknown trace {trace!r}: not a built-in trace ({', '.join(BUILTIN_TRACES)}, poisson, gamma:CV) "
                "and no such file"
            )
        w = load_trace(trace, limit=None if trace in BUILTIN_TRACES else n)
    w = w.head(n).shift_to_zero()
    if len(w) < 2 or w.duration_s <= 0:
        raise ConfigError(f"trace {trace!r} gives {len(w)} request(s) spanning {w.duration_s:g} s: need at least 2 arrivals")
    return w


@dataclasses.dataclass
class SimConfig:
    """What ``capsched simulate`` runs."""

    fleet: Fleet = DEFAULT_FLEET
    trace: str = "azure-conv"
    loads: tuple[float, ...] = DEFAULT_LOADS
    policies: tuple[str, ...] = POLICIES
    seed: int = 0
    requests: Optional[int] = None
    faults: tuple[Fault, ...] = ()
    slowdowns: tuple[Slowdown, ...] = ()
    capsched_policy: str = "edf"
    capsched_config: dict[str, Any] = dataclasses.field(default_factory=dict)
    capsched_request: dict[str, Any] = dataclasses.field(default_factory=dict)
    restart_at: Optional[float] = None
    chain: int = 1

    def __post_init__(self) -> None:
        if not self.loads:
            raise ConfigError("give at least one load")
        for x in self.loads:
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
                raise ConfigError(f"a load must be a number > 0 (a share of fleet capacity), got {x!r}")
        for p in self.policies:
            if p not in POLICIES:
                raise ConfigError(f"unknown policy {p!r} (known: {', '.join(POLICIES)})")
        if self.requests is not None and (not isinstance(self.requests, int) or self.requests < 2):
            raise ConfigError(f"requests must be an integer >= 2, got {self.requests!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")


@dataclasses.dataclass
class Experiment:
    """All runs of one :class:`SimConfig`."""

    config: SimConfig
    workload: Workload
    capacity_rps: float
    device_rates: dict[str, float]
    runs: list[RunMetrics]
    goodput: dict[str, float]
    results: dict[tuple[float, str], SimResult]
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``results.json``: configuration, workload, capacity, runs, goodput."""
        c = self.config
        s = self.workload.summary()
        return {
            "fleet": [[n, k] for n, k in c.fleet.groups],
            "model": c.fleet.model.name,
            "max_num_seqs": c.fleet.max_num_seqs,
            "trace": c.trace,
            "requests": len(self.workload),
            "workload": {k: (None if not math.isfinite(v) else v) for k, v in s.items()},
            "seed": c.seed,
            "loads": list(c.loads),
            "policies": list(c.policies),
            "capsched_policy": c.capsched_policy,
            "capsched_request": dict(c.capsched_request),
            "faults": [dataclasses.asdict(f) for f in c.faults],
            "slowdowns": [dataclasses.asdict(f) for f in c.slowdowns],
            "capacity_rps": self.capacity_rps,
            "device_rates_rps": self.device_rates,
            "deadline": f"arrival + {DEADLINE_FACTOR:g} x unloaded service time on the fastest card",
            "slo_target": SLO_TARGET,
            "goodput_load": self.goodput,
            "goodput_rps": {p: g * self.capacity_rps for p, g in self.goodput.items()},
            "runs": [r.to_dict() for r in self.runs],
            "wall_s": self.wall_s,
        }


def _progress(total: int, enabled: bool, stream: TextIO) -> Callable[[str], None]:
    """A progress callback: tqdm when installed, else one stderr line per run."""
    if not enabled:
        return lambda label: None
    try:
        from tqdm import tqdm
    except ImportError:
        count = [0]

        def plain(label: str) -> None:
            count[0] += 1
            print(f"[{count[0]}/{total}] {label}", file=stream, flush=True)

        return plain
    bar = tqdm(total=total, file=stream, unit="run", leave=False)

    def tick(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return tick


def run_experiment(config: SimConfig, *, progress: bool = False, stream: Optional[TextIO] = None) -> Experiment:
    """Every (load, policy) run of ``config``, in that order; progress on ``stream``
    (default stderr) when ``progress``."""
    t0 = time.perf_counter()
    if stream is None:
        stream = sys.stderr
    w = load_workload(config.trace, config.requests, config.seed)
    s = w.summary()
    devices = config.fleet.build(s["prompt_mean"], s["output_mean"])
    capacity = sum(d.rate for d in devices)
    names = {d.name for d in devices}
    for ev in list(config.faults) + list(config.slowdowns):
        if ev.device not in names:
            raise ConfigError(f"unknown device {ev.device!r} (devices: {', '.join(d.name for d in devices)})")
    tick = _progress(len(config.loads) * len(config.policies), progress, stream)
    runs: list[RunMetrics] = []
    results: dict[tuple[float, str], SimResult] = {}
    for load in config.loads:
        rate = load * capacity
        wl = w.scale_to_rate(rate)
        deadlines = deadlines_for(wl, devices)
        for policy in config.policies:
            t = time.perf_counter()
            sim = Simulation(
                devices,
                wl,
                policy,
                deadlines=deadlines,
                seed=config.seed,
                faults=config.faults,
                slowdowns=config.slowdowns,
                capsched_policy=config.capsched_policy,
                capsched_config=config.capsched_config,
                capsched_request=config.capsched_request,
                restart_at=config.restart_at,
                chain=config.chain,
            )
            res = sim.run()
            runs.append(summarize(res, load, rate, time.perf_counter() - t))
            results[(load, policy)] = res
            tick(f"load {load:g} {policy}")
    gp = {p: goodput([(r.load, r.slo_attainment) for r in runs if r.policy == p]) for p in config.policies}
    return Experiment(
        config, w, capacity, {d.name: d.rate for d in devices}, runs, gp, results, time.perf_counter() - t0
    )


def format_tables(exp: Experiment) -> str:
    """The terminal tables: one per load (policy rows), then goodput."""
    c = exp.config
    s = exp.workload.summary()
    lines = [
        f"Fleet: {c.fleet}; capacity {exp.capacity_rps:.1f} req/s "
        f"({', '.join(f'{n} {r:.2f}' for n, r in _group_rates(exp).items())} req/s each)",
        f"Trace: {c.trace}, {len(exp.workload)} requests (prompt mean {s['prompt_mean']:.0f}, output mean "
        f"{s['output_mean']:.0f}, inter-arrival CV {s['interarrival_cv']:.2f}); seed {c.seed}; "
        f"deadline = arrival + {DEADLINE_FACTOR:g} x unloaded service time on the fastest card",
    ]
    header = ["policy", "mean (s)", "p50 (s)", "p99 (s)", "TTFT p99", "thr (req/s)", "tok/s", "util mean [min-max]",
              "SLO", "done/fail/drop"]
    for load in c.loads:
        rows = [r for r in exp.runs if r.load == load]
        if not rows:
            continue
        lines.append("")
        lines.append(f"Offered load {load:g} x capacity = {rows[0].offered_rate:.1f} req/s")
        table = [header]
        for r in rows:
            u = list(r.utilization.values())
            table.append(
                [
                    r.policy,
                    fmt(r.latency_mean_s),
                    fmt(r.latency_p50_s),
                    fmt(r.latency_p99_s),
                    fmt(r.ttft_p99_s),
                    fmt(r.throughput_rps),
                    fmt(r.throughput_tokens_s, ".0f"),
                    f"{r.utilization_mean * 100:.0f}% [{min(u) * 100:.0f}-{max(u) * 100:.0f}]",
                    f"{r.slo_attainment * 100:.1f}%",
                    f"{r.completed}/{r.failed}/{r.expired}",
                ]
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for k, row in enumerate(table):
            cells = [row[0].ljust(widths[0])] + [cell.rjust(wd) for cell, wd in zip(row[1:], widths[1:])]
            lines.append("  ".join(cells))
            if k == 0:
                lines.append("  ".join("-" * wd for wd in widths))
    lines.append("")
    lines.append(
        f"Goodput (highest load with >= {SLO_TARGET * 100:.0f}% of requests meeting their deadline, among "
        f"{', '.join(f'{x:g}' for x in c.loads)}):"
    )
    for p, g in exp.goodput.items():
        lines.append(f"  {p:22s} {g:g} x capacity = {g * exp.capacity_rps:.1f} req/s")
    return "\n".join(lines)


def _group_rates(exp: Experiment) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, count in exp.config.fleet.groups:
        out[name] = exp.device_rates[f"{name}-0"]
    return out


def write_results(exp: Experiment, out_dir: str) -> list[str]:
    """``results.json`` in ``out_dir`` (created if needed); returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(exp.to_dict(), f, indent=2)
        f.write("\n")
    return [path]


def _loads_sorted(values: Sequence[float]) -> list[float]:
    return sorted(set(values))


def attainment_matrix(exp: Experiment) -> dict[str, list[tuple[float, float]]]:
    """Per policy, (load, SLO attainment) pairs in load order."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in exp.runs:
        out.setdefault(r.policy, []).append((r.load, r.slo_attainment))
    return {p: sorted(v) for p, v in out.items()}


def percentile_latencies(result: SimResult) -> np.ndarray:
    """Sorted end-to-end latencies of the completed requests of one run."""
    done = result.status == 1
    return np.sort((result.finish_s - result.arrival_s)[done])
