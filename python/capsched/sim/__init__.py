"""The simulator: a GPU cost model, request workloads, fleets, the discrete-event engine
driving the real :class:`capsched.Scheduler`, baseline policies and metrics (see
``docs/simulator.md``)."""

from __future__ import annotations

from .cost import LLAMA2_7B, LLAMA3_8B, CostModel, ModelSpec, validate_against_vidur
from .engine import Fault, SimResult, Simulation, Slowdown, deadlines_for, simulate
from .fleet import DEFAULT_FLEET, Fleet, SimDevice, parse_fleet, saturated_rate
from .metrics import RunMetrics, goodput, summarize
from .policies import POLICIES
from .run import Experiment, SimConfig, format_tables, run_experiment
from .workload import Workload, builtin_trace, gamma_bursty, load_azure_csv, load_mooncake_jsonl, poisson, scale_to_rate

__all__ = [
    "DEFAULT_FLEET",
    "Experiment",
    "Fault",
    "Fleet",
    "POLICIES",
    "RunMetrics",
    "SimConfig",
    "SimDevice",
    "SimResult",
    "Simulation",
    "Slowdown",
    "deadlines_for",
    "format_tables",
    "goodput",
    "parse_fleet",
    "run_experiment",
    "saturated_rate",
    "simulate",
    "summarize",
    "CostModel",
    "LLAMA2_7B",
    "LLAMA3_8B",
    "ModelSpec",
    "Workload",
    "builtin_trace",
    "gamma_bursty",
    "load_azure_csv",
    "load_mooncake_jsonl",
    "poisson",
    "scale_to_rate",
    "validate_against_vidur",
]
