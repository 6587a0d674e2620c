"""The ``capsched`` command line.

``capsched devices`` prints what discovery finds on this machine (``--json`` for a JSON
list); ``capsched specs`` prints the accelerator spec table. Each subcommand is a
function registered in :data:`COMMANDS`, so that more (``simulate``) can be added with
one ``add_parser`` call and one function.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional, TextIO, Union

__all__ = ["main", "build_parser", "COMMANDS"]

_GIB = 2**30


def _fmt(value: Optional[float], spec: str = "g", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def cmd_devices(args: argparse.Namespace, out: TextIO) -> int:
    """``capsched devices [--json]``: the GPUs discovery finds, a table or JSON."""
    from .discovery import discover_with_reason

    found, reason = discover_with_reason()
    if args.json:
        json.dump([d.to_dict() for d in found], out, indent=2)
        print(file=out)
        return 0
    if not found:
        print(f"No GPU was found: {reason}.", file=out)
        print(
            "Describe devices instead, e.g. Scheduler([Device('gpu0', model='H100-SXM'), "
            "Device('gpu1', model='L4')]); 'capsched specs' lists the known models.",
            file=out,
        )
        return 0
    rows = [["index", "name", "model", "memory GiB", "SMs", "clock MHz (cur/max)", "capacity TFLOP/s", "MIG", "uuid"]]
    for d in found:
        spec = d.spec
        clocks = f"{_fmt(d.clock_sm_mhz, '.0f')}/{_fmt(d.clock_sm_max_mhz, '.0f')}"
        mig = f"{len(d.mig)} slice(s)" if d.mig_enabled else "off"
        rows.append(
            [
                str(d.index),
                d.name,
                d.model + ("" if spec is not None else " (not in spec table)"),
                f"{d.memory_total / _GIB:.1f}",
                _fmt(d.sm_count),
                clocks,
                _fmt(d.capacity, ".1f"),
                mig,
                d.uuid,
            ]
        )
        for m in d.mig:
            rows.append(
                [
                    "",
                    f"  {m.name}",
                    f"  MIG {m.profile}" if m.profile else "  MIG",
                    f"{m.memory_total / _GIB:.1f}",
                    _fmt(m.sm_count),
                    "",
                    _fmt(m.to_dict()["capacity"], ".1f"),
                    f"share {_fmt(m.sm_share, '.3f')}",
                    m.uuid,
                ]
            )
    _table(rows, out)
    print(f"({reason})", file=out)
    return 0


def cmd_specs(args: argparse.Namespace, out: TextIO) -> int:
    """``capsched specs [--json]``: the accelerator spec table."""
    from .specs import SPECS

    if args.json:
        json.dump([dataclasses.asdict(s) for s in SPECS.values()], out, indent=2)
        print(file=out)
        return 0
    rows = [["name", "TFLOP/s", "dtype", "GB/s", "GiB", "TDP W", "max MHz", "SMs/CUs", "aliases"]]
    for s in SPECS.values():
        rows.append(
            [
                s.name,
                f"{s.peak_tflops:g}",
                s.dtype,
                f"{s.memory_bandwidth_gbs:g}",
                f"{s.memory_gib:g}",
                f"{s.tdp_w:g}",
                _fmt(s.max_clock_mhz),
                _fmt(s.sm_count),
                ", ".join(s.aliases),
            ]
        )
    _table(rows, out)
    return 0


def _simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fleet",
        default=None,
        help="ACCELERATOR:COUNT,... (default H100-SXM:2,A100-SXM-80GB:2,L4:4; 'capsched specs' lists the names)",
    )
    p.add_argument("--model", default="Llama-3-8B", help="served model: Llama-3-8B (default) or Llama-2-7B")
    p.add_argument(
        "--trace",
        default="azure-conv",
        help="built-in trace (azure-conv, azure-code), poisson, gamma:CV, or a trace file (.csv/.jsonl[.gz])",
    )
    p.add_argument(
        "--load",
        default=None,
        help="offered loads, comma-separated shares of fleet capacity, each in 1e-6..1e6 (default 0.3,0.5,0.7,0.9,1.5)",
    )
    p.add_argument("--policies", default="all", help="comma-separated policies (default all: round_robin, random, "
                   "least_load, power_of_two_choices, capsched)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--requests", type=int, default=None, help="requests per run: the first N of the trace (default 2000)")
    p.add_argument("--max-num-seqs", type=int, default=128,
                   help="sequences per device and iteration, 1..65536 (default 128)")
    p.add_argument("--fault", action="append", default=[], metavar="DEVICE@START+DURATION",
                   help="take a device down for an interval, e.g. H100-SXM-0@20+30 (repeatable; overlapping "
                        "faults keep it down until the last ends)")
    p.add_argument("--slowdown", action="append", default=[], metavar="DEVICE@START+DURATION:SCALE",
                   help="drop a device's clock to SCALE of its max for an interval, e.g. H100-SXM-0@20+30:0.5 "
                        "(repeatable; while they overlap the lowest SCALE holds)")
    p.add_argument("--restart-at", type=float, default=None, metavar="SECONDS",
                   help="capsched only: at this simulated time, checkpoint the Scheduler, restore it from the "
                        "file and go on with the restored one (what was in flight runs again)")
    p.add_argument("--chain", type=int, default=1, metavar="K",
                   help="agent-style workload: consecutive requests form chains of K steps, each step "
                        "running after the one before (capsched gets them as a DAG with depends_on)")
    p.add_argument("--capsched-policy", default=None,
                   help="capsched only: the capsched Scheduler's policy (default edf)")
    p.add_argument("--capsched-class", default=None, choices=("normal", "deadline"),
                   help="capsched only: sched_class of capsched's requests: normal (default) or deadline (admission "
                   "control: requests no device can admit are rejected and count as misses)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write results.json (and plots, with matplotlib) here, replacing earlier ones; checked "
                        "before the run (created if needed)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (progress stays on stderr)")
    p.add_argument("--no-progress", action="store_true", help="no progress output on stderr")


def cmd_simulate(args: argparse.Namespace, out: TextIO) -> int:
    """``capsched simulate``: replay a trace on a simulated fleet under each policy."""
    from .config import MAX_BATCH_SIZE
    from .errors import CapschedError, ConfigError
    from .sim import run as simrun
    from .sim.engine import MAX_SIM_TIME, parse_fault, parse_slowdown
    from .sim.fleet import DEFAULT_FLEET, Fleet, parse_fleet
    from .sim.cost import model_spec
    from .sim.policies import parse_policies

    parser: argparse.ArgumentParser = args._parser
    try:
        if not 1 <= args.max_num_seqs <= MAX_BATCH_SIZE:
            raise ConfigError(f"--max-num-seqs must be in 1..{MAX_BATCH_SIZE}, got {args.max_num_seqs}")
        model = model_spec(args.model)
        if args.fleet is None:
            fleet = Fleet(DEFAULT_FLEET.groups, model, args.max_num_seqs)
        else:
            fleet = parse_fleet(args.fleet, model, args.max_num_seqs)
        loads: Union[tuple[float, ...], list[float]]
        if args.load is None:
            loads = simrun.DEFAULT_LOADS
        else:
            loads = []
            lo, hi = simrun.LOAD_RANGE
            for part in args.load.split(","):
                try:
                    x = float(part)
                except ValueError:
                    raise ConfigError(f"--load: {part.strip()!r} is not a number") from None
                if not x > 0:
                    raise ConfigError(f"--load: each load must be a number > 0 (a share of fleet capacity), got {part.strip()!r}")
                if not lo <= x <= hi:
                    raise ConfigError(f"--load: each load must be in {lo:g}..{hi:g} (a share of fleet capacity), got {part.strip()!r}")
                if x in loads:
                    raise ConfigError(f"--load: {part.strip()!r} is listed twice")
                loads.append(x)
            loads = tuple(loads)
        if args.requests is not None and args.requests < 2:
            raise ConfigError(f"--requests must be >= 2, got {args.requests}")
        policies = parse_policies(args.policies)
        if "capsched" not in policies:
            # (they would be ignored: refused, as a flag that does nothing is a mistake)
            for flag, given in (("--restart-at", args.restart_at is not None),
                                ("--capsched-policy", args.capsched_policy is not None),
                                ("--capsched-class", args.capsched_class is not None)):
                if given:
                    raise ConfigError(f"{flag} applies to the capsched policy only, and --policies {args.policies!r} "
                                      "does not include it")
        if args.restart_at is not None and not 0 <= args.restart_at <= MAX_SIM_TIME:  # (NaN too)
            raise ConfigError(f"--restart-at must be a time in seconds in 0..{MAX_SIM_TIME:g}, got {args.restart_at:g}")
        capsched_class = args.capsched_class or "normal"
        config = simrun.SimConfig(
            fleet=fleet,
            trace=args.trace,
            loads=tuple(loads),
            policies=policies,
            seed=args.seed,
            requests=args.requests,
            faults=tuple(parse_fault(f) for f in args.fault),
            slowdowns=tuple(parse_slowdown(s) for s in args.slowdown),
            capsched_policy="edf" if args.capsched_policy is None else args.capsched_policy,
            capsched_request={"sched_class": capsched_class} if capsched_class != "normal" else {},
            restart_at=args.restart_at,
            chain=args.chain,
        )
        if args.out is not None:
            simrun.check_out_dir(args.out, config)  # before the run, not after it (its own plot files)

        def warn(message: str) -> None:
            print(f"capsched simulate: warning: {message}", file=sys.stderr, flush=True)

        exp = simrun.run_experiment(config, progress=not args.no_progress, warn=warn)
    except (ConfigError, KeyError, CapschedError, OSError) as exc:  # (bad input the simulator found, e.g. in --trace)
        parser.error(str(exc))  # exits with status 2, argparse style
    written: list[str] = []
    status = 0
    if args.out is not None:
        try:
            written += simrun.write_results(exp, args.out)
            from .sim.plots import have_matplotlib, write_plots

            if have_matplotlib():
                written += write_plots(exp, args.out)
            else:
                print(
                    "matplotlib is not installed: no plots (pip install \"capsched[sim]\" for plots); "
                    "results.json written",
                    file=sys.stderr,
                )
        except OSError as exc:  # checked before the run; the results are still printed below
            print(f"capsched simulate: error: could not write to --out {args.out!r}: {exc}", file=sys.stderr)
            status = 1
    if args.json:
        json.dump(exp.to_dict(), out, indent=2)
        print(file=out)
    else:
        print(simrun.format_tables(exp), file=out)
        if written:
            print(f"\nWrote {', '.join(written)}", file=out)
        print(f"({len(exp.runs)} runs in {exp.wall_s:.1f} s)", file=out)
    return status


#: Subcommand name -> (help line, function adding its arguments, function running it).
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], object], Callable[[argparse.Namespace, TextIO], int]]] = {
    "devices": (
        "list the GPUs discovery finds (NVML, else nvidia-smi)",
        lambda p: p.add_argument("--json", action="store_true", help="print a JSON list instead of a table"),
        cmd_devices,
    ),
    "specs": (
        "list the known accelerator specs",
        lambda p: p.add_argument("--json", action="store_true", help="print a JSON list instead of a table"),
        cmd_specs,
    ),
    "simulate": (
        "simulate serving a trace on a heterogeneous fleet under each policy (no GPU needed)",
        _simulate_args,
        cmd_simulate,
    ),
}


# --------------------------------------------------------------------------- jobs


def _jobs_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="jobs_command", metavar="ACTION")
    sub.required = True
    for name, help_text in (
        ("validate", "check a job file; print its tasks in dependency order with propagated deadlines"),
        ("submit", "run a job file on a simulated fleet (virtual time); print each task's start and end"),
    ):
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.add_argument("file", metavar="FILE", help="job file: JSON (a list, or {\"tasks\": [...]}) or JSONL")
        q.add_argument("--format", choices=("json", "jsonl"), default=None,
                       help="file format (default: from the name; .jsonl/.ndjson are JSONL)")
        q.add_argument("--deadline", type=float, default=None, metavar="T",
                       help="a deadline for the whole job (seconds on the scheduler clock, 0..1e15)")
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name == "submit":
            q.add_argument("--fleet", default=None,
                           help="ACCELERATOR:COUNT,... (default H100-SXM:2,A100-SXM-80GB:2,L4:4)")
            q.add_argument("--model", default="Llama-3-8B", help="served model (default Llama-3-8B)")
            q.add_argument("--policy", default="edf", help="the Scheduler's policy (default edf)")
            q.add_argument("--sched-class", default="background", choices=("normal", "background", "strict", "deadline"),
                           help="the tasks' scheduling class (default background: offline work fills idle capacity)")
            q.add_argument("--max-batch-size", type=int, default=32, help="requests per batch (default 32)")
        q.set_defaults(_jobs_parser=q)


def _num(x: Optional[float], spec: str = ".3f") -> str:
    import math

    return "-" if x is None or not math.isfinite(x) else format(x, spec)


def cmd_jobs(args: argparse.Namespace, out: TextIO) -> int:
    """``capsched jobs validate|submit FILE``: offline job files (``capsched.jobs``)."""
    import math

    from .errors import ConfigError, DependencyError, InvalidArgumentError
    from .jobs import MAX_TIME, load_job, propagate_deadlines, simulate_job

    parser: argparse.ArgumentParser = args._jobs_parser
    if args.deadline is not None and not 0 <= args.deadline <= MAX_TIME:  # (NaN too)
        parser.error(f"--deadline must be a time in seconds in 0..{MAX_TIME:g} (the clock's range), got {args.deadline:g}")
    try:
        tasks = load_job(args.file, format=args.format)
        latest = propagate_deadlines(tasks, args.deadline)
    except (ConfigError, DependencyError, InvalidArgumentError) as exc:
        parser.error(str(exc))  # exits with status 2
    by_id = {t.task_id: t for t in tasks}

    def fin(x: float) -> Optional[float]:
        return x if math.isfinite(x) else None

    if args.jobs_command == "validate":
        # Earliest finish by duration_estimate: the job's critical path from time 0.
        ef: dict[str, float] = {}
        for tid in latest:
            t = by_id[tid]
            start = max([t.schedule_time or 0.0] + [ef[d] for d in t.depends_on])
            ef[tid] = start + t.duration_estimate
        rows_d: list[dict[str, Any]] = [
            {
                "task_id": tid,
                "depends_on": list(by_id[tid].depends_on),
                "schedule_time": by_id[tid].schedule_time,
                "duration_estimate": by_id[tid].duration_estimate,
                "earliest_finish": fin(ef[tid]),
                "latest_finish": fin(lf),
                "latest_start": fin(lf - by_id[tid].duration_estimate),
            }
            for tid, lf in latest.items()
        ]
        critical = max(ef.values(), default=0.0)
        late = [tid for tid, lf in latest.items() if ef[tid] > lf]
        if args.json:
            # (strict JSON: a time that is not finite is null; none is with MAX_TIME, but
            # json.dump would write Infinity, which JSON parsers refuse)
            json.dump({"file": args.file, "tasks": rows_d, "critical_path": fin(critical), "infeasible": late}, out,
                      indent=2, allow_nan=False)
            print(file=out)
            return 0
        rows = [["#", "task_id", "depends_on", "not before", "duration", "latest start", "latest finish"]]
        r: Any  # a row of rows_d here, a TaskRun further down
        for i, r in enumerate(rows_d):
            deps = ",".join(r["depends_on"])
            rows.append([
                str(i), r["task_id"], deps if len(deps) <= 40 else deps[:37] + "...",
                _num(r["schedule_time"]), _num(r["duration_estimate"]),
                _num(r["latest_start"]), _num(r["latest_finish"]),
            ])
        _table(rows, out)
        print(f"{len(rows_d)} task(s) valid; critical path {critical:.3f} s by duration_estimate", file=out)
        if late:
            print(f"warning: {len(late)} task(s) cannot finish by their latest finish even on the critical "
                  f"path: {', '.join(late[:10])}{' ...' if len(late) > 10 else ''}", file=out)
        return 0

    from .sim.cost import model_spec
    from .sim.fleet import DEFAULT_FLEET, Fleet, parse_fleet

    try:
        model = model_spec(args.model)
        fleet = Fleet(DEFAULT_FLEET.groups, model) if args.fleet is None else parse_fleet(args.fleet, model)
        run = simulate_job(
            tasks, fleet=fleet, policy=args.policy, sched_class=args.sched_class, job_deadline=args.deadline,
            max_batch_size=args.max_batch_size,
        )
    except (ConfigError, DependencyError, InvalidArgumentError) as exc:
        msg = str(exc)
        parser.error(f"{args.file}: {msg}" if msg.startswith("task ") else msg)  # (a task's: name its file)
    if args.json:
        json.dump({"file": args.file, **run.to_dict()}, out, indent=2, allow_nan=False)
        print(file=out)
        return 0
    rows = [["task_id", "status", "device", "submitted", "start", "end", "latest finish", "note"]]
    for r in run.tasks:
        rows.append([
            r.task_id, r.status, r.device or "-", _num(r.submitted), _num(r.start), _num(r.end),
            _num(r.latest_finish), (r.reason or "")[:60],
        ])
    _table(rows, out)
    counts = run.to_dict()["counts"]
    print(f"makespan {run.makespan:.3f} s on {run.fleet}; "
          + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())), file=out)
    return 0


COMMANDS["jobs"] = (
    "offline job files: validate one, or run it on a simulated fleet (capsched jobs validate|submit FILE)",
    _jobs_args,
    cmd_jobs,
)


# --------------------------------------------------------------------------- serve


def _serve_args(p: argparse.ArgumentParser) -> None:
    from .server.cli import add_serve_arguments

    add_serve_arguments(p)


def cmd_serve(args: argparse.Namespace, out: TextIO) -> int:
    """``capsched serve``: the OpenAI-compatible server (``docs/server.md``)."""
    from .server.cli import run_serve

    return run_serve(args, out)


COMMANDS["serve"] = (
    "run the OpenAI-compatible HTTP server over a simulated fleet, a fleet daemon (--daemon) or a front end (--remote)",
    _serve_args,
    cmd_serve,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand in :data:`COMMANDS`."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="capsched", description="capsched: capacity-aware scheduling of LLM inference requests."
    )
    parser.add_argument("--version", action="version", version=f"capsched {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (help_text, add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(_run=run, _parser=p)
    return parser


#: The errors of a write to a full or failing output (``capsched specs > /dev/full``).
_OUTPUT_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT", "EIO") if hasattr(errno, n))


def main(argv: Optional[Sequence[str]] = None, *, out: Optional[TextIO] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status. Usage errors exit through argparse (status 2), as ``--help`` does (0). An
    output whose reader went away gives 141, quietly; one that cannot be written (a full
    disk, ``> /dev/full``) gives 1 and a one-line error on stderr."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    run: Callable[[argparse.Namespace, TextIO], Any] = args._run
    stream = out if out is not None else sys.stdout
    try:
        status = int(run(args, stream))
        stream.flush()  # (here, so that a failing write is reported below, not at exit)
        return status
    except BrokenPipeError:
        # The reader went away (``capsched specs --json | head``): stop quietly, as
        # other command-line tools do. (stdout goes to devnull so that the interpreter's
        # final flush does not fail on the closed pipe as well.)
        if out is None:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, the status a shell reports for it
    except OSError as exc:
        if exc.filename is not None or exc.errno not in _OUTPUT_ERRNOS:
            raise  # (not a failed write of the output: a file, a socket; the commands report those)
        # The output cannot be written (``> /dev/full``: ENOSPC): one line, status 1.
        if out is None:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"capsched {args.command}: error: cannot write the output: {exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
