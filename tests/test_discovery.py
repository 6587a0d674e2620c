"""Device discovery with a fake NVML (monkeypatched into sys.modules['pynvml']), the
nvidia-smi fallback, CUDA_VISIBLE_DEVICES, devices='auto' and the clock feed."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

import capsched
from capsched import ConfigError, Device, discovery
from capsched.devices import parse_devices
from capsched.discovery import ClockFeed, DiscoveredDevice, NVMLUnavailableError, discover, discover_with_reason

import _fake_nvml as fake
from _fake_nvml import A100_UUID, H100_UUID, MIG0_UUID, MIG3_UUID

GIB = 2**30
MIB = 2**20


@pytest.fixture(autouse=True)
def hermetic(monkeypatch):
    """No real NVML, nvidia-smi or CUDA_VISIBLE_DEVICES leaks into any test."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    monkeypatch.setattr(discovery.shutil, "which", lambda name: None)

    def no_run(*a, **k):  # pragma: no cover - a test that reaches it is wrong
        raise AssertionError("subprocess.run called without a test's fake")

    monkeypatch.setattr(discovery.subprocess, "run", no_run)


@pytest.fixture
def nvml(monkeypatch):
    module = fake.make_module()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def smi(monkeypatch, stdout="", returncode=0, stderr="", exc=None):
    """Make nvidia-smi present, answering with ``stdout`` (or raising ``exc``)."""
    calls = []
    monkeypatch.setattr(discovery.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)

    def run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        if exc is not None:
            raise exc
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr=stderr)

    monkeypatch.setattr(discovery.subprocess, "run", run)
    return calls


# ---------------------------------------------------------------------- NVML


def test_nvml_two_models_and_mig(nvml):
    found, reason = discover_with_reason()
    assert reason == "NVML found 2 GPU(s)"
    assert [d.name for d in found] == ["cuda:0", "cuda:1"]
    h100, a100 = found
    assert isinstance(h100, DiscoveredDevice)
    assert (h100.index, h100.uuid, h100.model) == (0, H100_UUID, "NVIDIA H100 80GB HBM3")
    assert h100.memory_total == 81559 * MIB
    assert h100.sm_count == 132 and h100.spec.name == "H100-SXM"
    assert (h100.clock_sm_mhz, h100.clock_sm_max_mhz, h100.power_limit_w) == (1755.0, 1980.0, 700.0)
    assert not h100.mig_enabled and h100.mig == ()
    assert h100.source == "nvml" and h100.capacity == 989.4

    assert a100.spec.name == "A100-40GB" and a100.sm_count == 108
    assert a100.mig_enabled
    assert [m.name for m in a100.mig] == ["cuda:1/mig0", "cuda:1/mig3"]
    m0, m3 = a100.mig
    assert (m0.uuid, m0.parent_uuid, m0.profile, m0.sm_count) == (MIG0_UUID, A100_UUID, "3g.20gb", 42)
    assert (m3.uuid, m3.profile, m3.memory_total) == (MIG3_UUID, "1g.5gb", 4864 * MIB)
    assert m0.sm_share == pytest.approx(42 / 108) and m3.sm_share == pytest.approx(14 / 108)
    assert (m0.gpu_instance_id, m0.compute_instance_id) == (2, 0)
    assert m0.clock_sm_max_mhz == 1410.0
    assert nvml.inits == 0  # every nvmlInit was matched by nvmlShutdown


def test_to_device_uses_specs_and_measurements(nvml):
    h100, a100 = discover()
    d = h100.to_device()
    assert d == Device(
        "cuda:0", model="H100-SXM", memory_gib=81559 / 1024, max_clock_mhz=1980.0, power_w=700.0
    )
    assert d.capacity is None and d.effective_capacity == 989.4
    assert d.clock_mhz is None  # an idle clock says nothing: clocks come from the feed
    assert h100.to_device(kv_tokens=1000, name="big").kv_tokens == 1000

    whole = a100.to_device()
    assert whole.effective_capacity == 312.0 and whole.memory_gib == 40.0
    slices = a100.to_devices()
    assert [s.name for s in slices] == ["cuda:1/mig0", "cuda:1/mig3"]
    assert slices[0].effective_capacity == pytest.approx(312.0 * 42 / 108)
    assert slices[1].effective_capacity == pytest.approx(312.0 * 14 / 108)
    assert slices[1].memory_gib == pytest.approx(4864 / 1024)
    assert slices[0].power_w == pytest.approx(400.0 * 42 / 108)
    assert slices[0].max_clock_mhz == 1410.0
    assert h100.to_devices() == [d]


