"""SchedulerConfig: from a dict, a TOML file and CAPSCHED_* variables; every bad value."""

from __future__ import annotations

import dataclasses

import os

import pytest

import capsched
from capsched import Config, ConfigError, Device, SchedulerConfig
from capsched.config import POLICIES

# Every field of an int, float, bool or str type (and devices) has a variable.
ENV_NAMES = sorted(
    "CAPSCHED_" + f.name.upper()
    for f in dataclasses.fields(SchedulerConfig)
    if f.name == "devices" or f.type in ("int", "float", "bool", "str")
)


def test_defaults_and_subclass():
    c = SchedulerConfig()
    assert isinstance(c, Config)
    assert (c.devices, c.policy, c.max_batch_size, c.enable_dynamic_batching) == ((), "weighted", 32, True)
    assert c.base_config() == Config()
    assert Config().weight_urgency == c.weight_urgency == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.policy = "edf"  # type: ignore[misc]
    assert hash(SchedulerConfig(devices=["a"])) == hash(SchedulerConfig(devices=("a",)))


def test_config_unchanged():
    assert [f.name for f in dataclasses.fields(Config)][-1] == "tokenizer"
    with pytest.raises(ConfigError, match="unknown config key"):
        Config.from_dict({"policy": "edf"})


def test_devices_are_normalised():
    c = SchedulerConfig(devices=["a", {"name": "b", "model": "L4"}, Device("c", 2.0)])
    assert c.devices == (Device("a"), Device("b", model="L4"), Device("c", 2.0))
    assert SchedulerConfig(devices="auto").devices == "auto"
    assert SchedulerConfig(devices=[]).devices == ()


def test_policies_come_from_policies_tuple():
    for p in POLICIES:
        assert SchedulerConfig(policy=p).policy == p


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"policy": "lifo"}, "policy: unknown policy 'lifo': expected one of 'fcfs', 'priority', 'edf', 'srtf', 'weighted'"),
        ({"policy": None}, "policy: unknown policy None"),
        ({"max_batch_size": 0}, r"max_batch_size must be in 1\.\.65536, got 0"),
        ({"max_batch_size": 65537}, "max_batch_size must be in"),
        ({"max_batch_size": 2.0}, "max_batch_size must be an integer, got 2.0"),
        ({"max_batch_size": True}, "max_batch_size must be an integer"),
        ({"enable_dynamic_batching": 1}, "enable_dynamic_batching must be a bool, got 1"),
        ({"devices": "cuda:0"}, "devices must be a list of devices or 'auto', got the string 'cuda:0'"),
        ({"devices": ["a", "a"]}, "devices: device name 'a' appears twice"),
        ({"devices": [{"name": "a", "capacity": -1}]}, "devices: device 'a': capacity must be"),
        ({"devices": [3]}, "devices: device 0: expected a name, a Device or a dict, got 3"),
        ({"devices": 3}, "devices: devices must be a list, got int"),
        ({"weight_urgency": -1}, "weight_urgency must be a finite number >= 0"),
        ({"deadline_levels": 0}, "deadline_levels must be in 1..1024"),
        ({"max_batch_size": 8, "preferred_batch_sizes": (4, 16)},
         r"preferred_batch_sizes\[1\] = 16 is above max_batch_size \(8\)"),
    ],
)
def test_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SchedulerConfig(**kwargs)


def test_max_batch_size_limit_matches_core():
    assert capsched.config.MAX_BATCH_SIZE == capsched._core.MAX_BATCH_SIZE


# ---------------------------------------------------------------------- dict


