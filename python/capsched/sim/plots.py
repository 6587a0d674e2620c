"""Plots of an experiment (needs matplotlib: ``pip install "capsched[sim]"``).

* ``latency_cdf_load<L>.png``: CDF of end-to-end latency per policy, one file per load;
* ``utilization_<policy>_load<L>.png``: per-device busy share over time (at the highest
  load not above 1, or the only load);
* ``latency_vs_load.png``: mean and p99 latency and SLO attainment against offered load,
  one line per policy.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from .metrics import utilization_timeline

if TYPE_CHECKING:  # pragma: no cover
    from .run import Experiment

__all__ = ["have_matplotlib", "write_plots"]


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
        ax.set_title(f"Latency CDF, load {load:g} x capacity")
        ax.grid(True, alpha=0.3)
        ax.legend()
        path = os.path.join(out_dir, f"latency_cdf_load{load:g}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    below = [x for x in loads if x <= 1.0]
    focus = max(below) if below else loads[0]
    for p in policies:
        r = exp.results[(focus, p)]
        t, shares = utilization_timeline(r, buckets=80)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, row in zip(r.device_names, shares):
            ax.plot(t, row * 100.0, label=name, lw=1.2)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("busy (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"Device utilization over time: {p}, load {focus:g}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = os.path.join(out_dir, f"utilization_{p}_load{focus:g}.png")
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
