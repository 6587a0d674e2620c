"""Regression tests for defects found by the operations review (checkpoints, huge
numbers, slices, metrics, config bounds, discovery, environment)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from capsched import CheckpointError, InferenceRequest, Scheduler


# ------------------------------------------------------------------ checkpoints


def test_checkpoints_from_many_threads_to_one_path_never_tear(tmp_path) -> None:
    s = Scheduler(["a", "b"])
    for _ in range(1000):
        s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=5), now=0.0)
    path = tmp_path / "state.ckpt"
    write_errors: list[str] = []
    bad_reads: list[str] = []

    def worker() -> None:
        for _ in range(40):
            try:
                s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=5), now=0.0)
                s.checkpoint(path)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                write_errors.append(str(exc)[:150])
                continue
            try:
                Scheduler.restore(path)
            except Exception as exc:  # noqa: BLE001
                bad_reads.append(str(exc)[:150])

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert write_errors == [] and bad_reads == []
    assert Scheduler.restore(path).stats()["accepted"] == 1000 + 160
    assert [p.name for p in tmp_path.iterdir()] == ["state.ckpt"]  # no temporary left


def test_checkpoint_keeps_an_existing_files_permission_bits(tmp_path) -> None:
    path = tmp_path / "state.ckpt"
    s = Scheduler(["a"])
    s.checkpoint(path)
    os.chmod(path, 0o640)
    s.checkpoint(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


@pytest.mark.parametrize("path", ["", "a\0b", 5, 10**30, 0, 2.5, b"x.ckpt"])
def test_checkpoint_and_restore_refuse_a_path_that_is_not_a_file_name(path, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint path"):
        Scheduler(["a"]).checkpoint(path)
    with pytest.raises(CheckpointError, match="checkpoint path"):
        Scheduler.restore(path)
    assert list(tmp_path.iterdir()) == []


def test_restore_refuses_a_file_that_is_not_regular(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="'/dev/zero': not a regular file"):
        Scheduler.restore("/dev/zero")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        Scheduler.restore(fifo)  # must not wait for a writer
    with pytest.raises(CheckpointError, match="not a regular file"):
        Scheduler.restore(tmp_path)


def test_restore_reads_no_more_than_the_limit_even_if_the_size_grows(tmp_path, monkeypatch) -> None:
    import capsched.checkpoint as ck

    path = tmp_path / "c.ckpt"
    Scheduler(["a"]).checkpoint(path)
    size = path.stat().st_size
    real_fstat = os.fstat

    def lying_fstat(fd):  # the size stated says the file fits; its contents do not
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 10,
                               st.st_atime, st.st_mtime, st.st_ctime))

    monkeypatch.setattr(ck, "MAX_CHECKPOINT_BYTES", size - 1)
    monkeypatch.setattr(ck.os, "fstat", lying_fstat)
    with pytest.raises(CheckpointError, match="over .* bytes, the limit"):
        Scheduler.restore(path)


# ------------------------------------------------------------------ huge numbers, config bounds

from capsched import Config, ConfigError, SchedulerConfig  # noqa: E402


@pytest.mark.parametrize("kwargs, field", [
    (dict(weight_urgency=10**400), "weight_urgency"),
    (dict(fit_margin=10**400), "fit_margin"),
    (dict(dl_bandwidth_limit=10**400), "dl_bandwidth_limit"),
    (dict(tenant_weights={"a": 10**400}), r"tenant_weights\['a'\]"),
    (dict(max_queued=10**5000), "max_queued"),
])
def test_config_refuses_integers_beyond_a_float(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=field + r" must be .*got an integer of about"):
        Config(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(pelt_period=5e-324), r"pelt_period must be a finite number >= 1e-06, got 5e-324"),
    (dict(pelt_period=1e9), r"pelt_period must be in \[1e-06, 3600\]"),
    (dict(fair_share=True, fair_output_weight=1e308), r"fair_output_weight must be in \[0, 1e\+06\], got 1e\+308"),
    (dict(fair_input_weight=1e7), r"fair_input_weight must be in \[0, 1e\+06\]"),
    (dict(tenant_weights={"a": 5e-324}), r"tenant_weights\['a'\] must be a finite number >= 1e-06, got 5e-324"),
])
def test_config_bounds_that_keep_the_signals_finite(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Config(**kwargs)
    Config(pelt_period=1e-6, fair_output_weight=1e6, tenant_weights={"a": 1e-6})  # the bounds themselves


@pytest.mark.parametrize("cls", [Config, SchedulerConfig])
def test_toml_with_huge_integers_is_a_config_error_naming_the_key(cls, tmp_path) -> None:
    p = tmp_path / "a.toml"
    p.write_text("weight_urgency = 1" + "0" * 400 + "\n")
    with pytest.raises(ConfigError, match="weight_urgency must be a number within the range of a float"):
        cls.from_toml(p)
    p.write_text("[scheduler]\nmax_retries = 1" + "0" * 5000 + "\n")
    with pytest.raises(ConfigError, match="max_retries: an integer of more than 4,300 digits"):
        cls.from_toml(p)


def test_from_env_validates_the_variables_together() -> None:
    base = SchedulerConfig(max_batch_size=64, preferred_batch_sizes=(48,))
    cfg = SchedulerConfig.from_env(
        {"CAPSCHED_MAX_BATCH_SIZE": "32", "CAPSCHED_PREFERRED_BATCH_SIZES": "16"}, base=base)
    assert (cfg.max_batch_size, cfg.preferred_batch_sizes) == (32, (16,))
    with pytest.raises(ConfigError, match=r"^CAPSCHED_MAX_BATCH_SIZE='0': max_batch_size must be in"):
        SchedulerConfig.from_env({"CAPSCHED_MAX_BATCH_SIZE": "0", "CAPSCHED_PREFERRED_BATCH_SIZES": "16"})
    with pytest.raises(ConfigError, match=r"CAPSCHED_MAX_BATCH_SIZE='8', CAPSCHED_PREFERRED_BATCH_SIZES='16': "
                                          r"preferred_batch_sizes\[0\] = 16 is above"):
        SchedulerConfig.from_env({"CAPSCHED_MAX_BATCH_SIZE": "8", "CAPSCHED_PREFERRED_BATCH_SIZES": "16"})


# ------------------------------------------------------------------ devices, slices, requests

from capsched import Device, InvalidRequestError  # noqa: E402
from capsched.devices import Slice  # noqa: E402


@pytest.mark.parametrize("field", ["capacity", "memory_gib", "max_clock_mhz", "power_w", "prefill_s_per_token",
                                   "decode_step_s", "decode_s_per_seq"])
def test_device_refuses_integers_beyond_a_float(field) -> None:
    with pytest.raises(ConfigError, match=f"device 'a': {field} must be a number within the range of a float"):
        Device("a", **{field: 10**400})


@pytest.mark.parametrize("field", ["priority", "timeout", "deadline", "uclamp_min", "uclamp_max"])
def test_request_refuses_integers_beyond_a_float(field) -> None:
    with pytest.raises(InvalidRequestError, match=f"{field} must be a number within the range of a float"):
        InferenceRequest(prompt_tokens=1, **{field: 10**400})


@pytest.mark.parametrize("kwargs, match", [
    (dict(tenants="alice"), "slice 'x': tenants must be a list of tenant names, got 'alice'"),
    (dict(tenants=("",)), "slice 'x': tenant names must be non-empty strings"),
    (dict(max_inflight_batches=0), "slice 'x': max_inflight_batches must be an integer >= 1, got 0"),
    (dict(max_inflight_batches="2"), "slice 'x': max_inflight_batches must be an integer >= 1, got '2'"),
])
def test_slice_checks_its_own_fields(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Slice("x", 0.5, 0.5, **kwargs)


def test_split_keeps_the_pool_and_the_service_time_seeds() -> None:
    d = Device("g", pool="h100", prefill_s_per_token=1e-4, decode_step_s=0.01, decode_s_per_seq=1e-3)
    slices = d.split(Slice("a", 0.5, 0.5), Slice("b", 0.5, 0.5))
    for sl in slices:
        assert (sl.pool, sl.prefill_s_per_token, sl.decode_step_s, sl.decode_s_per_seq) == ("h100", 1e-4, 0.01, 1e-3)
    s = Scheduler(list(slices))
    rid = s.submit(InferenceRequest(prompt_tokens=1, pool="h100"), now=0.0)
    assert [b.request_ids for b in s.step(now=0.0).batches] == [[rid]]


# ------------------------------------------------------------------ the server and the fleet daemon


@pytest.mark.parametrize("field", ["priority", "timeout", "temperature", "top_p"])
def test_http_body_with_an_integer_beyond_a_float_is_400_naming_the_field(field) -> None:
    from capsched.server import APIError
    from capsched.server.protocol import parse_completion

    body = {"model": "m", "prompt": "x", field: 10**400}
    with pytest.raises(APIError) as info:
        parse_completion(body, models=("m",))
    assert (info.value.status, info.value.param) == (400, field)
    assert "within the range of a float" in str(info.value)


def test_daemon_answers_unreadable_lines_and_keeps_the_connection(tmp_path) -> None:
    import asyncio
    import json

    from capsched.server import simulated_engine
    from capsched.server.daemon import FleetDaemon

    async def main() -> list[dict]:
        daemon = FleetDaemon(simulated_engine(time_scale=0.01), str(tmp_path / "d.sock"))
        await daemon.start()
        try:
            reader, writer = await asyncio.open_unix_connection(daemon.path)
            lines = [
                b'{"op": "submit", "tag": 1, "job": {"prompt": "x", "max_tokens": 1, "model": "capsched-simulated", '
                b'"priority": 1' + b"0" * 400 + b"}}\n",
                b'{"op": "stats", "tag": 1' + b"0" * 5000 + b"}\n",
                b"[" * 100_000 + b"]" * 100_000 + b"\n",
                b'{"op": "stats", "tag": 9}\n',
            ]
            out = []
            for line in lines:
                writer.write(line)
                await writer.drain()
                out.append(json.loads(await asyncio.wait_for(reader.readline(), 30)))
            writer.close()
            return out
        finally:
            await daemon.close()

    first, second, third, fourth = asyncio.run(main())
    assert first["tag"] == 1 and first["event"] == "error" and first["error"]["param"] == "priority"
    assert second["tag"] is None and "4,300 digits" in second["error"]["message"]
    assert third["tag"] is None and "nested too deeply" in third["error"]["message"]
    assert fourth["tag"] == 9 and fourth["event"] == "stats"


def test_serve_refuses_an_empty_host_and_a_huge_scheduler_config_in_one_line(tmp_path, capsys) -> None:
    pytest.importorskip("uvicorn")
    from capsched.cli import main

    huge = tmp_path / "huge.toml"
    huge.write_text("[scheduler]\nweight_urgency = 1" + "0" * 400 + "\n")
    for argv, fragment in [(["serve", "--host", ""], "--host must be an address"),
                           (["serve", "--port", "0", "--scheduler-config", str(huge)],
                            "weight_urgency must be a number within the range of a float")]:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err


# ------------------------------------------------------------------ job files, discovery


@pytest.mark.parametrize("field", ["priority", "deadline", "schedule_time", "duration_estimate"])
def test_job_file_numbers_beyond_a_float_are_job_file_errors(field) -> None:
    from capsched.jobs import JobFileError, parse_tasks

    with pytest.raises(JobFileError, match=f"field '{field}': must be a number within the range of a float"):
        parse_tasks([{"task_id": "a", "prompt_tokens": 1, field: 10**400}])


def test_propagate_deadlines_refuses_an_integer_beyond_a_float() -> None:
    from capsched.errors import InvalidArgumentError
    from capsched.jobs import parse_tasks, propagate_deadlines

    with pytest.raises(InvalidArgumentError, match="the job deadline must be a finite number"):
        propagate_deadlines(parse_tasks([{"task_id": "a", "prompt_tokens": 1}]), 10**400)


@pytest.mark.parametrize("interval", [float("inf"), threading.TIMEOUT_MAX * 2, 10**400])
def test_clock_feed_refuses_an_interval_its_thread_cannot_wait(interval) -> None:
    from capsched.discovery import ClockFeed

    feed = ClockFeed([], lambda name, cur, top: None)
    with pytest.raises(ValueError, match="interval_s must be"):
        feed.start(interval_s=interval)
