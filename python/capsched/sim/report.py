"""Print the cost model's tables for ``docs/simulator.md``.

``python -m capsched.sim.report`` prints, in Markdown, the validation of the cost model
against Vidur's Llama-2-7B figures and the model's figures for the accelerators of the
default heterogeneous fleet.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Optional, TextIO

import numpy as np

from .cost import LLAMA2_7B, CostModel, ModelSpec, validate_against_vidur, validation_table_markdown
from .workload import builtin_trace

__all__ = ["device_table_markdown", "main"]

#: The accelerators the device table describes by default.
DEFAULT_ACCELERATORS: tuple[str, ...] = ("H100-SXM", "A100-SXM-80GB", "A40", "L4")


def device_table_markdown(accelerators: Sequence[str] = DEFAULT_ACCELERATORS, model: ModelSpec = LLAMA2_7B) -> str:
    """A Markdown table of the cost model's figures per accelerator: KV-cache tokens,
    prefill of 2,048 tokens, decode steps, and the unloaded service time of the Azure
    conversation trace's requests (mean over the trace)."""
    trace = builtin_trace("azure-conv")
    lines = [
        f"| accelerator ({model.name}) | peak TFLOP/s | GB/s | KV tokens | prefill 2,048 (ms) | "
        "decode B=1 C=1,024 (ms) | decode B=32 C=1,024 (ms) | service time, Azure conv mean (s) | relative speed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for name in accelerators:
        cm = CostModel(name, model)
        service = float(np.mean(cm.service_time(trace.prompt_tokens, trace.output_tokens)))
        rows.append((cm, service))
    fastest = min(s for _, s in rows)
    for cm, service in rows:
        lines.append(
            f"| {cm.spec.name} | {cm.spec.peak_tflops:g} | {cm.spec.memory_bandwidth_gbs:g} | {cm.kv_tokens():,} | "
            f"{cm.prefill_time(2048) * 1e3:.1f} | {cm.decode_step_time(1, 1024) * 1e3:.1f} | "
            f"{cm.decode_step_time(32, 1024) * 1e3:.1f} | {service:.2f} | {fastest / service:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None, out: TextIO = sys.stdout) -> int:
    """Print the validation table and the device table."""
    print("## Validation against Vidur (Llama-2-7B)\n", file=out)
    print(validation_table_markdown(validate_against_vidur()), file=out)
    print("\n## Per accelerator\n", file=out)
    print(device_table_markdown(), file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