def test_to_dict_is_json_ready(nvml):
    import json

    found = discover()
    data = json.loads(json.dumps([d.to_dict() for d in found]))
    assert data[0]["spec"] == "H100-SXM" and data[0]["capacity"] == 989.4
    assert data[1]["mig"][1]["uuid"] == MIG3_UUID
    assert data[1]["mig"][1]["capacity"] == pytest.approx(312 * 14 / 108)


def test_unknown_model_gets_capacity_one(monkeypatch, caplog):
    module = fake.make_module([fake.FakeGpu("NVIDIA Quantum Q9000", "GPU-q", 1024, 100, 200, mig_mode=None)])
    monkeypatch.setitem(sys.modules, "pynvml", module)
    (d,) = discover()
    assert d.spec is None and d.sm_count is None and d.capacity is None
    with caplog.at_level("WARNING", logger="capsched.discovery"):
        dev = d.to_device()
    assert dev.effective_capacity == 1.0 and dev.model is None and dev.memory_gib == 1.0
    assert "not in capsched's spec table" in caplog.text
    assert d.to_device(capacity=50.0).effective_capacity == 50.0


def test_unreadable_fields_and_lost_gpus(monkeypatch):
    gpus = fake.default_gpus()
    gpus[0].clock = gpus[0].max_clock = gpus[0].power_mw = None
    gpus[0].mig_mode = None
    gpus.append(fake.FakeGpu("NVIDIA L4", "GPU-lost", 23034, 2040, 2040, broken=True))
    module = fake.make_module(gpus)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    found = discover()
    assert [d.uuid for d in found] == [H100_UUID, A100_UUID]  # the lost GPU is left out
    h100 = found[0]
    assert (h100.clock_sm_mhz, h100.clock_sm_max_mhz, h100.power_limit_w) == (None, None, None)
    dev = h100.to_device()
    assert dev.max_clock_mhz == 1980.0 and dev.power_w == 700.0  # from the spec table
    assert module.inits == 0


def test_mig_on_without_instances(monkeypatch):
    gpus = fake.default_gpus()
    gpus[1].migs = []
    monkeypatch.setitem(sys.modules, "pynvml", fake.make_module(gpus[1:]))
    (a100,) = discover()
    assert a100.mig_enabled and a100.mig == () and a100.to_devices() == []
    with pytest.raises(ConfigError, match="MIG mode on but no visible MIG instance"):
        parse_devices("auto")


def test_bytes_names_from_old_bindings(monkeypatch):
    module = fake.make_module()
    name, uuid = module.nvmlDeviceGetName, module.nvmlDeviceGetUUID
    module.nvmlDeviceGetName = lambda h: name(h).encode()
    module.nvmlDeviceGetUUID = lambda h: uuid(h).encode()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    assert [d.model for d in discover()] == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]


# ---------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


@pytest.mark.parametrize(
    "cvd, expected",
    [
        ("1", [(A100_UUID, ["cuda:0/mig0", "cuda:0/mig3"])]),
        ("1,0", [(A100_UUID, ["cuda:0/mig0", "cuda:0/mig3"]), (H100_UUID, [])]),
        (" 0 , 1 ", [(H100_UUID, []), (A100_UUID, ["cuda:1/mig0", "cuda:1/mig3"])]),
        ("0,0", [(H100_UUID, [])]),
        ("0,7,1", [(H100_UUID, [])]),  # CUDA stops at the first entry naming no device
        ("0,-1,1", [(H100_UUID, [])]),
        ("GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", [(A100_UUID, ["cuda:0/mig0", "cuda:0/mig3"])]),
        ("gpu-1111,GPU-aaaa", [(H100_UUID, []), (A100_UUID, ["cuda:1/mig0", "cuda:1/mig3"])]),  # prefixes
        ("GPU-,0", []),  # an ambiguous prefix names no device
        ("MIG-33333333", [(A100_UUID, ["cuda:0/mig3"])]),
        (f"{MIG3_UUID},{MIG0_UUID},0", [(A100_UUID, ["cuda:0/mig3", "cuda:0/mig0"]), (H100_UUID, [])]),
        (f"MIG-{A100_UUID}/9/0", [(A100_UUID, ["cuda:0/mig3"])]),  # the old MIG-GPU-<uuid>/gi/ci form
        (f"{MIG0_UUID},1", [(A100_UUID, ["cuda:0/mig0", "cuda:0/mig3"])]),  # the whole GPU after a slice
        ("MIG-ffff,0", []),
        ("nonsense", []),
        (",0", []),
    ],
)
def test_cuda_visible_devices(nvml, monkeypatch, cvd, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cvd)
    found = discover()
    assert [(d.uuid, [m.name for m in d.mig]) for d in found] == expected
    assert [d.name for d in found] == [f"cuda:{k}" for k in range(len(found))]
    assert nvml.inits == 0