def test_from_dict():
    c = SchedulerConfig.from_dict(
        {"devices": ["cuda:0", {"name": "cuda:1", "capacity": 2.0}], "policy": "edf", "max_batch_size": 8,
         "enable_dynamic_batching": False, "max_retries": 1}
    )
    assert [d.name for d in c.devices] == ["cuda:0", "cuda:1"]
    assert (c.policy, c.max_batch_size, c.enable_dynamic_batching, c.max_retries) == ("edf", 8, False, 1)
    assert isinstance(c, SchedulerConfig)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"polcy": "edf"}, r"unknown config key\(s\) \['polcy'\]; known keys: .*'policy'"),
        ({"tokenizer": len}, r"unknown config key\(s\) \['tokenizer'\]"),
        ({"policy": "x"}, "policy: unknown policy 'x'"),
        ({"max_batch_size": "8"}, "max_batch_size must be an integer, got '8'"),
        ({"devices": [{"name": "a", "bogus": 1}]}, r"devices: device 0: a device dict needs 'name'.*got keys \['bogus', 'name'\]"),
        ({"aging_srtf": "fast"}, "aging_srtf must be a number, got 'fast'"),
    ],
)
def test_from_dict_bad(data, match):
    with pytest.raises(ConfigError, match=match):
        SchedulerConfig.from_dict(data)


def test_from_dict_needs_a_mapping():
    with pytest.raises(ConfigError, match="config must be a mapping, got list"):
        SchedulerConfig.from_dict([])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- TOML


def test_from_toml_array_of_tables(tmp_path):
    p = tmp_path / "capsched.toml"
    p.write_text(
        """
[scheduler]
policy = "srtf"
max_batch_size = 16
enable_dynamic_batching = false
weight_urgency = 0.7

[[scheduler.devices]]
name = "gpu0"
model = "H100-SXM"
kv_tokens = 200000

[[scheduler.devices]]
name = "gpu1"
capacity = 300.0
max_inflight_batches = 2
"""
    )
    c = SchedulerConfig.from_toml(p)
    assert c.policy == "srtf" and c.max_batch_size == 16 and c.enable_dynamic_batching is False
    assert c.weight_urgency == 0.7
    assert c.devices == (
        Device("gpu0", model="H100-SXM", kv_tokens=200000),
        Device("gpu1", 300.0, 2),
    )
    s = c.build_scheduler()
    assert [d.name for d in s.devices] == ["gpu0", "gpu1"] and s.policy == "srtf" and s.max_batch_size == 16


def test_from_toml_strings_and_whole_file(tmp_path):
    p = tmp_path / "a.toml"
    p.write_text('devices = ["cuda:0", "cuda:1"]\npolicy = "fcfs"\n')
    c = SchedulerConfig.from_toml(str(p))
    assert [d.name for d in c.devices] == ["cuda:0", "cuda:1"] and c.policy == "fcfs"
    p.write_text('[scheduler]\ndevices = "auto"\n')
    assert SchedulerConfig.from_toml(p).devices == "auto"


