"""Plots of an experiment (needs matplotlib: ``pip install "capsched[sim]"``).

* ``latency_cdf_load<L>.png``: CDF of end-to-end latency per policy, one file per load;
* ``utilization_<policy>_load<L>.png``: per-device busy share over time, at one load
  (:func:`utilization_load`: the highest load not above 1, or the lowest if every load
  is above 1);
* ``latency_vs_load.png``: mean and p99 latency and SLO attainment against offered load,
  one line per policy.

``<L>`` is :func:`load_tag`: the load as ``{load:g}`` formats it (``0.5``, ``1``), or its
``repr`` where that would not tell it from another load (``0.5000001``), so that two
loads never share a file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .metrics import utilization_timeline

if TYPE_CHECKING:  # pragma: no cover
    from .run import Experiment

__all__ = ["have_matplotlib", "write_plots", "load_tag", "utilization_load", "plot_names", "PLOT_PATTERNS"]

#: Glob patterns of every file name :func:`write_plots` may write.
PLOT_PATTERNS = ("latency_cdf_load*.png", "utilization_*_load*.png", "latency_vs_load.png")


def load_tag(load: float) -> str:
    """The load in file names and titles: ``{load:g}`` where that reads back as the same
    number, else ``repr(load)`` (which always does), so distinct loads get distinct tags."""
    text = f"{load:g}"
    return text if float(text) == load else repr(float(load))


def utilization_load(loads: Sequence[float]) -> float:
    """The load the utilization plots show: the highest not above 1 (the fleet's
    capacity: past it every policy saturates), or the lowest if every load is above 1."""
    below = [x for x in loads if x <= 1.0]
    return max(below) if below else min(loads)


def plot_names(loads: Sequence[float], policies: Sequence[str]) -> list[str]:
    """The file names :func:`write_plots` writes for these loads and policies, in order."""
    focus = load_tag(utilization_load(loads))
    return (
        [f"latency_cdf_load{load_tag(x)}.png" for x in loads]
        + [f"utilization_{p}_load{focus}.png" for p in policies]
        + ["latency_vs_load.png"]
    )


def have_matplotlib() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plots(exp: "Experiment", out_dir: str) -> list[str]:
    """Write the plots into ``out_dir``; returns the paths.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths: list[str] = []
    loads = list(exp.config.loads)
    policies = list(exp.config.policies)

    for load in loads:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for p in policies:
            r = exp.results[(load, p)]
            done = r.status == 1
            lat = np.sort((r.finish_s - r.arrival_s)[done])
            if lat.size:
                ax.step(lat, np.arange(1, lat.size + 1) / r.status.size, where="post", label=p)
        ax.set_xscale("log")
        ax.set_xlabel("end-to-end latency (s)")
        ax.set_ylabel("share of requests completed within")
        ax.set_title(f"Latency CDF, load {load_tag(load)} x capacity")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = os.path.join(out_dir, f"latency_cdf_load{load_tag(load)}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    focus = utilization_load(loads)
    for p in policies:
        r = exp.results[(focus, p)]
        t, shares = utilization_timeline(r, buckets=80)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, row in zip(r.device_names, shares):
            ax.plot(t, row * 100.0, label=name, lw=1.2)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("busy (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"Device utilization over time: {p}, load {load_tag(focus)}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = os.path.join(out_dir, f"utilization_{p}_load{load_tag(focus)}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for p in policies:
        rows = sorted((r for r in exp.runs if r.policy == p), key=lambda r: r.load)
        x = [r.load for r in rows]
        axes[0].plot(x, [r.latency_mean_s for r in rows], marker="o", label=p)
        axes[1].plot(x, [r.latency_p99_s for r in rows], marker="o", label=p)
        axes[2].plot(x, [r.slo_attainment * 100 for r in rows], marker="o", label=p)
    for ax, what in zip(axes, ("mean latency (s)", "p99 latency (s)", "SLO attainment (%)")):
        ax.set_xlabel("offered load (x fleet capacity)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].axhline(90, color="grey", ls="--", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.suptitle("Latency and SLO attainment against offered load")
    fig.tight_layout()
    path = os.path.join(out_dir, "latency_vs_load.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths
