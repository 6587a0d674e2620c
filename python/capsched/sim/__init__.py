"""The simulator: a GPU cost model and request workloads (see ``docs/simulator.md``)."""

from __future__ import annotations

from .cost import LLAMA2_7B, LLAMA3_8B, CostModel, ModelSpec, validate_against_vidur
from .workload import Workload, builtin_trace, gamma_bursty, load_azure_csv, load_mooncake_jsonl, poisson, scale_to_rate

__all__ = [
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