@pytest.mark.parametrize(
    "text, match",
    [
        ('[scheduler]\nmax_batch_size = "big"\n', "max_batch_size must be an integer, got 'big'"),
        ('[scheduler]\npolicy = "lottery"\n', "policy: unknown policy 'lottery'"),
        ("[scheduler]\nmax_batch_size = 0\n", "max_batch_size must be in"),
        ("[scheduler]\nenable_dynamic_batching = 1\n", "enable_dynamic_batching must be a bool, got 1"),
        ('[scheduler]\ndevices = "gpu0"\n', "devices must be a list of devices or 'auto'"),
        ('[[scheduler.devices]]\nname = "a"\nmodel = "Z80"\n', "devices: device 'a': model: unknown accelerator 'Z80'"),
        ('[[scheduler.devices]]\nname = "a"\nmemory = 80\n', "devices: device 0: a device dict needs 'name'"),
        ('[[scheduler.devices]]\ncapacity = 1.0\n', "devices: device 0: a device dict needs 'name'"),
        ("[scheduler]\nunknown_knob = 1\n", r"unknown config key\(s\) \['unknown_knob'\]"),
        ("[scheduler]\nweight_deadline = -0.5\n", "weight_deadline must be a finite number >= 0"),
        ("[scheduler]\nmax_retries = 1.5\n", "max_retries must be an integer, got 1.5"),
        # keys beside the [scheduler] table were ignored without a word
        ('max_batch_size = 8\nplicy = "edf"\n[scheduler]\npolicy = "edf"\n',
         r"key\(s\) \['max_batch_size', 'plicy'\] are outside the \[scheduler\] table"),
    ],
)
def test_from_toml_bad(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        SchedulerConfig.from_toml(p)
    assert str(info.value).startswith(f"config file {str(p)!r}: ")


def test_from_toml_preferred_size_above_max_batch_size(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[scheduler]\nmax_batch_size = 8\npreferred_batch_sizes = [4, 16]\n")
    with pytest.raises(ConfigError, match=r"c\.toml'?: preferred_batch_sizes\[1\] = 16 is above max_batch_size \(8\)"):
        SchedulerConfig.from_toml(p)


@pytest.mark.parametrize("cls", [Config, SchedulerConfig])
@pytest.mark.parametrize("path", [1, 3, True, 2.5, None])
def test_from_toml_refuses_what_is_not_a_path(cls, path, capsys):
    # open() takes an int as a file descriptor: from_toml(1) read, then closed, stdout.
    with pytest.raises(ConfigError, match=f"path must be a str, bytes or os.PathLike, got {type(path).__name__}"):
        cls.from_toml(path)
    print("stdout still open")
    assert "stdout still open" in capsys.readouterr().out


def test_from_toml_takes_str_pathlike_and_bytes(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[scheduler]\nmax_batch_size = 8\n")
    for path in (p, str(p), os.fsencode(p)):
        assert SchedulerConfig.from_toml(path).max_batch_size == 8


def test_from_toml_unreadable_or_invalid(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        SchedulerConfig.from_toml(tmp_path / "missing.toml")
    p = tmp_path / "broken.toml"
    p.write_text("[scheduler\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        SchedulerConfig.from_toml(p)


# ---------------------------------------------------------------------- environment


def test_from_env_every_field():
    env = {
        "CAPSCHED_DEVICES": "cuda:0, cuda:1",
        "CAPSCHED_POLICY": "edf",
        "CAPSCHED_MAX_BATCH_SIZE": "64",
        "CAPSCHED_ENABLE_DYNAMIC_BATCHING": "off",
        "CAPSCHED_WEIGHT_URGENCY": "0.25",
        "CAPSCHED_WEIGHT_RESOURCE": "1e-1",
        "CAPSCHED_WEIGHT_DEADLINE": ".5",
        "CAPSCHED_RESOURCE_SCALE_TOKENS": "2048",
        "CAPSCHED_DEADLINE_LEVELS": "+32",
        "CAPSCHED_AGING_PRIORITY": "0",
        "CAPSCHED_AGING_WEIGHTED": "0.02",
        "CAPSCHED_AGING_SRTF": "128.",
        "CAPSCHED_AGING_EDF": "1E0",
        "CAPSCHED_NO_DEADLINE_HORIZON": "30",
        "CAPSCHED_MAX_RETRIES": " 5 ",
        "PATH": "/usr/bin",  # not ours: ignored
        "CAPSCHEDX": "1",  # no underscore after the prefix: not ours
    }
    ours = sorted(k for k in env if k.startswith("CAPSCHED_"))
    assert set(ours) <= set(ENV_NAMES)
    # every field this test was written for (fields added later have their own tests)
    assert len(ours) == 15
    c = SchedulerConfig.from_env(env)
    assert [d.name for d in c.devices] == ["cuda:0", "cuda:1"]
    assert (c.policy, c.max_batch_size, c.enable_dynamic_batching) == ("edf", 64, False)
    assert (c.weight_urgency, c.weight_resource, c.weight_deadline) == (0.25, 0.1, 0.5)
    assert (c.resource_scale_tokens, c.deadline_levels, c.aging_priority) == (2048.0, 32, 0.0)
    assert (c.aging_weighted, c.aging_srtf, c.aging_edf, c.no_deadline_horizon, c.max_retries) == (
        0.02, 128.0, 1.0, 30.0, 5,
    )


def test_from_env_empty_gives_defaults_and_base():
    assert SchedulerConfig.from_env({}) == SchedulerConfig()
    base = SchedulerConfig(policy="fcfs", max_batch_size=4)
    c = SchedulerConfig.from_env({"CAPSCHED_MAX_BATCH_SIZE": "8"}, base=base)
    assert (c.policy, c.max_batch_size) == ("fcfs", 8)
    tok = len
    c2 = SchedulerConfig.from_env({"CAPSCHED_POLICY": "srtf"}, base=Config(max_retries=7, tokenizer=tok))
    assert (c2.policy, c2.max_retries, c2.tokenizer) == ("srtf", 7, tok)
    c3 = SchedulerConfig.from_env({}, base={"devices": ["x"]})
    assert c3.devices == (Device("x"),)


def test_from_env_reads_os_environ_by_default(monkeypatch):
    import os

    # Every CAPSCHED_* variable goes, test knobs such as CAPSCHED_PROPERTY_SCALE included:
    # from_env rejects names that are not fields.
    for k in set(ENV_NAMES) | {k for k in os.environ if k.startswith("CAPSCHED_")}:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("CAPSCHED_POLICY", "priority")
    assert SchedulerConfig.from_env().policy == "priority"


@pytest.mark.parametrize("raw, value", [("1", True), ("TRUE", True), ("Yes", True), ("on", True),
                                        ("0", False), ("false", False), ("NO", False), ("Off", False)])
def test_from_env_bools(raw, value):
    assert SchedulerConfig.from_env({"CAPSCHED_ENABLE_DYNAMIC_BATCHING": raw}).enable_dynamic_batching is value


def test_from_env_auto_devices():
    assert SchedulerConfig.from_env({"CAPSCHED_DEVICES": "auto"}).devices == "auto"


@pytest.mark.parametrize(
    "var, raw, match",
    [
        ("CAPSCHED_MAX_BATCH_SIZE", "32.0", "max_batch_size must be an integer"),
        ("CAPSCHED_MAX_BATCH_SIZE", "", "max_batch_size must be an integer"),
        ("CAPSCHED_MAX_BATCH_SIZE", "0x20", "max_batch_size must be an integer"),
        ("CAPSCHED_MAX_BATCH_SIZE", "1_000", "max_batch_size must be an integer"),
        ("CAPSCHED_MAX_BATCH_SIZE", "0", "max_batch_size must be in 1..65536, got 0"),
        ("CAPSCHED_MAX_BATCH_SIZE", "100000", "max_batch_size must be in"),
        ("CAPSCHED_DEADLINE_LEVELS", "ten", "deadline_levels must be an integer"),
        ("CAPSCHED_DEADLINE_LEVELS", "2000", "deadline_levels must be in 1..1024"),
        ("CAPSCHED_MAX_RETRIES", "-1", "max_retries must be in 0..1000"),
        ("CAPSCHED_WEIGHT_URGENCY", "nan", "weight_urgency must be a decimal number"),
        ("CAPSCHED_WEIGHT_URGENCY", "inf", "weight_urgency must be a decimal number"),
        ("CAPSCHED_WEIGHT_URGENCY", "half", "weight_urgency must be a decimal number"),
        ("CAPSCHED_WEIGHT_URGENCY", "-0.5", "weight_urgency must be a finite number >= 0"),
        ("CAPSCHED_WEIGHT_RESOURCE", "1e999", "weight_resource must be a finite number >= 0"),
        ("CAPSCHED_RESOURCE_SCALE_TOKENS", "0", "resource_scale_tokens must be a finite number > 0"),
        ("CAPSCHED_NO_DEADLINE_HORIZON", "1,5", "no_deadline_horizon must be a decimal number"),
        ("CAPSCHED_ENABLE_DYNAMIC_BATCHING", "maybe", "enable_dynamic_batching must be a boolean"),
        ("CAPSCHED_ENABLE_DYNAMIC_BATCHING", "", "enable_dynamic_batching must be a boolean"),
        ("CAPSCHED_POLICY", "lifo", "policy: unknown policy 'lifo'"),
        ("CAPSCHED_POLICY", "", "policy: unknown policy ''"),
        ("CAPSCHED_DEVICES", "", "devices must be a comma-separated list"),
        ("CAPSCHED_DEVICES", "a,,b", "devices must be a comma-separated list"),
        ("CAPSCHED_DEVICES", "a,", "devices must be a comma-separated list"),
        ("CAPSCHED_DEVICES", "a,a", "devices: device name 'a' appears twice"),
    ],
)
def test_from_env_bad(var, raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        SchedulerConfig.from_env({var: raw})
    assert str(info.value).startswith(f"{var}={raw!r}: ")


@pytest.mark.parametrize(
    "var, raw, match",
    [
        # (int() refuses strings of more than 4,300 digits with a bare ValueError)
        ("CAPSCHED_MAX_BATCH_SIZE", "9" * 5000, "max_batch_size is out of range: 5,000 digits"),
        ("CAPSCHED_PREFERRED_BATCH_SIZES", "4," + "9" * 5000, "preferred_batch_sizes is out of range: 5,000 digits"),
        ("CAPSCHED_WEIGHT_URGENCY", "1" * 5000, "weight_urgency must be a finite number >= 0, got inf"),
    ],
)
def test_from_env_huge_values(var, raw, match):
    with pytest.raises(ConfigError, match=match) as info:
        SchedulerConfig.from_env({var: raw})
    msg = str(info.value)
    assert msg.startswith(f"{var}={raw[:60]!r}"[:-1]) and "(5,00" in msg and len(msg) < 300


@pytest.mark.parametrize("raw", [5, 2.5, None, b"8"])
def test_from_env_values_must_be_strings(raw):
    with pytest.raises(ConfigError, match=f"CAPSCHED_MAX_BATCH_SIZE: environment values are strings, got {type(raw).__name__}"):
        SchedulerConfig.from_env({"CAPSCHED_MAX_BATCH_SIZE": raw})


def test_from_env_unknown_variables():
    with pytest.raises(ConfigError) as info:
        SchedulerConfig.from_env({"CAPSCHED_MAX_BATCH": "8", "CAPSCHED_TOKENIZER": "x", "CAPSCHED_POLICY": "edf"})
    msg = str(info.value)
    assert msg.startswith("unknown environment variable(s) CAPSCHED_MAX_BATCH, CAPSCHED_TOKENIZER; known: ")
    for name in ENV_NAMES:
        assert name in msg


def test_from_env_bad_arguments():
    with pytest.raises(ConfigError, match="base must be a Config"):
        SchedulerConfig.from_env({}, base=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="environ must be a mapping"):
        SchedulerConfig.from_env(["CAPSCHED_POLICY=edf"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------- using it


def test_scheduler_kwargs():
    c = SchedulerConfig(devices=["a", "b"], policy="edf", max_batch_size=2, max_retries=0)
    kw = c.scheduler_kwargs()
    assert kw["devices"] == [Device("a"), Device("b")]
    assert (kw["policy"], kw["max_batch_size"], kw["enable_dynamic_batching"]) == ("edf", 2, True)
    assert type(kw["config"]) is Config and kw["config"].max_retries == 0
    s = capsched.Scheduler(**kw)
    assert s.policy == "edf" and s.max_batch_size == 2
    t = c.build_scheduler(max_batch_size=3, clock=lambda: 0.0)
    assert t.max_batch_size == 3
    with pytest.raises(ConfigError, match="has no devices"):
        SchedulerConfig().scheduler_kwargs()


def test_from_toml_ignores_other_tables_beside_scheduler(tmp_path):
    p = tmp_path / "shared.toml"
    p.write_text('[server]\nport = 8000\n\n[scheduler]\nmax_retries = 5\n')
    assert Config.from_toml(p).max_retries == 5
