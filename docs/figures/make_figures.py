#!/usr/bin/env python3
"""Draw the figures of docs/concepts.md from capsched's own code.

Every number drawn comes from a real :class:`capsched.Scheduler` driven through its public
API in virtual time (``now=`` on every call); nothing is simulated by hand. Each data
function also checks what it computed against the formulas that docs/concepts.md states
(PELT's closed form, util_est's EWMA, the fitness rule, the wait-or-go rule) and raises
``AssertionError`` if the code and the document disagree, so running this script is a test
of the document as well.

    pip install "capsched[sim]"                 # matplotlib
    python docs/figures/make_figures.py         # writes docs/figures/*.png
    python docs/figures/make_figures.py --out /tmp/figs

Figures:

* ``pelt.png``: a device's PELT ``util_avg`` while it runs one request from idle for 2 s
  and then idles, at full clock and at half clock (frequency invariance), against the
  closed form; and a request class's util_est (EWMA, last sample, estimate) as its
  requests' durations change.
* ``placement.png``: one step placing 13 requests with different deadlines on a mixed
  fleet (H100, A100, 2 x L4) with ``wait_for_fit``: each device's usable capacity, its
  fitting threshold and the utilizations placed on it; the one request that fits nowhere
  waits.
* ``batch_timeline.png``: batch mode with dynamic batching and ``max_queue_delay``:
  arrivals, held batches and dispatched batches on two devices.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Optional

from capsched import Config, Device, InferenceRequest, Scheduler

HERE = Path(__file__).resolve().parent
PERIOD = 1.0 / 32.0  # Config.pelt_period's default
Y = 0.5 ** (1.0 / 32.0)


# --------------------------------------------------------------------------- data


def pelt_series(run_s: float = 2.0, total_s: float = 4.0, samples_per_period: int = 4) -> dict[str, Any]:
    """util_avg of two devices that each run one request from t = 0 to ``run_s`` and then
    idle until ``total_s``: ``full`` at its max clock, ``half`` at half of it.

    Both have ``max_batch_size = 1`` and one batch in flight, so one request keeps a device
    fully occupied (occupancy 1) and its running scale is ``clock_scale x capacity_orig``:
    1024 and 512. Checks the closed form at every period boundary:
    ``util_avg = s (1 - y^p)`` while running ``p`` periods from idle, then
    ``util_avg(run_s) x y^q`` after ``q`` idle periods.
    """
    devices = [Device(name, max_inflight_batches=1, max_clock_mhz=1980.0) for name in ("full", "half")]
    s = Scheduler(devices, policy="fcfs", max_batch_size=1)
    s.set_clock("half", 990.0, now=0.0)  # clock_scale 0.5 from t = 0
    ids = [s.submit(InferenceRequest(prompt_tokens=64, max_new_tokens=64), now=0.0) for _ in devices]
    res = s.step(0.0)
    assert sorted(b.device for b in res.batches) == ["full", "half"]
    n = int(round(total_s / PERIOD)) * samples_per_period
    t: list[float] = []
    util: dict[str, list[float]] = {"full": [], "half": []}
    done = False
    for k in range(n + 1):
        now = k * PERIOD / samples_per_period
        if not done and now >= run_s:
            for rid in ids:
                s.complete(rid, now=run_s)
            done = True
        s.step(now)
        t.append(now)
        for d in s.stats()["devices"]:
            util[d["name"]].append(float(d["util_avg"]))
    closed: dict[str, list[float]] = {}
    for name, scale in (("full", 1024.0), ("half", 512.0)):
        at_end = scale * (1.0 - Y ** (run_s / PERIOD))
        closed[name] = [
            scale * (1.0 - Y ** (x / PERIOD)) if x <= run_s else at_end * Y ** ((x - run_s) / PERIOD) for x in t
        ]
        for k in range(0, len(t), samples_per_period):  # period boundaries
            got, want = util[name][k], closed[name][k]
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (name, t[k], got, want)
    # one half-life: 32 periods from idle give half the scale
    k32 = 32 * samples_per_period
    assert math.isclose(util["full"][k32], 512.0, rel_tol=1e-12), util["full"][k32]
    return {"t": t, "util": util, "closed": closed, "run_s": run_s}


def util_est_series(durations: Optional[list[float]] = None, tokens: int = 1000) -> dict[str, Any]:
    """util_est of one request class as requests of ``tokens`` tokens complete, each
    after its duration, alone on a full-clock device of capacity 1024.

    Checks each sample against ``duration x clock_scale x capacity_orig / 1024 / batch /
    tokens``, the EWMA's weight 1/4 and ``estimate = max(ewma, last)``.
    """
    if durations is None:
        durations = [0.1] * 6 + [0.3] * 6 + [0.1] * 8
    s = Scheduler([Device("gpu0")], policy="fcfs", max_batch_size=1)
    now = 0.0
    ewma: Optional[float] = None
    rows: list[dict[str, float]] = []
    for d in durations:
        rid = s.submit(InferenceRequest(prompt_tokens=tokens // 2, max_new_tokens=tokens - tokens // 2,
                                        request_class="chat"), now=now)
        assert [b.request_ids for b in s.step(now).batches] == [[rid]]
        now += d
        s.complete(rid, now=now)
        est = s.class_estimate("chat")
        assert est is not None
        sample = d / tokens
        ewma = sample if ewma is None else ewma + (sample - ewma) / 4.0
        assert math.isclose(est["last"], sample, rel_tol=1e-9), (est, sample)
        assert math.isclose(est["ewma"], ewma, rel_tol=1e-9), (est, ewma)
        assert math.isclose(est["estimate"], max(ewma, sample), rel_tol=1e-9), est
        rows.append(est)
        now += 0.05
    return {"durations": durations, "rows": rows, "tokens": tokens}


#: Seconds to each request's deadline in the placement example (1,000 tokens each).
PLACEMENT_TIMEOUTS = (0.3, 0.32, 0.34, 0.36, 0.7, 0.9, 1.2, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0)


def placement_example(timeouts: tuple[float, ...] = PLACEMENT_TIMEOUTS) -> dict[str, Any]:
    """One batch-mode step placing requests of 1,000 tokens with the given timeouts on
    H100-SXM, A100-SXM-80GB and 2 x L4 (capacities from the spec table), EDF order,
    ``max_batch_size = 3``, ``Config(wait_for_fit=True)`` and util_est's default work per
    token (1e-4 s), so request ``i`` needs ``u = 1024 x 0.1 / timeout`` of the strongest
    device.

    Checks that each device's ``placed_util`` is the sum of its requests' ``u``, that every
    placed request fitted when it was placed (``u x 1.25 < spare`` then) and that a request
    left queued fitted no device that still had room.
    """
    fleet = [Device("H100", model="H100-SXM"), Device("A100", model="A100-SXM-80GB"),
             Device("L4-0", model="L4"), Device("L4-1", model="L4")]
    cfg = Config(default_work_per_token=1e-4, wait_for_fit=True)
    s = Scheduler(fleet, policy="edf", max_batch_size=3, config=cfg)
    work = cfg.default_work_per_token * 1000
    reqs: list[dict[str, Any]] = []
    for timeout in timeouts:
        rid = s.submit(InferenceRequest(prompt_tokens=500, max_new_tokens=500, timeout=timeout), now=0.0)
        reqs.append({"id": rid, "timeout": timeout, "u": 1024.0 * work / timeout, "device": None})
    res = s.step(0.0)
    by_id = {r["id"]: r for r in reqs}
    for b in res.batches:
        for rid in b.request_ids:
            by_id[rid]["device"] = b.device
    stats = s.stats()
    devices = []
    for d in stats["devices"]:
        placed = [r for r in reqs if r["device"] == d["name"]]
        assert math.isclose(sum(r["u"] for r in placed), d["placed_util"], rel_tol=1e-9), d
        spare = d["capacity"]
        for r in sorted(placed, key=lambda r: r["id"]):  # EDF = id order here
            assert r["u"] * cfg.fit_margin < spare, (d["name"], r)
            spare -= r["u"]
        devices.append({"name": d["name"], "capacity": d["capacity"], "placed": placed,
                        "placed_util": d["placed_util"]})
    waiting = [r for r in reqs if r["device"] is None]
    for r in waiting:
        assert s.status(r["id"]) == "queued"
    assert stats["placed_fallback"] == 0
    return {"devices": devices, "waiting": waiting, "requests": reqs, "fit_margin": cfg.fit_margin}


#: Arrival times (s) in the batch timeline example.
TIMELINE_ARRIVALS = (0.00, 0.01, 0.02, 0.10, 0.13, 0.16, 0.18, 0.19, 0.20, 0.21, 0.40, 0.55, 0.56, 0.62)


def batch_timeline(arrivals: tuple[float, ...] = TIMELINE_ARRIVALS, max_queue_delay: float = 0.05,
                   max_batch_size: int = 4) -> dict[str, Any]:
    """A batch-mode server loop in virtual time: two equal devices, one batch in flight
    each, ``max_batch_size`` and ``Config(max_queue_delay=...)`` with dynamic batching. The
    server steps at every arrival, every batch end and every ``StepResult.next_step_at``;
    a batch of ``n`` runs ``0.08 + 0.01 n`` seconds and then all its members complete.

    Checks the wait-or-go rule: a dispatched batch is full or its oldest member waited
    ``max_queue_delay``; a step that holds a batch asks to be called again by the oldest
    held arrival + ``max_queue_delay``.
    """
    s = Scheduler([Device("gpu0", max_inflight_batches=1), Device("gpu1", max_inflight_batches=1)],
                  policy="fcfs", max_batch_size=max_batch_size,
                  config=Config(max_queue_delay=max_queue_delay))
    arrival_of: dict[int, float] = {}
    pending = sorted(arrivals)
    running: list[tuple[float, str, list[int]]] = []  # (end, device, ids)
    batches: list[dict[str, Any]] = []
    holds: list[float] = []
    wake: Optional[float] = None
    now = 0.0
    while pending or running or (wake is not None):
        candidates = [x for x in (pending[0] if pending else None,
                                  min(r[0] for r in running) if running else None, wake) if x is not None]
        now = min(candidates)
        for end, dev, ids in [r for r in running if r[0] <= now]:
            s.complete_many(ids, now=end)
            running.remove((end, dev, ids))
        while pending and pending[0] <= now:
            t = pending.pop(0)
            arrival_of[s.submit(InferenceRequest(prompt_tokens=100, max_new_tokens=100), now=t)] = t
        res = s.step(now)
        if res.held:
            holds.append(now)
        for b in res.batches:
            ids = list(b.request_ids)
            oldest = min(arrival_of[i] for i in ids)
            assert len(ids) == max_batch_size or now >= oldest + max_queue_delay - 1e-12, (now, ids)
            end = now + 0.08 + 0.01 * len(ids)
            running.append((end, b.device, ids))
            batches.append({"device": b.device, "start": now, "end": end, "ids": ids,
                            "arrivals": [arrival_of[i] for i in ids]})
        wake = res.next_step_at
        if wake is not None and not math.isfinite(wake):
            wake = None  # nothing to wake up for
        if wake is not None:
            assert wake > now
            if res.held:
                queued = [t for i, t in arrival_of.items() if s.status(i) == "queued"]
                assert wake <= min(queued) + max_queue_delay + 1e-12, (wake, queued)
    assert sorted(i for b in batches for i in b["ids"]) == sorted(arrival_of)
    assert s.stats()["conservation_ok"]
    return {"batches": batches, "arrivals": sorted(arrivals), "holds": holds,
            "max_queue_delay": max_queue_delay, "max_batch_size": max_batch_size}


# --------------------------------------------------------------------------- drawing


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit('drawing the figures needs matplotlib: pip install "capsched[sim]"') from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _save(fig: Any, path: Path) -> Path:
    # no timestamps or version strings in the file, so a rerun changes nothing
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def draw_pelt(out: Path) -> Path:
    """pelt.png: util_avg at full and half clock, and util_est."""
    plt = _pyplot()
    p = pelt_series()
    e = util_est_series()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.axvspan(0, p["run_s"], color="0.92", label="request in flight")
    for name, color, label in (("full", "C0", "full clock (scale 1024)"), ("half", "C1", "half clock (scale 512)")):
        ax1.plot(p["t"], p["util"][name], color=color, lw=1.8, label=f"util_avg, {label}")
        ax1.plot(p["t"], p["closed"][name], color="k", lw=0.7, ls="--")
    ax1.plot([], [], color="k", lw=0.7, ls="--", label="closed form s(1 - y^p), then x y^q")
    ax1.plot([1.0], [512.0], "o", color="k", ms=4)
    ax1.annotate("32 periods (1 s) from idle: s / 2", xy=(1.0, 512), xytext=(0.1, 620), fontsize=8)
    ax1.set(xlabel="time (s); PELT period 1/32 s = 1024 units", ylabel="util_avg (capacity units)",
            title="PELT: y^32 = 1/2, frequency-invariant", ylim=(0, 1100))
    ax1.legend(loc="upper right", fontsize=7)
    k = list(range(1, len(e["rows"]) + 1))
    scale = 1e3  # ms of invariant work per 1,000 tokens... per token x 1e3 tokens
    ax2.step(k, [r["last"] * e["tokens"] * scale for r in e["rows"]], where="mid", color="0.6", label="last sample")
    ax2.plot(k, [r["ewma"] * e["tokens"] * scale for r in e["rows"]], "o-", color="C2", ms=3, label="EWMA (weight 1/4)")
    ax2.plot(k, [r["estimate"] * e["tokens"] * scale for r in e["rows"]], "s--", color="C3", ms=3,
             label="estimate = max(EWMA, last)")
    ax2.set(xlabel="completed request of the class", ylabel=f"invariant work of {e['tokens']} tokens (ms)",
            title="util_est of a request class", ylim=(0, 350))
    ax2.legend(loc="upper right", fontsize=7)
    path = _save(fig, out / "pelt.png")
    plt.close(fig)
    return path


def draw_placement(out: Path) -> Path:
    """placement.png: one step's placement on a mixed fleet."""
    plt = _pyplot()
    ex = placement_example()
    fig, ax = plt.subplots(figsize=(9, 4))
    cmap = plt.get_cmap("viridis")
    umax = max(r["u"] for r in ex["requests"])
    for x, d in enumerate(ex["devices"]):
        ax.bar(x, d["capacity"], width=0.6, color="white", edgecolor="k", lw=1.0, zorder=1)
        bottom = 0.0
        for r in sorted(d["placed"], key=lambda r: r["id"]):
            ax.bar(x, r["u"], width=0.5, bottom=bottom, color=cmap(r["u"] / umax), edgecolor="white", zorder=2)
            if r["u"] > 30:
                ax.text(x, bottom + r["u"] / 2, f"#{r['id']} u={r['u']:.0f}", ha="center", va="center",
                        fontsize=7, color="white" if r["u"] / umax < 0.6 else "k", zorder=3)
            bottom += r["u"]
        ax.text(x, d["capacity"] + 15, f"capacity {d['capacity']:.0f}", ha="center", fontsize=8)
    names = [d["name"] for d in ex["devices"]]
    x = len(names)
    bottom = 0.0
    for r in ex["waiting"]:  # the queue: requests no device with room fitted
        ax.bar(x, r["u"], width=0.5, bottom=bottom, color="white", edgecolor="C3", hatch="//", zorder=2)
        ax.text(x, bottom + r["u"] / 2, f"#{r['id']} u={r['u']:.0f}", ha="center", va="center", fontsize=7,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1}, zorder=3)
        bottom += r["u"]
    ax.text(x, bottom + 15, f"u x {ex['fit_margin']} < spare\nnowhere: waits", ha="center", fontsize=8)
    ax.set_xticks(range(len(names) + 1), names + ["queued"])
    ax.set(ylabel="capacity units (strongest = 1024)", ylim=(0, 1120),
           title="One step, EDF, max_batch_size 3, wait_for_fit: tight deadlines (large u) go to the strongest")
    ax.text(len(names) + 0.4, 1060, "u = 1024 x work / time to deadline", ha="right", fontsize=8)
    path = _save(fig, out / "placement.png")
    plt.close(fig)
    return path


