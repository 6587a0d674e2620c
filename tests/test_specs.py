"""The accelerator spec table, lookup, capacity, the KV-cache helpers, and Device's new
fields (model, memory, KV budget, clocks, power)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

import capsched
from capsched import ConfigError, Device
from capsched.devices import parse_devices
from capsched.specs import (
    SPECS,
    AcceleratorSpec,
    UnknownAcceleratorError,
    capacity,
    kv_bytes_per_token,
    kv_cache_tokens,
    known_names,
    lookup,
)

REQUIRED = [
    "H100-SXM", "H100-PCIe", "H200", "B200", "A100-SXM-80GB", "A100-40GB", "A100-PCIe", "L40S", "L4",
    "A40", "A10G", "A10", "T4", "V100-SXM", "RTX-4090", "MI300X", "MI250X", "Gaudi2",
]


def test_table_has_every_required_model():
    for name in REQUIRED:
        assert name in SPECS
    assert known_names() == list(SPECS)


@pytest.mark.parametrize("spec", list(SPECS.values()), ids=lambda s: s.name)
def test_rows_are_sane(spec):
    assert isinstance(spec, AcceleratorSpec)
    assert spec.vendor in ("nvidia", "amd", "intel")
    assert spec.dtype in ("bf16", "fp16")
    for v in (spec.peak_tflops, spec.memory_bandwidth_gbs, spec.memory_gib, spec.tdp_w):
        assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0
    assert spec.max_clock_mhz is None or 500 <= spec.max_clock_mhz <= 3500
    assert spec.sm_count is None or (isinstance(spec.sm_count, int) and spec.sm_count > 0)
    assert lookup(spec.name) is spec
    for alias in spec.aliases:
        assert lookup(alias) is spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.peak_tflops = 1.0  # type: ignore[misc]


def test_every_row_cites_its_source():
    src = Path(capsched.specs.__file__).read_text()
    body = src[src.index("_ROWS: tuple[AcceleratorSpec, ...] = ("):src.index("#: The table, keyed")]
    rows = re.split(r"\n    AcceleratorSpec\(", body)
    for before, row in zip(rows, rows[1:]):
        last_line = before.rstrip().splitlines()[-1].strip()
        assert last_line.startswith("#"), f"no source comment before {row[:30]!r}"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIe"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA A100 80GB PCIe", "A100-PCIe"),
        ("NVIDIA A100-PCIE-40GB", "A100-PCIe-40GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A40", "A40"),
        ("NVIDIA A10G", "A10G"),
        ("NVIDIA A10", "A10"),
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-32GB", "V100-SXM"),
        ("Tesla V100-SXM2-16GB", "V100-SXM-16GB"),
        ("NVIDIA GeForce RTX 4090", "RTX-4090"),
        ("AMD Instinct MI300X", "MI300X"),
        ("AMD Instinct MI250X", "MI250X"),
        ("Intel Gaudi 2", "Gaudi2"),
        # case, spaces and punctuation do not matter
        ("h100-sxm", "H100-SXM"),
        ("h100 sxm", "H100-SXM"),
        ("  nvidia l4  ", "L4"),
        ("rtx4090", "RTX-4090"),
        # decorations NVML may add: a memory size, a memory type, a MIG profile
        ("NVIDIA L4 24GB", "L4"),
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "A100-40GB"),
        ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "H100-SXM"),
    ],
)
def test_lookup(name, expected):
    assert lookup(name).name == expected


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("H100", "H100-SXM"),  # ambiguous: SXM or PCIe
        ("H10O-SXM", "H100-SXM"),
        ("NVIDIA L40", "L40S"),  # not taken for an L4
        ("NVIDIA A100X", None),  # not taken for an A10
        ("Tesla V100-PCIE-32GB", None),  # not taken for a V100 SXM
        ("MI300A", "MI300X"),
        ("nonsense", None),
        ("", None),
    ],
)
def test_unknown_names(name, suggestion):
    with pytest.raises(UnknownAcceleratorError) as info:
        lookup(name)
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, capsched.CapschedError)
    assert err.name == name
    msg = str(err)
    assert msg.startswith(f"unknown accelerator {name!r}")
    assert "known: H100-SXM" in msg
    if suggestion is not None:
        assert suggestion in err.suggestions
        assert "did you mean" in msg and repr(suggestion) in msg


def test_lookup_needs_a_string():
    with pytest.raises(TypeError):
        lookup(None)  # type: ignore[arg-type]


def test_capacity_is_work_per_clock_times_max_clock():
    h100 = SPECS["H100-SXM"]
    assert capacity(h100) == h100.capacity == 989.4
    assert h100.flops_per_clock * h100.max_clock_mhz * 1e6 == pytest.approx(989.4e12)
    assert capacity(h100, 990) == pytest.approx(989.4 / 2)
    for spec in SPECS.values():
        if spec.max_clock_mhz is not None:
            assert capacity(spec, spec.max_clock_mhz) == pytest.approx(capacity(spec))
    gaudi = SPECS["Gaudi2"]
    assert gaudi.flops_per_clock is None and capacity(gaudi) == 432.0
    with pytest.raises(ConfigError, match="no known max clock"):
        capacity(gaudi, 1000)
    for bad in (0, -1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ConfigError, match="clock_mhz"):
            capacity(h100, bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        capacity("H100-SXM")  # type: ignore[arg-type]


def test_capacity_ratios_match_public_figures():
    # H100 SXM vs A100: ~3.2x dense bf16; L4 vs T4 (bf16 vs fp16): ~1.9x
    assert capacity(lookup("H100-SXM")) / capacity(lookup("A100-SXM-80GB")) == pytest.approx(3.17, abs=0.01)
    assert capacity(lookup("L4")) / capacity(lookup("T4")) == pytest.approx(1.86, abs=0.01)


def test_kv_bytes_per_token():
    assert kv_bytes_per_token(32, 32, 128) == 524288  # Llama-2-7B, fp16
    assert kv_bytes_per_token(80, 8, 128, 1) == 163840  # Llama-2-70B GQA, fp8
    for bad in ((0, 1, 1), (1, -1, 1), (1, 1, 1.5), (True, 1, 1)):
        with pytest.raises(ConfigError):
            kv_bytes_per_token(*bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dtype_bytes"):
        kv_bytes_per_token(1, 1, 1, 0)


def test_kv_cache_tokens():
    per = kv_bytes_per_token(32, 32, 128)  # 0.5 MiB
    # 80 GiB x 0.9 = 72 GiB; minus 13 GiB of weights = 59 GiB = 120,832 tokens of 0.5 MiB
    assert kv_cache_tokens(80, 13, per) == 120832
    assert kv_cache_tokens(80, 13, per, reserve_fraction=0) == 137216
    assert kv_cache_tokens(1, 0, 3, reserve_fraction=0) == 2**30 // 3
    assert isinstance(kv_cache_tokens(24, 14, per), int)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((0, 1, 1), {}, "memory_gib"),
        ((float("nan"), 1, 1), {}, "memory_gib"),
        (("80", 1, 1), {}, "memory_gib"),
        ((80, -1, 1), {}, "weights_gib"),
        ((80, float("inf"), 1), {}, "weights_gib"),
        ((80, 1, 0), {}, "kv_bytes_per_token"),
        ((80, 1, None), {}, "kv_bytes_per_token"),
        ((80, 1, 1), {"reserve_fraction": 1.0}, "reserve_fraction"),
        ((80, 1, 1), {"reserve_fraction": -0.1}, "reserve_fraction"),
        ((80, 1, 1), {"reserve_fraction": True}, "reserve_fraction"),
        ((80, 72, 1), {}, r"the weights \(72 GiB\) do not fit in the 72 GiB left of 80 GiB"),
        ((24, 30, 1), {}, "do not fit"),
    ],
)
def test_kv_cache_tokens_rejects(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        kv_cache_tokens(*args, **kwargs)


# ---------------------------------------------------------------------- Device


def test_device_defaults_unchanged():
    d = Device("a")
    assert d.capacity is None and d.effective_capacity == 1.0
    assert d.max_inflight_batches == 1
    assert (d.model, d.memory_gib, d.kv_tokens, d.max_clock_mhz, d.clock_mhz, d.power_w) == (None,) * 6
    assert d.spec is None
    assert Device("b", 2.0).effective_capacity == 2.0
    assert Device("c", 2.0, 3).max_inflight_batches == 3


def test_device_model_fills_from_table():
    d = Device("g", model="NVIDIA H100 80GB HBM3")
    assert d.model == "NVIDIA H100 80GB HBM3"  # stored as given
    assert d.spec is SPECS["H100-SXM"]
    assert d.capacity is None and d.effective_capacity == 989.4
    assert (d.memory_gib, d.max_clock_mhz, d.power_w) == (80.0, 1980.0, 700.0)
    given = Device("g", capacity=5.0, model="L4", memory_gib=22.0, power_w=60.0, max_clock_mhz=2000.0)
    assert (given.effective_capacity, given.memory_gib, given.power_w, given.max_clock_mhz) == (5.0, 22.0, 60.0, 2000.0)
    assert Device("x", model="Gaudi2").max_clock_mhz is None  # unpublished: not filled


def test_device_clock_and_kv():
    d = Device("g", model="A100-SXM-80GB", clock_mhz=705, kv_tokens=100_000)
    assert d.clock_mhz == 705 and d.kv_tokens == 100_000
    assert Device("h", max_clock_mhz=1000, clock_mhz=1000).clock_mhz == 1000


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capacity": 0}, "device 'd': capacity must be a finite number > 0, got 0"),
        ({"capacity": float("nan")}, "device 'd': capacity"),
        ({"capacity": True}, "device 'd': capacity"),
        ({"capacity": "1"}, "device 'd': capacity"),
        ({"max_inflight_batches": 0}, "device 'd': max_inflight_batches must be an integer >= 1, got 0"),
        ({"model": "H100"}, r"device 'd': model: unknown accelerator 'H100'; did you mean 'H100-SXM'"),
        ({"model": 100}, "device 'd': model must be an accelerator name"),
        ({"memory_gib": 0}, "device 'd': memory_gib must be a finite number > 0, got 0"),
        ({"memory_gib": float("inf")}, "device 'd': memory_gib"),
        ({"memory_gib": "80"}, "device 'd': memory_gib"),
        ({"kv_tokens": 0}, "device 'd': kv_tokens must be an integer >= 1"),
        ({"kv_tokens": 1.5}, "device 'd': kv_tokens"),
        ({"kv_tokens": True}, "device 'd': kv_tokens"),
        ({"kv_tokens": 2**63}, "device 'd': kv_tokens"),
        ({"max_clock_mhz": -1}, "device 'd': max_clock_mhz"),
        ({"clock_mhz": 0, "max_clock_mhz": 10}, "device 'd': clock_mhz must be a finite number > 0"),
        ({"clock_mhz": 1000}, r"device 'd': clock_mhz=1000 needs max_clock_mhz"),
        ({"clock_mhz": 2000, "model": "H100-SXM"}, r"device 'd': clock_mhz must be <= max_clock_mhz \(1980.0\), got 2000"),
        ({"clock_mhz": 11, "max_clock_mhz": 10}, "device 'd': clock_mhz must be <= max_clock_mhz"),
        ({"power_w": float("nan")}, "device 'd': power_w"),
        ({"power_w": False}, "device 'd': power_w"),
    ],
)
def test_device_rejects(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        Device("d", **kwargs)


def test_device_name_rejected_as_before():
    with pytest.raises(ConfigError, match="device name must be a non-empty str, got ''"):
        Device("")


def test_parse_devices_dicts_with_new_fields():
    devs = parse_devices([
        {"name": "a", "model": "H100-SXM", "kv_tokens": 10},
        {"name": "b", "capacity": 100.0, "memory_gib": 24, "max_clock_mhz": 2000, "clock_mhz": 1000, "power_w": 72},
        "c",
        Device("d", model="L4"),
    ])
    assert [d.effective_capacity for d in devs] == [989.4, 100.0, 1.0, 121.0]
    with pytest.raises(ConfigError, match=r"device 0: a device dict needs 'name' and may have 'capacity', .*'pool'; got keys \['flops', 'name'\]"):
        parse_devices([{"name": "a", "flops": 1}])
    with pytest.raises(ConfigError, match="device 'a': model: unknown accelerator"):
        parse_devices([{"name": "a", "model": "nope"}])


def test_scheduler_uses_effective_capacity():
    s = capsched.Scheduler([Device("big", model="H100-SXM"), Device("small", model="L4")])
    caps = [d["capacity_orig"] if "capacity_orig" in d else d["capacity"] for d in s.stats()["devices"]]
    assert caps[0] == pytest.approx(1024)
    assert caps[1] == pytest.approx(1024 * 121 / 989.4, rel=1e-6)


def test_public_exports():
    assert capsched.AcceleratorSpec is AcceleratorSpec
    assert capsched.lookup_accelerator is lookup
    assert capsched.discover is capsched.devices.discover
    assert capsched.SchedulerConfig is capsched.config.SchedulerConfig
    for name in ("AcceleratorSpec", "SchedulerConfig", "discover", "lookup_accelerator"):
        assert name in capsched.__all__
