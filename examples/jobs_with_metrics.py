"""Run an offline job through a Scheduler and export its state to Prometheus.

    python examples/jobs_with_metrics.py                 # run, then print one scrape
    python examples/jobs_with_metrics.py --serve 9100    # ... and serve /metrics until Ctrl-C

Needs ``pip install "capsched[metrics]"``. The job is ``examples/jobs_example.jsonl``; each
dispatched batch "runs" for one second of virtual time per 500 tokens of its longest
request (a stand-in for real workers).
"""

from __future__ import annotations

import argparse
import heapq
import time
from pathlib import Path

# prometheus-client first: capsched.metrics needs it too, and without it this guard's
# one-line message is what should be said (not capsched.metrics' ImportError traceback).
try:
    from prometheus_client import CollectorRegistry, generate_latest, start_http_server
except ImportError:  # pragma: no cover
    raise SystemExit('this example needs prometheus-client: pip install "capsched[metrics]"') from None

from capsched import Scheduler
from capsched.jobs import JobRunner, load_job
from capsched.metrics import RequestTimer, register


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", type=int, default=None, metavar="PORT", help="serve /metrics on 127.0.0.1:PORT")
    args = ap.parse_args()

    tasks = load_job(Path(__file__).with_name("jobs_example.jsonl"))
    sched = Scheduler(["gpu0", "gpu1"], policy="edf", enable_dynamic_batching=False)
    registry = CollectorRegistry()
    register(sched, registry)
    timer = RequestTimer(registry)
    runner = JobRunner(sched, tasks, job_deadline=150.0, sched_class="background")
    size = {t.task_id: (t.prompt_tokens or 100) + t.max_new_tokens for t in runner.tasks}

    t, running = 0.0, []  # heap of (end time, batch ids)
    while not runner.done():
        for _, rid in runner.poll(t):
            timer.submitted(rid, t)
        res = sched.step(t)
        timer.stepped(res)
        for b in res.batches:
            longest = max(size[runner.task_of(i)] for i in b.request_ids)
            heapq.heappush(running, (t + longest / 500.0, b.request_ids))
        nxt = min(running[0][0] if running else float("inf"), runner.next_poll_at(t))
        if nxt == float("inf"):
            break
        t = nxt
        while running and running[0][0] <= t:
            for rid in heapq.heappop(running)[1]:
                sched.complete(rid, t)
                timer.ended(rid, t)
    for task in runner.tasks:
        print(f"{task.task_id:16s} {runner.status(task.task_id)}")
    print(f"finished at t = {t:.2f} s\n")
    print(generate_latest(registry).decode())
    if args.serve is not None:
        start_http_server(args.serve, addr="127.0.0.1", registry=registry)
        print(f"serving http://127.0.0.1:{args.serve}/metrics (Ctrl-C to stop)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
