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
import numbers
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, TextIO

import numpy as np

from ..errors import ConfigError, InvalidArgumentError
from .engine import (
    DEADLINE_FACTOR,
    Fault,
    SimResult,
    Simulation,
    Slowdown,
    check_capsched_options,
    check_chain,
    check_events,
    check_restart_at,
    check_seed,
    deadlines_for,
    MAX_SIM_TIME,
    unservable,
)
from .fleet import DEFAULT_FLEET, Fleet
from .metrics import SLO_TARGET, RunMetrics, fmt, goodput, summarize
from .policies import POLICIES
from .workload import BUILTIN_TRACES, Workload, gamma_bursty, load_trace, poisson

__all__ = [
    "SimConfig",
    "Experiment",
    "DEFAULT_LOADS",
    "DEFAULT_REQUESTS",
    "LOAD_RANGE",
    "TRACE_GAMMA_CV_MAX",
    "load_workload",
    "check_out_dir",
    "run_experiment",
    "format_tables",
]

#: Offered loads of the default run (shares of fleet capacity); 1.5 is the overload point.
DEFAULT_LOADS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9, 1.5)
#: Requests per run by default (the first ones of the trace).
DEFAULT_REQUESTS = 2000
#: The offered loads a run takes, inclusive (shares of fleet capacity): beyond them the
#: arrival times lose their meaning (1e-14 puts arrivals near 1e14 s, where float64
#: times lose the milliseconds of an iteration; 1e300 overflows the rate).
LOAD_RANGE: tuple[float, float] = (1e-6, 1e6)
#: The largest CV of a ``gamma:CV`` trace: beyond it nearly every gap of the gamma draw is
#: 0 s in floating point, so the requests arrive at one instant (the generator itself,
#: :func:`~capsched.sim.workload.gamma_bursty`, takes up to ``GAMMA_CV_RANGE[1]``).
TRACE_GAMMA_CV_MAX = 100.0


def load_workload(trace: str, requests: Optional[int], seed: int) -> Workload:
    """The workload of a run: a built-in trace name (``azure-conv``, ``azure-code``),
    ``poisson`` or ``gamma:CV`` (synthetic arrivals, Azure conversation lengths), or a
    trace file path; its first ``requests`` requests, arrivals shifted to start at 0.

    Raises:
        ConfigError: an unknown name, a file that cannot be read, a ``gamma:CV``
            whose CV is not in 1e-6..:data:`TRACE_GAMMA_CV_MAX` or whose draw puts every
            arrival at one instant, or fewer than 2 requests spanning more than 0 s.
    """
    n = requests if requests is not None else DEFAULT_REQUESTS
    if trace == "poisson":
        w = poisson(1.0, n=n, seed=seed)
    elif trace.startswith("gamma:"):
        try:
            cv = float(trace.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"bad trace {trace!r}: expected gamma:CV with a number, e.g. gamma:2") from None
        try:
            w = gamma_bursty(1.0, cv, n=n, seed=seed)
        except InvalidArgumentError as exc:
            raise ConfigError(f"bad trace {trace!r}: {exc}") from None
        if cv > TRACE_GAMMA_CV_MAX:
            raise ConfigError(
                f"bad trace {trace!r}: the CV must be at most {TRACE_GAMMA_CV_MAX:g} (beyond, nearly every gap is "
                "0 s and the requests arrive at one instant)"
            )
        if w.shift_to_zero().head(n).duration_s <= 0:
            raise ConfigError(
                f"bad trace {trace!r}: its {n} arrivals fell at one instant (with a CV this large nearly every gap "
                "is 0 s): give a smaller CV or more --requests"
            )
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
    """What ``capsched simulate`` runs.

    Raises:
        ConfigError: at construction: ``loads`` or ``policies`` not a non-empty
            sequence, a load not a number in :data:`LOAD_RANGE` or one listed twice, an
            unknown policy or one listed twice, ``requests`` not an integer >= 2, a fleet
            that is not a :class:`Fleet`, and whatever :class:`Simulation` refuses in
            ``seed``, ``faults``, ``slowdowns``, ``capsched_policy``,
            ``capsched_config``, ``capsched_request``, ``restart_at`` or ``chain`` (the
            same checks).
    """

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
        for what in ("loads", "policies"):
            value = getattr(self, what)
            if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (Sequence, set, frozenset)):
                raise ConfigError(f"{what} must be a tuple (or list), got {value!r}")
            if not value:
                raise ConfigError(f"{what} is empty: give at least one")
            setattr(self, what, tuple(value))
        lo, hi = LOAD_RANGE
        for x in self.loads:
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not lo <= float(x) <= hi:
                raise ConfigError(f"loads: a load must be a number in {lo:g}..{hi:g} (a share of fleet capacity), got {x!r}")
        self.loads = tuple(float(x) for x in self.loads)
        if len(set(self.loads)) != len(self.loads):
            raise ConfigError(f"loads: a load is listed twice in {self.loads!r}")
        for p in self.policies:
            if not isinstance(p, str) or p not in POLICIES:
                raise ConfigError(f"policies: unknown policy {p!r} (known: {', '.join(POLICIES)})")
        if len(set(self.policies)) != len(self.policies):
            raise ConfigError(f"policies: a policy is listed twice in {self.policies!r}")
        if not isinstance(self.fleet, Fleet):
            raise ConfigError(f"fleet must be a Fleet (parse_fleet), got {self.fleet!r}")
        if self.requests is not None and (
            isinstance(self.requests, bool) or not isinstance(self.requests, int) or self.requests < 2
        ):
            raise ConfigError(f"requests must be an integer >= 2, got {self.requests!r}")
        if not isinstance(self.trace, str):
            raise ConfigError(f"trace must be a str (a name or a path), got {self.trace!r}")
        self.seed = check_seed(self.seed)
        faults, slowdowns = check_events(self.faults, self.slowdowns)
        self.faults, self.slowdowns = tuple(faults), tuple(slowdowns)
        self.capsched_policy, self.capsched_config, self.capsched_request = check_capsched_options(
            self.capsched_policy, self.capsched_config, self.capsched_request
        )
        self.restart_at = check_restart_at(self.restart_at)
        self.chain = check_chain(self.chain)


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
            "unservable_requests": next(iter(self.results.values())).unservable if self.results else 0,
            "workload": {k: (None if not math.isfinite(v) else v) for k, v in s.items()},
            "seed": c.seed,
            "loads": list(c.loads),
            "policies": list(c.policies),
            "capsched_policy": c.capsched_policy,
            "capsched_config": dict(c.capsched_config),
            "capsched_request": dict(c.capsched_request),
            "restart_at": c.restart_at,
            "chain": c.chain,
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


