"""The ``capsched`` command line.

``capsched devices`` prints what discovery finds on this machine (``--json`` for a JSON
list); ``capsched specs`` prints the accelerator spec table. Each subcommand is a
function registered in :data:`COMMANDS`, so that more (``simulate``) can be added with
one ``add_parser`` call and one function.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional, TextIO

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


#: Subcommand name -> (help line, function adding its arguments, function running it).
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, TextIO], int]]] = {
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
}


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
        p.set_defaults(_run=run)
    return parser


def main(argv: Optional[Sequence[str]] = None, *, out: Optional[TextIO] = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status. Usage errors exit through argparse (status 2), as ``--help`` does (0)."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    run: Callable[[argparse.Namespace, TextIO], Any] = args._run
    return int(run(args, out if out is not None else sys.stdout))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