@pytest.mark.parametrize("cvd", ["", "  "])
def test_empty_cuda_visible_devices_hides_everything(nvml, monkeypatch, cvd):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", cvd)
    found, reason = discover_with_reason()
    assert found == []
    assert reason == f"CUDA_VISIBLE_DEVICES={cvd!r} hides every GPU"
    assert nvml.calls == {}  # not even asked
    with pytest.raises(ConfigError, match="no GPU was found"):
        parse_devices("auto")


def test_cuda_visible_devices_hiding_all_found(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    assert discover_with_reason() == ([], "NVML found 2 GPU(s), but CUDA_VISIBLE_DEVICES='5' hides them all")


def test_invalid_entry_is_logged(nvml, monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,bogus,1")
    with caplog.at_level("WARNING", logger="capsched.discovery"):
        assert len(discover()) == 1
    assert "'bogus' names no device" in caplog.text


# ---------------------------------------------------------------------- nvidia-smi fallback

SMI_OUT = (
    "0, GPU-11111111-2222-3333-4444-555555555555, NVIDIA H100 80GB HBM3, 81559, 1755, 1980\n"
    "1, GPU-99999999-2222-3333-4444-555555555555, NVIDIA L4, 23034, [N/A], 2040\n"
)


def test_nvml_init_failure_falls_back_to_nvidia_smi(monkeypatch):
    module = fake.make_module(init_error=fake.NVMLError(9, "Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", module)
    calls = smi(monkeypatch, SMI_OUT)
    found, reason = discover_with_reason()
    assert reason.startswith("nvidia-smi found 2 GPU(s)") and "Driver Not Loaded" in reason
    (cmd, kwargs), = calls
    assert cmd == [
        "/usr/bin/nvidia-smi",
        "--query-gpu=index,uuid,name,memory.total,clocks.sm,clocks.max.sm",
        "--format=csv,noheader,nounits",
    ]
    assert kwargs["timeout"] > 0 and kwargs["capture_output"] and not kwargs.get("text")  # bytes, decoded as UTF-8
    h100, l4 = found
    assert [d.name for d in found] == ["cuda:0", "cuda:1"]
    assert (h100.uuid, h100.memory_total, h100.clock_sm_mhz, h100.clock_sm_max_mhz) == (
        H100_UUID, 81559 * MIB, 1755.0, 1980.0
    )
    assert h100.source == "nvidia-smi" and h100.sm_count == 132 and not h100.mig_enabled
    assert l4.clock_sm_mhz is None and l4.clock_sm_max_mhz == 2040.0 and l4.spec.name == "L4"
    assert l4.to_device().effective_capacity == 121.0


def test_nvidia_smi_output_that_is_not_utf8(monkeypatch):
    # (text=True decoded by the locale inside subprocess.run and raised UnicodeDecodeError
    # out of discover(), devices="auto" and `capsched devices`)
    out = SMI_OUT.encode() + b"2, GPU-x, NVIDIA \xff\xfe Card, 1024, 100, 200\n" + b"\xff\xff, \x80, z, 1, 2, 3\n"
    smi(monkeypatch, out)
    found, reason = discover_with_reason()
    assert reason.startswith("nvidia-smi found 3 GPU(s)")
    assert [d.index for d in found] == [0, 1, 2]
    assert found[2].model == "NVIDIA \ufffd\ufffd Card" and found[2].memory_total == 1024 * MIB


def test_nvidia_smi_failure_message_that_is_not_utf8(monkeypatch):
    smi(monkeypatch, b"", returncode=9, stderr=b"No devices \xff were found")
    found, reason = discover_with_reason()
    assert found == [] and reason.endswith("nvidia-smi failed (exit 9: No devices \ufffd were found)")


def test_nvidia_smi_negative_values_are_not_taken(monkeypatch):
    out = (
        "-1, GPU-a, NVIDIA L4, 23034, 100, 2040\n"      # a negative index: the row is skipped
        "0, GPU-b, NVIDIA L4, -23034, -100, -2040\n"    # negative figures: unknown
    )
    smi(monkeypatch, out)
    (l4,) = discover()
    assert l4.uuid == "GPU-b" and l4.memory_total == 0
    assert l4.clock_sm_mhz is None and l4.clock_sm_max_mhz is None


def test_no_pynvml_falls_back_to_nvidia_smi_with_cuda_visible_devices(monkeypatch):
    smi(monkeypatch, SMI_OUT + "\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    (l4,) = discover()
    assert (l4.name, l4.index, l4.model) == ("cuda:0", 1, "NVIDIA L4")


def test_neither_nvml_nor_nvidia_smi():
    found, reason = discover_with_reason()
    assert found == []
    assert reason == "nvidia-ml-py (pynvml) is not installed; nvidia-smi is not on PATH"


@pytest.mark.parametrize(
    "kwargs, why",
    [
        ({"returncode": 9, "stdout": "No devices were found"}, "nvidia-smi failed (exit 9: No devices were found)"),
        ({"returncode": 0, "stdout": ""}, "nvidia-smi listed no GPU"),
        ({"returncode": 0, "stdout": "garbage\nx, y, z, 1, 2, 3\n"}, "nvidia-smi listed no GPU"),
        ({"exc": subprocess.TimeoutExpired("nvidia-smi", 10)}, "nvidia-smi did not answer within 10 s"),
        ({"exc": PermissionError("denied")}, "nvidia-smi could not run (PermissionError: denied)"),
    ],
)
def test_nvidia_smi_failures_give_nothing(monkeypatch, kwargs, why):
    module = fake.make_module(init_error=fake.NVMLError(9, "Driver Not Loaded"))
    monkeypatch.setitem(sys.modules, "pynvml", module)
    smi(monkeypatch, **kwargs)
    found, reason = discover_with_reason()
    assert found == []
    assert reason.endswith(why) and "NVML did not start" in reason


def test_nvml_with_no_gpu_does_not_fall_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake.make_module([]))
    assert discover_with_reason() == ([], "NVML found no GPU")


# ---------------------------------------------------------------------- devices="auto"


def test_auto_devices(nvml):
    devices = parse_devices("auto")
    assert [d.name for d in devices] == ["cuda:0", "cuda:1/mig0", "cuda:1/mig3"]
    assert devices[0].effective_capacity == 989.4
    assert capsched.devices.discover is discover


def test_auto_scheduler(nvml):
    s = capsched.Scheduler("auto")
    assert [d.name for d in s.devices] == ["cuda:0", "cuda:1/mig0", "cuda:1/mig3"]


def test_auto_without_gpu_says_so_and_shows_how():
    with pytest.raises(ConfigError) as info:
        parse_devices("auto")
    msg = str(info.value)
    assert "no GPU was found" in msg
    assert "nvidia-ml-py (pynvml) is not installed; nvidia-smi is not on PATH" in msg
    assert "Device('gpu0', model='H100-SXM')" in msg
    with pytest.raises(ConfigError, match="no GPU was found"):
        capsched.Scheduler("auto")


def test_other_strings_still_rejected():
    with pytest.raises(ConfigError, match="got the string 'cuda:0'"):
        parse_devices("cuda:0")


# ---------------------------------------------------------------------- ClockFeed


def test_clock_feed_poll_once(nvml):
    found = discover()
    seen = []
    feed = ClockFeed(found, lambda *a: seen.append(a))
    readings = feed.poll_once()
    assert seen == readings == [
        ("cuda:0", 1755.0, 1980.0),
        ("cuda:1/mig0", 1410.0, 1410.0),
        ("cuda:1/mig3", 1410.0, 1410.0),
    ]
    assert nvml.inits == 1  # NVML stays initialised between polls
    nvml.gpus[0].clock = 1200  # throttled
    nvml.gpus[0].reasons = fake.SW_THERMAL
    assert feed.poll_once()[0] == ("cuda:0", 1200.0, 1980.0)
    feed.stop()
    assert nvml.inits == 0


def test_clock_feed_idle_reports_max(nvml):
    found = discover()
    nvml.gpus[0].clock = 345
    nvml.gpus[0].reasons = fake.GPU_IDLE
    assert ClockFeed(found[:1], lambda *a: None).poll_once() == [("cuda:0", 1980.0, 1980.0)]
    raw = ClockFeed(found[:1], lambda *a: None, idle_as_max=False)
    assert raw.poll_once() == [("cuda:0", 345.0, 1980.0)]
    raw.stop()


def test_clock_feed_names_and_cap(nvml):
    found = discover()
    nvml.gpus[0].clock = 2100  # boost past the max: capped
    feed = ClockFeed(found[:1], lambda *a: None, names={"cuda:0": "node1/h100"})
    assert feed.poll_once() == [("node1/h100", 1980.0, 1980.0)]
    feed.stop()


def test_clock_feed_skips_unreadable_devices(nvml, caplog):
    found = discover()
    nvml.gpus[0].broken = True
    feed = ClockFeed(found, lambda *a: None)
    with caplog.at_level("WARNING", logger="capsched.discovery"):
        assert [r[0] for r in feed.poll_once()] == ["cuda:1/mig0", "cuda:1/mig3"]
    assert "cuda:0" in caplog.text
    feed.stop()


def test_clock_feed_feeds_a_scheduler(nvml):
    found = discover()
    s = capsched.Scheduler("auto")
    if not hasattr(s, "set_clock"):  # pragma: no cover - the scheduler's side may not have it yet
        pytest.skip("Scheduler.set_clock is not available")
    nvml.gpus[0].clock = 990
    with ClockFeed(found, s.set_clock) as feed:
        feed.poll_once()
    caps = {d["name"]: d for d in s.stats()["devices"]}
    assert caps["cuda:0"]["clock_scale"] == pytest.approx(0.5)


def test_clock_feed_without_nvml():
    d = DiscoveredDevice(0, "GPU-x", "cuda:0", "NVIDIA L4", 24 * GIB, source="nvidia-smi")
    feed = ClockFeed([d], lambda *a: None)
    with pytest.raises(NVMLUnavailableError, match="pip install nvidia-ml-py"):
        feed.poll_once()


def test_clock_feed_thread(nvml):
    found = discover()
    got = threading.Event()
    seen = []

    def on_clock(*a):
        seen.append(a)
        got.set()

    feed = ClockFeed(found, on_clock)
    feed.start(interval_s=0.01)
    assert feed.running
    with pytest.raises(RuntimeError, match="already running"):
        feed.start(0.01)
    assert got.wait(5)
    feed.stop()
    assert not feed.running
    assert seen[0] == ("cuda:0", 1755.0, 1980.0)
    assert nvml.inits == 0


def test_clock_feed_thread_reports_errors():
    d = DiscoveredDevice(0, "GPU-x", "cuda:0", "NVIDIA L4", 24 * GIB)
    errors = []
    got = threading.Event()

    def on_error(exc):
        errors.append(exc)
        got.set()

    feed = ClockFeed([d], lambda *a: None, on_error=on_error)
    feed.start(0.01)
    assert got.wait(5)
    feed.stop()
    assert isinstance(errors[0], NVMLUnavailableError)


def test_clock_feed_bad_arguments():
    with pytest.raises(TypeError, match="on_clock must be callable"):
        ClockFeed([], None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DiscoveredDevice"):
        ClockFeed(["cuda:0"], lambda *a: None)  # type: ignore[list-item]
    feed = ClockFeed([], lambda *a: None)
    for bad in (0, -1.0, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="interval_s"):
            feed.start(bad)  # type: ignore[arg-type]