#: A run that has taken this long (seconds) reports, with progress on, each further tenth
#: of its requests that have ended (a line on stderr), so that a long run shows it moves.
LONG_RUN_S = 5.0


def _in_run_progress(label: str, enabled: bool, stream: TextIO) -> Optional[Callable[[int, int], None]]:
    """The ``progress`` callback of one run (:class:`Simulation`): once the run has taken
    :data:`LONG_RUN_S`, a line per tenth of its requests ended (through ``tqdm.write``
    when tqdm is installed, so that the bar stays whole). None when progress is off."""
    if not enabled:
        return None
    t0 = time.perf_counter()

    def report(ended: int, total: int) -> None:
        elapsed = time.perf_counter() - t0
        if elapsed < LONG_RUN_S:
            return
        line = f"  {label}: {ended:,} of {total:,} requests ended ({100 * ended // max(1, total)}%), {elapsed:.0f} s"
        try:
            from tqdm import tqdm
        except ImportError:
            print(line, file=stream, flush=True)
            return
        tqdm.write(line, file=stream)

    return report


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


def run_experiment(
    config: SimConfig,
    *,
    progress: bool = False,
    stream: Optional[TextIO] = None,
    warn: Optional[Callable[[str], None]] = None,
) -> Experiment:
    """Every (load, policy) run of ``config``, in that order; progress on ``stream``
    (default stderr) when ``progress``. ``warn`` (if given) is called, before the first
    run, with a line for each thing the user may not expect: a trace shorter than
    ``config.requests``, requests no device can hold (they fail under every policy).

    A fault, slowdown or restart (``restart_at``, with capsched among the policies)
    that starts after the last arrival of a load's run is warned about too: it may
    change nothing there.

    Raises:
        ConfigError: the trace cannot be loaded, a fault or slowdown names no device
            of the fleet, or a load would spread the arrivals beyond
            :data:`~capsched.sim.engine.MAX_SIM_TIME` (before any run).
    """
    t0 = time.perf_counter()
    if stream is None:
        stream = sys.stderr
    w = load_workload(config.trace, config.requests, config.seed)
    s = w.summary()
    devices = config.fleet.build(s["prompt_mean"], s["output_mean"])
    bad = np.flatnonzero(unservable(w, devices))
    if 0 < bad.size < len(w):
        # The capacity (and so the arrival rate of each load) is for the requests the
        # fleet can serve: one huge prompt would otherwise drag it towards zero.
        ok = np.ones(len(w), dtype=bool)
        ok[bad] = False
        devices = config.fleet.build(float(w.prompt_tokens[ok].mean()), float(w.output_tokens[ok].mean()))
    capacity = sum(d.rate for d in devices)
    names = {d.name for d in devices}
    for ev in list(config.faults) + list(config.slowdowns):
        if ev.device not in names:
            raise ConfigError(f"unknown device {ev.device!r} (devices: {', '.join(d.name for d in devices)})")
    scaled: dict[float, Workload] = {}
    for load in config.loads:
        wl = w.scale_to_rate(load * capacity)
        if wl.duration_s > MAX_SIM_TIME:
            raise ConfigError(
                f"--load {load:g}: the trace's {len(wl)} arrivals would span {wl.duration_s:.3g} s at "
                f"{load * capacity:.3g} req/s, beyond the simulator's {MAX_SIM_TIME:g} s: give a higher load"
            )
        scaled[load] = wl
    if warn is not None:
        late: list[tuple[str, float]] = [(f"fault {f.device}@{f.start_s:g}+{f.duration_s:g}", f.start_s) for f in config.faults]
        late += [(f"slowdown {f.device}@{f.start_s:g}+{f.duration_s:g}:{f.clock_scale:g}", f.start_s) for f in config.slowdowns]
        if config.restart_at is not None and "capsched" in config.policies:
            late.append(("the restart (restart_at)", config.restart_at))
        for label, start in late:
            after = [load for load, wl in scaled.items() if start > float(wl.arrival_s[-1])]
            if after:
                ends = ", ".join(f"{float(scaled[x].arrival_s[-1]):.1f} s at load {x:g}" for x in after)
                warn(f"{label} starts at {start:g} s, after the last arrival ({ends}): it may change nothing there")
        if config.requests is not None and len(w) < config.requests:
            warn(f"trace {config.trace!r} has only {len(w)} requests: running {len(w)}, not {config.requests}")
        if bad.size:
            i = int(bad[0])
            warn(
                f"{bad.size} of the {len(w)} requests need more KV tokens than any device holds (the largest "
                f"holds {max(d.kv_tokens for d in devices):,}; request {i} needs "
                f"{int(w.prompt_tokens[i]) + int(w.output_tokens[i]):,}): they count as failed under every policy"
            )
    tick = _progress(len(config.loads) * len(config.policies), progress, stream)
    runs: list[RunMetrics] = []
    results: dict[tuple[float, str], SimResult] = {}
    for load in config.loads:
        rate = load * capacity
        wl = scaled[load]
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
                progress=_in_run_progress(f"load {load:g} {policy}", progress, stream),
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


