"""The ``capsched`` command line: ``devices`` (table and --json) with a fake NVML and
with no GPU, ``specs``, usage errors and ``python -m capsched``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from capsched import cli, discovery

import _fake_nvml as fake
from _fake_nvml import A100_UUID, H100_UUID, MIG3_UUID


@pytest.fixture(autouse=True)
def hermetic(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(discovery.shutil, "which", lambda name: None)


@pytest.fixture
def nvml(monkeypatch):
    module = fake.make_module()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def run(*argv):
    out = io.StringIO()
    rc = cli.main(list(argv), out=out)
    return rc, out.getvalue()


def test_devices_table(nvml):
    rc, text = run("devices")
    assert rc == 0
    lines = text.splitlines()
    header = lines[0].split()
    assert header[:3] == ["index", "name", "model"]
    for word in ("memory", "SMs", "clock", "capacity", "MIG", "uuid"):
        assert word in lines[0]
    h100 = next(line for line in lines if "cuda:0" in line)
    for cell in ("NVIDIA H100 80GB HBM3", "79.6", "132", "1755/1980", "989.4", "off", H100_UUID):
        assert cell in h100
    a100 = next(line for line in lines if line.split()[1:2] == ["cuda:1"])
    for cell in ("NVIDIA A100-SXM4-40GB", "40.0", "108", "1410/1410", "312.0", "2 slice(s)", A100_UUID):
        assert cell in a100
    mig3 = next(line for line in lines if "cuda:1/mig3" in line)
    for cell in ("MIG 1g.5gb", "4.8", "14", f"{312 * 14 / 108:.1f}", "share 0.130", MIG3_UUID):
        assert cell in mig3
    assert lines[-1] == "(NVML found 2 GPU(s))"


def test_devices_json(nvml):
    rc, text = run("devices", "--json")
    assert rc == 0
    data = json.loads(text)
    assert [d["name"] for d in data] == ["cuda:0", "cuda:1"]
    assert data[0]["uuid"] == H100_UUID and data[0]["spec"] == "H100-SXM" and data[0]["capacity"] == 989.4
    assert data[0]["memory_total"] == 81559 * 2**20 and data[0]["sm_count"] == 132
    assert (data[0]["clock_sm_mhz"], data[0]["clock_sm_max_mhz"]) == (1755.0, 1980.0)
    assert data[1]["mig_enabled"] is True
    assert [m["name"] for m in data[1]["mig"]] == ["cuda:1/mig0", "cuda:1/mig3"]
    assert data[1]["mig"][1]["sm_count"] == 14


def test_devices_unknown_model(monkeypatch):
    gpu = fake.FakeGpu("NVIDIA Quantum Q9000", "GPU-q", 2048, None, None, mig_mode=None)
    monkeypatch.setitem(sys.modules, "pynvml", fake.make_module([gpu]))
    rc, text = run("devices")
    assert rc == 0
    line = next(line for line in text.splitlines() if "cuda:0" in line)
    assert "NVIDIA Quantum Q9000 (not in spec table)" in line and "-/-" in line


def test_devices_without_gpu():
    rc, text = run("devices")
    assert rc == 0
    assert text.startswith(
        "No GPU was found: nvidia-ml-py (pynvml) is not installed; nvidia-smi is not on PATH."
    )
    assert "Device('gpu0', model='H100-SXM')" in text


def test_devices_json_without_gpu():
    rc, text = run("devices", "--json")
    assert rc == 0 and json.loads(text) == [] and text.strip() == "[]"


def test_devices_cuda_visible_devices(nvml, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc, text = run("devices")
    assert rc == 0 and "No GPU was found" in text and "CUDA_VISIBLE_DEVICES=''" in text
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG3_UUID)
    rc, text = run("devices", "--json")
    data = json.loads(text)
    assert [(d["name"], [m["uuid"] for m in d["mig"]]) for d in data] == [("cuda:0", [MIG3_UUID])]


def test_devices_writes_to_stdout_by_default(nvml, capsys):
    assert cli.main(["devices", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "cuda:0"


def test_specs():
    rc, text = run("specs")
    assert rc == 0
    assert text.splitlines()[0].split()[:2] == ["name", "TFLOP/s"]
    assert any(line.startswith("H100-SXM ") and "989.4" in line for line in text.splitlines())
    rc, text = run("specs", "--json")
    data = json.loads(text)
    assert {"name": "L4", "peak_tflops": 121.0}.items() <= next(d for d in data if d["name"] == "L4").items()


@pytest.mark.parametrize("argv", [[], ["nope"], ["devices", "--yaml"]])
def test_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage: capsched" in capsys.readouterr().err


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "devices" in out and "specs" in out


def test_parser_is_extensible():
    parser = cli.build_parser()
    assert set(cli.COMMANDS) >= {"devices", "specs"}
    assert parser.parse_args(["devices", "--json"]).json is True


def test_python_dash_m():
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # whatever this machine has, nothing is visible
    proc = subprocess.run(
        [sys.executable, "-m", "capsched", "devices", "--json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