def draw_batch_timeline(out: Path) -> Path:
    """batch_timeline.png: arrivals, holds and batches in batch mode."""
    plt = _pyplot()
    tl = batch_timeline()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    lanes = {"gpu0": 1.0, "gpu1": 0.0}
    for b in tl["batches"]:
        y = lanes[b["device"]]
        full = len(b["ids"]) == tl["max_batch_size"]
        ax.barh(y, b["end"] - b["start"], left=b["start"], height=0.5, color="C0" if full else "C1",
                edgecolor="k", lw=0.5)
        ax.text((b["start"] + b["end"]) / 2, y, f"{len(b['ids'])}", ha="center", va="center", color="white")
        for a in b["arrivals"]:
            ax.plot([a, b["start"]], [2.0, y + 0.25], color="0.7", lw=0.5)
    ax.plot(tl["arrivals"], [2.0] * len(tl["arrivals"]), "v", color="k", ms=5, label="arrival")
    for h in tl["holds"]:
        ax.axvline(h, color="C3", lw=0.6, ls=":")
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Line2D([], [], marker="v", color="k", ls="none", label="arrival"),
        Line2D([], [], color="C3", lw=0.6, ls=":", label="a step that held a batch"),
        Patch(facecolor="C0", edgecolor="k", label=f"full batch ({tl['max_batch_size']})"),
        Patch(facecolor="C1", edgecolor="k", label=f"partial: oldest waited max_queue_delay = {tl['max_queue_delay']} s"),
    ]
    ax.set_yticks([0.0, 1.0, 2.0], ["gpu1", "gpu0", "arrivals"])
    ax.set(xlabel="time (s)", title="Batch mode, dynamic batching: wait to fill, go when full or when the oldest waited",
           ylim=(-0.6, 2.4))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=7, ncol=4)
    path = _save(fig, out / "batch_timeline.png")
    plt.close(fig)
    return path


def make_all(out: Path) -> list[Path]:
    """Write every figure into ``out`` (created if needed); returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    return [draw_pelt(out), draw_placement(out), draw_batch_timeline(out)]


def main(argv: Optional[list[str]] = None) -> int:
    """Command line: ``--out DIR`` (default: this script's folder)."""
    parser = argparse.ArgumentParser(description="Draw docs/figures/*.png from capsched's own code.")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write the PNGs into")
    args = parser.parse_args(argv)
    for path in make_all(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