def check_out_dir(out_dir: str, config: Optional[SimConfig] = None) -> None:
    """Refuse, before a run, an ``--out`` directory that the results could not be
    written to: an empty name, an existing path that is not a directory (or whose
    ``results.json`` or a plot file is there but not a regular file: with ``config``, the
    plots of its loads and policies, :func:`capsched.sim.plots.plot_names`; without it,
    any name a plot may have, :data:`capsched.sim.plots.PLOT_PATTERNS`), or one (or its
    nearest existing parent) that is not writable (tried: a directory that does not
    exist is created now, and a temporary file is created and removed in it). The files
    in it (``results.json``, plots) are overwritten.

    Raises:
        ConfigError: naming the path and what is wrong.
    """
    if not isinstance(out_dir, str) or not out_dir.strip():
        raise ConfigError(f"--out must name a directory, got {out_dir!r}")
    path = os.path.abspath(out_dir)
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"--out {out_dir!r} exists and is not a directory")
        import glob

        from .plots import PLOT_PATTERNS, plot_names

        if config is not None:
            names = plot_names(config.loads, config.policies)
            targets = [os.path.join(path, x) for x in ["results.json"] + names]
        else:
            targets = [os.path.join(path, "results.json")]
            for pattern in PLOT_PATTERNS:
                targets += sorted(glob.glob(os.path.join(glob.escape(path), pattern)))
        for target in targets:
            if os.path.lexists(target) and not os.path.isfile(target):
                raise ConfigError(f"--out {out_dir!r}: {target} exists and is not a regular file")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {out_dir!r}: the directory is not writable")
        _probe_write(out_dir, path)
        return
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ConfigError(f"--out {out_dir!r}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out_dir!r}: cannot create it ({parent} is not writable)")
    # os.access says yes to root everywhere (and knows nothing of read-only mounts or
    # /proc): create it now, as writing the results would.
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out_dir!r}: cannot create it ({exc.strerror or exc})") from None
    _probe_write(out_dir, path)


def _probe_write(out_dir: str, path: str) -> None:
    """ConfigError unless a file can be created in the directory ``path``."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {out_dir!r}: cannot write in it ({exc.strerror or exc})") from None


def write_results(exp: Experiment, out_dir: str) -> list[str]:
    """``results.json`` in ``out_dir`` (created if needed; an existing one is
    overwritten); returns the paths written."""
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
