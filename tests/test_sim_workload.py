"""The simulator's workloads: generators, trace loaders, rate scaling, bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsched.errors import ConfigError, InvalidArgumentError
from capsched.sim.workload import (
    BUILTIN_TRACES,
    EmpiricalLengths,
    FixedLengths,
    LognormalLengths,
    TraceFormatError,
    TraceRequest,
    Workload,
    builtin_trace,
    gamma_bursty,
    load_azure_csv,
    load_mooncake_jsonl,
    load_trace,
    poisson,
    scale_to_rate,
)

SHARED_TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"
AZURE_CONV = SHARED_TRACES / "azure2023" / "AzureLLMInferenceTrace_conv.csv"
MOONCAKE = SHARED_TRACES / "mooncake" / "conversation_trace.jsonl"

AZURE_HEAD = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:51.0000000,879,31
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


# -- built-in traces ---------------------------------------------------------------------


def test_builtin_conversation_trace_matches_its_description():
    w = builtin_trace()
    assert w is builtin_trace("azure-conv")  # loaded once
    assert len(w) == 19_366 and w.name == "azure-conv"
    s = w.summary()
    assert s["mean_rate"] == pytest.approx(5.5, abs=0.1)
    assert s["interarrival_cv"] == pytest.approx(1.1, abs=0.05)
    assert s["prompt_mean"] == pytest.approx(1155, abs=1)
    assert s["prompt_p99"] == pytest.approx(4142, abs=1)
    assert s["output_mean"] == pytest.approx(211, abs=1)
    assert w[0] == TraceRequest(0.0, 374, 44)
    assert w.arrival_s[1] == pytest.approx(4.314579)


def test_builtin_code_trace_is_bursty():
    w = builtin_trace("azure-code")
    assert len(w) == 8_819
    assert w.interarrival_cv > 10


def test_unknown_builtin_trace():
    with pytest.raises(ConfigError, match="unknown built-in trace 'azure' .*azure-conv"):
        builtin_trace("azure")
    assert set(BUILTIN_TRACES) == {"azure-conv", "azure-code"}


@pytest.mark.skipif(not AZURE_CONV.is_file(), reason="no ../shared/data")
def test_builtin_trace_equals_the_shared_file():
    assert load_azure_csv(AZURE_CONV).with_name("azure-conv") == builtin_trace()
    assert load_azure_csv(AZURE_CONV, limit=500) == load_trace(str(AZURE_CONV), limit=500)


@pytest.mark.skipif(not MOONCAKE.is_file(), reason="no ../shared/data")
def test_shared_mooncake_trace():
    w = load_mooncake_jsonl(MOONCAKE, limit=500)
    assert len(w) == 500 and w.arrival_s[0] == 0.0
    assert w[0] == TraceRequest(0.0, 6758, 500)


# -- loaders -----------------------------------------------------------------------------


def test_load_azure_csv_and_gzip(tmp_path):
    w = load_azure_csv(_write(tmp_path, "t.csv", AZURE_HEAD))
    assert w.name == "t"
    assert w.arrival_s.tolist() == pytest.approx([0.0, 4.314579, 4.31941])
    assert w.prompt_tokens.tolist() == [374, 396, 879]
    assert w.output_tokens.tolist() == [44, 109, 31]
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(AZURE_HEAD.encode()))
    assert load_azure_csv(gz) == w
    assert load_trace(gz) == w
    assert len(load_azure_csv(gz, limit=2)) == 2


def test_azure_times_cross_midnight(tmp_path):
    text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-12-31 23:59:59.5,1,1\n2024-01-01 00:00:00.25,1,1\n"
    assert load_azure_csv(_write(tmp_path, "m.csv", text)).arrival_s.tolist() == pytest.approx([0.0, 0.75])


@pytest.mark.parametrize(
    "text, match",
    [
        ("", r"t\.csv: is empty"),
        ("time,in,out\n", r"t\.csv:1: expected the header TIMESTAMP,ContextTokens,GeneratedTokens"),
        (AZURE_HEAD + "2023-11-16 18:15:52,5\n", r"t\.csv:5: expected 3 fields, got 2"),
        (AZURE_HEAD + "yesterday,5,5\n", r"t\.csv:5: field 'TIMESTAMP' must look like"),
        (AZURE_HEAD + "2023-11-16 25:15:52,5,5\n", r"t\.csv:5: field 'TIMESTAMP' is not a valid time"),
        (AZURE_HEAD + "2023-11-16 18:15:52,-5,5\n", r"t\.csv:5: field 'ContextTokens' must be a whole number of tokens, got '-5'"),
        (AZURE_HEAD + "2023-11-16 18:15:52,5,0\n", r"t\.csv:5: field 'GeneratedTokens' must be >= 1, got 0"),
        (AZURE_HEAD + "2023-11-16 18:15:52,5,2.5\n", r"t\.csv:5: field 'GeneratedTokens'"),
        (AZURE_HEAD + "2023-11-16 18:15:40,5,5\n", r"t\.csv:5: arrivals must be in time order.*line 4"),
        ("TIMESTAMP,ContextTokens,GeneratedTokens\n", r"t\.csv: holds no requests"),
    ],
)
def test_bad_azure_csv(tmp_path, text, match):
    p = _write(tmp_path, "t.csv", text)
    with pytest.raises(TraceFormatError, match=match) as info:
        load_azure_csv(p)
    assert isinstance(info.value, ConfigError)
    assert info.value.path == str(p)


def test_load_mooncake_jsonl(tmp_path):
    lines = [
        {"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1]},
        {"timestamp": 1500, "input_length": 10, "output_length": 1},
    ]
    p = _write(tmp_path, "m.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    w = load_mooncake_jsonl(p)
    assert list(w) == [TraceRequest(0.0, 6758, 500), TraceRequest(1.5, 10, 1)]
    assert load_trace(p) == w


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", r"m\.jsonl:2: is not valid JSON"),
        ("[1, 2]", r"m\.jsonl:2: must be a JSON object, got list"),
        ('{"input_length": 5, "output_length": 5}', r"m\.jsonl:2: field 'timestamp' is missing"),
        ('{"timestamp": -1, "input_length": 5, "output_length": 5}', r"field 'timestamp' must be a number of milliseconds >= 0, got -1"),
        ('{"timestamp": 10, "output_length": 5}', r"m\.jsonl:2: field 'input_length' is missing"),
        ('{"timestamp": 10, "input_length": 5, "output_length": 0}', r"field 'output_length' must be an integer >= 1, got 0"),
        ('{"timestamp": 10, "input_length": "5", "output_length": 1}', r"field 'input_length' must be an integer >= 1, got '5'"),
        ('{"timestamp": 10, "input_length": true, "output_length": 1}', r"field 'input_length'"),
    ],
)
def test_bad_mooncake_jsonl(tmp_path, line, match):
    first = json.dumps({"timestamp": 0, "input_length": 5, "output_length": 5})
    p = _write(tmp_path, "m.jsonl", first + "\n" + line + "\n")
    with pytest.raises(TraceFormatError, match=match):
        load_mooncake_jsonl(p)


def test_load_trace_needs_a_known_format(tmp_path):
    with pytest.raises(ConfigError, match="cannot tell the format of trace"):
        load_trace(tmp_path / "t.parquet")
    assert len(load_trace("azure-conv", limit=10)) == 10
    with pytest.raises(InvalidArgumentError, match="limit must be an integer >= 1, got 0"):
        load_azure_csv(tmp_path / "t.csv", limit=0)


# -- generators --------------------------------------------------------------------------


def test_poisson_rate_and_variability():
    w = poisson(4.0, n=20_000, lengths=FixedLengths(100, 10), seed=3)
    assert len(w) == 20_000
    assert w.mean_rate == pytest.approx(4.0, rel=0.03)
    assert w.interarrival_cv == pytest.approx(1.0, abs=0.03)
    assert set(w.prompt_tokens.tolist()) == {100} and set(w.output_tokens.tolist()) == {10}


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_bursty_cv(cv):
    w = gamma_bursty(10.0, cv, n=40_000, lengths=FixedLengths(1, 1), seed=1)
    assert w.mean_rate == pytest.approx(10.0, rel=0.08)
    assert w.interarrival_cv == pytest.approx(cv, rel=0.08)


def test_duration_mode_covers_the_window():
    w = gamma_bursty(20.0, 3.0, duration_s=300.0, start_s=100.0, seed=7)
    assert w.arrival_s.min() >= 100.0 and w.arrival_s.max() < 400.0
    assert len(w) == pytest.approx(6000, rel=0.25)
    assert len(poisson(1.0, duration_s=0.001, seed=0)) <= 1


def test_generators_are_deterministic_per_seed():
    a = poisson(2.0, n=300, seed=11)
    assert a == poisson(2.0, n=300, seed=11)
    assert a != poisson(2.0, n=300, seed=12)
    rng = np.random.default_rng(5)
    assert len(gamma_bursty(2.0, 2.0, n=50, seed=rng)) == 50


def test_default_lengths_follow_the_azure_trace():
    w = poisson(5.0, n=20_000, seed=2)
    assert w.prompt_tokens.mean() == pytest.approx(1155, rel=0.05)
    assert w.output_tokens.mean() == pytest.approx(211, rel=0.05)


def test_lognormal_lengths_moments():
    dist = LognormalLengths(prompt_mean=800, prompt_cv=1.0, output_mean=100, output_cv=0.5, max_prompt=None, max_output=None)
    p, o = dist.sample(50_000, np.random.default_rng(0))
    assert p.dtype == np.int64 and p.min() >= 1 and o.min() >= 1
    assert p.mean() == pytest.approx(800, rel=0.05)
    assert p.std() / p.mean() == pytest.approx(1.0, rel=0.12)
    assert o.mean() == pytest.approx(100, rel=0.03)
    capped = LognormalLengths(max_prompt=2000, max_output=300).sample(5000, np.random.default_rng(0))
    assert capped[0].max() <= 2000 and capped[1].max() <= 300


def test_empirical_lengths_resample_pairs():
    dist = EmpiricalLengths(np.array([10, 20]), np.array([1, 2]))
    p, o = dist.sample(1000, np.random.default_rng(0))
    assert set(zip(p.tolist(), o.tolist())) == {(10, 1), (20, 2)}


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: poisson(0, n=5), "rate must be a finite number > 0, got 0"),
        (lambda: poisson(float("nan"), n=5), "rate"),
        (lambda: poisson(1.0), "exactly one of n"),
        (lambda: poisson(1.0, n=5, duration_s=5), "exactly one of n"),
        (lambda: poisson(1.0, n=-1), "n must be an integer >= 0, got -1"),
        (lambda: poisson(1.0, duration_s=-2), "duration_s must be a finite number > 0, got -2"),
        (lambda: poisson(1.0, n=5, seed=-1), "seed must be an integer >= 0, got -1"),
        (lambda: poisson(1.0, n=5, lengths=[1, 2]), "lengths must have a sample"),
        (lambda: gamma_bursty(1.0, 0, n=5), "cv must be a finite number > 0, got 0"),
        (lambda: FixedLengths(0, 5), "prompt_tokens must be an integer >= 1, got 0"),
        (lambda: LognormalLengths(prompt_cv=-1), "prompt_cv"),
        (lambda: LognormalLengths(max_output=0), "max_output must be an integer >= 1, got 0"),
        (lambda: EmpiricalLengths(np.array([1]), np.array([1, 2])), "equal, non-zero"),
    ],
)
def test_bad_generator_arguments(call, match):
    with pytest.raises(InvalidArgumentError, match=match):
        call()


# -- Workload ----------------------------------------------------------------------------


def test_scale_to_rate_keeps_shape():
    w = builtin_trace().head(2000)
    s = scale_to_rate(w, 12.5)
    assert s.mean_rate == pytest.approx(12.5)
    assert s.interarrival_cv == pytest.approx(w.interarrival_cv)
    assert np.array_equal(s.prompt_tokens, w.prompt_tokens)
    assert s.duration_s == pytest.approx(w.duration_s * w.mean_rate / 12.5)
    assert w.scale_time(2.0).mean_rate == pytest.approx(w.mean_rate / 2)


@settings(max_examples=50, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 100.0, allow_nan=False), min_size=1, max_size=50).filter(lambda g: sum(g) > 1e-6),
    rate=st.floats(1e-3, 1e4),
)
def test_scale_to_rate_hits_the_target(gaps, rate):
    t = np.concatenate([[0.0], np.cumsum(gaps)])
    w = Workload(t, np.ones(t.size, np.int64), np.ones(t.size, np.int64))
    assert w.scale_to_rate(rate).mean_rate == pytest.approx(rate, rel=1e-9)


def test_head_slice_iter_and_immutability():
    w = poisson(1.0, n=20, lengths=FixedLengths(5, 6), seed=0)
    assert len(w.head(5)) == 5 and len(w.head(100)) == 20 and len(w.head(0)) == 0
    assert w[-1] == list(w)[-1]
    assert len(w[::2]) == 10
    with pytest.raises(IndexError):
        w[20]
    with pytest.raises(ValueError):
        w.arrival_s[0] = 5.0
    src = np.array([0.0, 1.0])
    v = Workload(src, [1, 2], [3, 4])
    src[0] = 9.0
    assert v.arrival_s[0] == 0.0
    assert v.shift_to_zero() == v
    assert Workload([2.0, 3.0], [1, 1], [1, 1]).shift_to_zero().arrival_s.tolist() == [0.0, 1.0]
    assert v.clip_lengths(max_prompt=1, max_output=3).prompt_tokens.tolist() == [1, 1]
    assert "2 requests" in repr(v)


@pytest.mark.parametrize(
    "args, match",
    [
        (([0.0, 1.0], [1], [1, 1]), "same length, got 2, 1 and 2"),
        (([0.0, -1.0], [1, 1], [1, 1]), r"arrival_s\[1\] must be a finite number >= 0, got -1"),
        (([0.0, float("nan")], [1, 1], [1, 1]), r"arrival_s\[1\]"),
        (([2.0, 1.0], [1, 1], [1, 1]), r"non-decreasing: arrival_s\[1\] = 1 < arrival_s\[0\] = 2"),
        (([0.0, 1.0], [1, 0], [1, 1]), r"prompt_tokens\[1\] must be >= 1, got 0"),
        (([0.0, 1.0], [1, 1.5], [1, 1]), r"prompt_tokens\[1\] must be a whole number, got 1.5"),
        (([0.0, 1.0], [1, 1], [True, True]), "output_tokens must hold integers"),
        (([[0.0]], [1], [1]), "one-dimensional"),
    ],
)
def test_bad_workload(args, match):
    with pytest.raises(InvalidArgumentError, match=match):
        Workload(*args)


def test_workload_without_rate():
    one = Workload([1.0], [1], [1])
    with pytest.raises(InvalidArgumentError, match="no arrival rate: 1 request"):
        one.mean_rate
    with pytest.raises(InvalidArgumentError, match="no arrival rate"):
        Workload([1.0, 1.0], [1, 1], [1, 1]).scale_to_rate(3)
    assert np.isnan(one.summary()["mean_rate"])
    with pytest.raises(InvalidArgumentError, match="target_rate must be a finite number > 0, got -1"):
        builtin_trace().scale_to_rate(-1)
    with pytest.raises(InvalidArgumentError, match="scale_to_rate takes a Workload"):
        scale_to_rate([1, 2], 3)  # type: ignore[arg-type]


@pytest.mark.parametrize("cv", [1e-200, 1e-7, 1e200, 1e5])
def test_gamma_cv_whose_shape_over_or_underflows_is_refused_with_the_range(cv):
    """1 / cv^2 was 0 or inf for these: a ZeroDivisionError from the generator."""
    with pytest.raises(InvalidArgumentError, match=r"cv must be in \[1e-06, 10000\]"):
        gamma_bursty(1.0, cv, n=10)


def test_gamma_and_poisson_rates_whose_scale_is_not_finite_are_refused():
    with pytest.raises(InvalidArgumentError, match="gamma scale"):
        gamma_bursty(1e308, 1e-6, n=10)  # rate x shape overflows: every gap would be 0
    with pytest.raises(InvalidArgumentError, match="rate 5e-324 is too small"):
        poisson(5e-324, n=10)
    w = gamma_bursty(1.0, 1e-6, n=10)  # the ends of the range still work
    assert np.all(np.isfinite(w.arrival_s)) and w.duration_s > 0
    gamma_bursty(1.0, 1e4, n=10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt_mean=1e19), "prompt_mean must be at most MAX_TOKENS"),  # was int64 overflow: negative counts
        (dict(output_mean=1e300, max_output=None), "output_mean must be at most MAX_TOKENS"),
        (dict(prompt_cv=1e200), r"prompt_cv must be in \[0, 1e\+06\]"),
        (dict(max_prompt=10**12), "max_prompt must be in 1..MAX_TOKENS"),
    ],
)
def test_lognormal_lengths_beyond_max_tokens_are_refused(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        LognormalLengths(**kwargs)


def test_lognormal_draws_stay_within_max_tokens_without_a_cap():
    from capsched import MAX_TOKENS

    dist = LognormalLengths(prompt_mean=MAX_TOKENS, prompt_cv=1e3, output_mean=MAX_TOKENS, output_cv=1e3,
                            max_prompt=None, max_output=None)
    p, o = dist.sample(20_000, np.random.default_rng(0))
    for x in (p, o):
        assert x.dtype == np.int64
        assert x.min() >= 1 and x.max() == MAX_TOKENS  # the tail is clipped at the limit, not wrapped
