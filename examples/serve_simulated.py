"""Serve an OpenAI-compatible endpoint over a simulated fleet and talk to it.

Starts capsched's server (``capsched.server``) in this process on a free port, over
simulated workers (no GPU: each sleeps per capsched's GPU cost model, 10x faster than
modelled, and emits deterministic fake words), then uses the official ``openai`` client:
a completion, a streamed chat, and a burst of low-priority requests overtaken by an urgent
one. Needs ``pip install "capsched[server]" openai``.

Run:  python examples/serve_simulated.py [--fleet H100-SXM:1,L4:2] [--time-scale 0.1]

To serve for real clients instead: ``capsched serve --port 8000`` (docs/server.md).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import uvicorn

from capsched.server import ServerConfig, create_app, simulated_engine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fleet", default="H100-SXM:1,L4:2")
    ap.add_argument("--time-scale", type=float, default=0.1)
    args = ap.parse_args()

    engine = simulated_engine(args.fleet, time_scale=args.time_scale, policy="priority", max_batch_size=4)
    app = create_app(engine, ServerConfig(api_keys={"sk-demo": "demo-tenant"}))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    print(f"serving {args.fleet} (simulated workers) on http://127.0.0.1:{port}/v1")

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-demo", max_retries=0)
    r = client.completions.create(model="capsched-simulated", prompt="Once upon a time", max_tokens=8)
    print(f"completion: {r.choices[0].text!r}  usage={r.usage}")

    print("streamed chat:", end="", flush=True)
    for chunk in client.chat.completions.create(
        model="capsched-simulated", messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()

    # A burst of 24 low-priority requests, then an urgent one (extra_body carries
    # capsched's priority and timeout extension fields).
    def ask(name: str, priority: float) -> tuple[str, float]:
        client.completions.create(model="capsched-simulated", prompt=name, max_tokens=64,
                                  extra_body={"priority": priority, "timeout": 60})
        return name, time.monotonic()

    with ThreadPoolExecutor(32) as pool:
        lows = [pool.submit(ask, f"low-{i}", 0.1) for i in range(24)]
        time.sleep(0.05)
        urgent = pool.submit(ask, "urgent", 0.95)
        done = sorted([f.result() for f in lows] + [urgent.result()], key=lambda x: x[1])
    order = [name for name, _ in done]
    print(f"the urgent request finished #{order.index('urgent') + 1} of {len(order)} "
          f"(submitted last, behind 24 low-priority ones)")
    print("fleet counters:", {k: v for k, v in engine.stats().items() if isinstance(v, int)})

    client.close()
    server.should_exit = True
    thread.join()


if __name__ == "__main__":
    main()
