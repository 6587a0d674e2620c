"""Metrics defects found by the 2026-11-29 review, each with the test that failed before
its fix."""

from __future__ import annotations

import pytest

from capsched import Scheduler



prometheus_client = pytest.importorskip("prometheus_client")


@pytest.mark.parametrize("name", ["policy", "dynamic_batching", "device"])
def test_metrics_refuse_a_constant_label_capsched_uses_itself(name: str) -> None:
    # policy= and dynamic_batching= were overwritten by scheduler_info's own labels: two
    # schedulers' info series came out identical, which Prometheus refuses.
    from capsched.errors import ConfigError
    from capsched.metrics import register

    reg = prometheus_client.CollectorRegistry()
    with pytest.raises(ConfigError, match=f"constant label name '{name}' is one of capsched's own labels"):
        register(Scheduler(["a"]), reg, labels={name: "east"})


def test_a_failed_start_http_server_leaves_nothing_registered() -> None:
    import socket

    from capsched.errors import ConfigError
    from capsched.metrics import start_http_server

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        reg = prometheus_client.CollectorRegistry()
        s = Scheduler(["a"])
        with pytest.raises(OSError):
            start_http_server(s, busy.getsockname()[1], registry=reg)
        server, _thread = start_http_server(s, 0, registry=reg)  # the retry used to say "already registered"
        server.shutdown()
        server.server_close()
    finally:
        busy.close()
    for port in ("abc", -1, 70000, True):
        with pytest.raises(ConfigError, match="port must be an integer in 0..65535"):
            start_http_server(Scheduler(["a"]), port, registry=prometheus_client.CollectorRegistry())


def test_request_timer_refuses_a_clash_a_bad_prefix_and_a_bad_time() -> None:
    from capsched.errors import ConfigError
    from capsched.metrics import RequestTimer

    reg = prometheus_client.CollectorRegistry()
    timer = RequestTimer(reg)
    with pytest.raises(ConfigError, match="already holds metrics of these names"):
        RequestTimer(reg)  # was prometheus-client's own ValueError
    with pytest.raises(ConfigError, match="prefix must be"):
        RequestTimer(prometheus_client.CollectorRegistry(), prefix="1 x")
    for bad in (float("nan"), float("inf"), 10**400, "1"):
        with pytest.raises(ValueError, match="now must be a finite time"):
            timer.submitted(1, bad)  # NaN used to be recorded as 0
    timer.submitted(1, 0.5)
    timer.ended(1, 1.5)
    assert reg.get_sample_value("capsched_latency_seconds_count") == 1.0
