"""The simulator's GPU cost model: validation against Vidur's figures, physics, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from capsched.errors import ConfigError, InvalidArgumentError
from capsched.sim.cost import (
    LLAMA2_7B,
    LLAMA3_8B,
    CostModel,
    ModelSpec,
    default_attention_efficiency,
    model_spec,
    validate_against_vidur,
    validation_table_markdown,
)
from capsched.specs import UnknownAcceleratorError, kv_cache_tokens, lookup

SHARED_VIDUR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpu" / "vidur"
EMBEDDED_VIDUR = Path(__file__).resolve().parents[1] / "python" / "capsched" / "sim" / "data" / "vidur_llama2_7b_cost_examples.csv"


# -- validation --------------------------------------------------------------------------


def test_every_vidur_point_within_ten_percent():
    rows = validate_against_vidur()
    assert len(rows) == 14 * 3
    assert {r.gpu for r in rows} == {"a100", "h100", "a40"}
    worst = max(rows, key=lambda r: abs(r.error))
    assert abs(worst.error) <= 0.10, validation_table_markdown(rows)
    for r in rows:
        assert math.isclose(r.error, r.model_ms / r.measured_ms - 1.0)


def test_vidur_examples_from_the_readme():
    rows = {(r.what, r.gpu): r for r in validate_against_vidur()}
    assert rows[("prefill P=2048 (ms)", "a100")].measured_ms == 157.2
    assert rows[("decode step B=32 C=1024 (ms)", "a40")].measured_ms == 56.1
    # per-token rows are converted to ms per token
    assert rows[("prefill s/token at P=512 (us/token)", "h100")].measured_ms == pytest.approx(0.0277)


@pytest.mark.skipif(not (SHARED_VIDUR / "derived_llama2_7b_cost_examples.csv").is_file(), reason="no ../shared/data")
def test_embedded_copy_matches_shared_data():
    shared = SHARED_VIDUR / "derived_llama2_7b_cost_examples.csv"
    assert shared.read_bytes() == EMBEDDED_VIDUR.read_bytes()
    assert validate_against_vidur(shared) == validate_against_vidur()


def test_markdown_table_lists_every_point():
    rows = validate_against_vidur()
    table = validation_table_markdown(rows)
    assert table.count("\n| ") == len(rows)
    assert "Largest error" in table


def test_hard_roofline_is_worse_but_documented_choice_is_not():
    hard = validate_against_vidur(roofline_exponent=math.inf)
    smooth = validate_against_vidur()
    assert max(abs(r.error) for r in hard) > max(abs(r.error) for r in smooth)


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "header"),
        ("gpu,a100\nx,1\n", "header"),
        ("what,b200\nprefill P=1 (ms),1\n", "no GPU column"),
        ("what,a100\nprefill P=128 (ms),abc\n", ":2: column 'a100' is not a number"),
        ("what,a100\nprefill P=128 (ms),1\nwarmup (ms),2\n", ":3: unrecognised point 'warmup"),
        ("what,a100\nprefill P=128 (ms),1,2\n", ":2: 3 fields"),
    ],
)
def test_malformed_validation_file(tmp_path, text, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        validate_against_vidur(p)


# -- physics -----------------------------------------------------------------------------

FLEET = ["H100-SXM", "A100-SXM-80GB", "A40", "L4"]


def test_faster_cards_are_faster():
    times = [CostModel(g).service_time(1155, 211) for g in FLEET]
    assert times == sorted(times)
    prefill = [CostModel(g).prefill_time(2048) for g in FLEET]
    assert prefill == sorted(prefill)


def test_prefill_is_compute_bound_and_decode_memory_bound():
    cm = CostModel("A100-SXM-80GB")
    # long prefill: close to 2 x params x tokens at mfu (plus attention and overhead)
    linear = 2 * LLAMA2_7B.params * 4096 / (312e12 * cm.mfu)
    assert linear < cm.prefill_time(4096) < 1.5 * linear
    # batch-1 decode: close to reading the weights once
    weights = LLAMA2_7B.weight_bytes / (2039e9 * cm.bandwidth_efficiency)
    assert weights < cm.decode_step_time(1, 1) < weights + 2 * cm.step_overhead_s
    # decode grows with the KV cache read: 64 x 2048 tokens x 0.5 MiB at the same bandwidth
    extra = cm.decode_step_time(64, 2048) - cm.decode_step_time(64, 0)
    assert extra == pytest.approx(64 * 2048 * LLAMA2_7B.kv_bytes_per_token / cm.effective_bandwidth, rel=0.05)


def test_clock_scale_slows_compute_not_memory():
    full = CostModel("H100-SXM")
    half = full.with_clock_scale(0.5)
    assert half.clock_scale == 0.5 and full.clock_scale == 1.0
    assert half.prefill_time(4096) / full.prefill_time(4096) == pytest.approx(2.0, rel=0.05)
    assert half.decode_step_time(1, 512) / full.decode_step_time(1, 512) < 1.05


def test_gqa_model_has_a_smaller_kv_cache():
    assert LLAMA2_7B.kv_bytes_per_token == 524288
    assert LLAMA3_8B.kv_bytes_per_token == 131072
    a, b = CostModel("A100-SXM-80GB", LLAMA2_7B), CostModel("A100-SXM-80GB", LLAMA3_8B)
    assert b.kv_tokens() > 3 * a.kv_tokens()
    long_ctx = (b.decode_step_time(64, 4096) - b.decode_step_time(64, 0)) / (
        a.decode_step_time(64, 4096) - a.decode_step_time(64, 0)
    )
    assert long_ctx < 0.5


def test_kv_tokens_uses_the_spec_formula():
    for g in FLEET:
        cm = CostModel(g)
        spec = lookup(g)
        assert cm.kv_tokens() == kv_cache_tokens(spec.memory_gib, LLAMA2_7B.weights_gib, 524288, 0.1)
        assert cm.kv_tokens(reserve_fraction=0.0) > cm.kv_tokens()
    assert CostModel("L4").kv_tokens() == 18533


def test_weights_that_do_not_fit():
    big = ModelSpec("70B", 70e9, 80, 8192, 8, 128)
    with pytest.raises(ConfigError, match="do not fit"):
        CostModel("L4", big).kv_tokens()


def test_attention_efficiency_by_generation():
    assert default_attention_efficiency(lookup("H100-SXM")) == 0.08
    assert default_attention_efficiency(lookup("H200")) == 0.08
    assert default_attention_efficiency(lookup("A100-SXM-80GB")) == 0.16
    assert default_attention_efficiency(lookup("L4")) == 0.16
    assert CostModel("A40", attention_efficiency=0.5).attention_efficiency == 0.5


def test_service_time_closed_form_matches_the_sum():
    cm = CostModel("A40", LLAMA3_8B)
    p, o = 700, 90
    explicit = cm.prefill_time(p) + sum(cm.decode_step_time(1, p + i) for i in range(1, o))
    assert cm.service_time(p, o) == pytest.approx(explicit, rel=1e-9)
    assert cm.service_time(p, 1) == pytest.approx(cm.prefill_time(p))


def test_arrays_give_the_scalar_results():
    cm = CostModel("H100-SXM")
    p = np.array([1, 100, 4000])
    o = np.array([1, 50, 700])
    out = cm.service_time(p, o)
    assert isinstance(out, np.ndarray) and out.shape == (3,)
    assert out.tolist() == pytest.approx([cm.service_time(int(a), int(b)) for a, b in zip(p, o)])
    assert isinstance(cm.service_time(10, 10), float)
    # numpy scalars take the array path, plain ints the fast scalar path: same numbers
    assert cm.prefill_time(np.int64(777), np.int64(3)) == pytest.approx(cm.prefill_time(777, 3), rel=1e-12)
    assert cm.decode_step_time(np.int64(9), np.float64(55.5)) == pytest.approx(cm.decode_step_time(9, 55.5), rel=1e-12)
    assert cm.decode_step_time(np.array([1, 8]), 100.5).tolist() == pytest.approx(
        [cm.decode_step_time(1, 100.5), cm.decode_step_time(8, 100.5)]
    )


def test_step_time_combines_prefill_and_decode():
    cm = CostModel("A100-SXM-80GB")
    assert cm.step_time() == 0.0
    assert cm.step_time([512]) == pytest.approx(cm.prefill_time(512))
    assert cm.step_time(decode_batch=16, decode_context_tokens=900) == pytest.approx(cm.decode_step_time(16, 900))
    mixed = cm.step_time([512, 256], decode_batch=16, decode_context_tokens=900)
    assert cm.prefill_time(512) < mixed < cm.prefill_time(512) + cm.prefill_time(256) + cm.decode_step_time(16, 900)
    # a chunk after cached tokens attends to them too
    assert cm.step_time([512], prefill_cached_tokens=[4096]) > cm.step_time([512])


def test_replace_and_repr():
    cm = CostModel("L4", "llama3-8b", mfu=0.5)
    assert cm.model is LLAMA3_8B and cm.spec.name == "L4"
    assert cm.replace(mfu=0.6).mfu == 0.6 and cm.mfu == 0.5
    assert "L4" in repr(cm) and "mfu=0.5" in repr(cm)
    with pytest.raises(ConfigError, match="unknown CostModel parameter"):
        cm.replace(speed=2)
    assert model_spec("Llama-2-7B") is LLAMA2_7B


@settings(max_examples=60, deadline=None)
@given(
    gpu=st.sampled_from(FLEET),
    p=st.integers(1, 32_000),
    o=st.integers(1, 4_000),
    b=st.integers(1, 256),
)
def test_monotone_in_every_count(gpu, p, o, b):
    cm = CostModel(gpu)
    assert cm.prefill_time(p + 1, b) > cm.prefill_time(p, b) > 0
    assert cm.prefill_time(p, b + 1) > cm.prefill_time(p, b)
    assert cm.decode_step_time(b + 1, p) > cm.decode_step_time(b, p) > cm.step_overhead_s
    assert cm.decode_step_time(b, p + 1) > cm.decode_step_time(b, p)
    assert cm.service_time(p, o + 1) > cm.service_time(p, o)
    # batching amortises: b requests together take less than b requests one after another
    assert cm.service_time(p, o, b) <= b * cm.service_time(p, o) + 1e-12


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mfu": 0}, r"mfu must be a finite number in \(0, 1\], got 0"),
        ({"mfu": 1.5}, "got 1.5"),
        ({"bandwidth_efficiency": float("nan")}, "bandwidth_efficiency"),
        ({"attention_efficiency": "high"}, "attention_efficiency must be a number, got 'high'"),
        ({"step_overhead_s": -1}, "step_overhead_s must be a finite number >= 0, got -1"),
        ({"roofline_exponent": 0.5}, "roofline_exponent must be a number >= 1"),
        ({"clock_scale": 0}, "clock_scale"),
        ({"clock_scale": True}, "clock_scale must be a number, got True"),
    ],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        CostModel("A100-SXM-80GB", **kwargs)


def test_bad_accelerator_and_model():
    with pytest.raises(UnknownAcceleratorError, match="H100"):
        CostModel("H1000")
    with pytest.raises(ConfigError, match="accelerator must be"):
        CostModel(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown model 'gpt-5'"):
        CostModel("L4", "gpt-5")
    with pytest.raises(ConfigError, match="ModelSpec.layers must be an integer >= 1, got 0"):
        ModelSpec("x", 1e9, 0, 4096, 32, 128)
    with pytest.raises(ConfigError, match="ModelSpec.params"):
        ModelSpec("x", -1, 32, 4096, 32, 128)
    with pytest.raises(ConfigError, match="exceeds hidden"):
        ModelSpec("x", 1e9, 32, 1024, 32, 128)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda cm: cm.prefill_time(0), "prompt_tokens must be an integer >= 1, got 0"),
        (lambda cm: cm.prefill_time(1.5), "got 1.5"),
        (lambda cm: cm.prefill_time(True), "prompt_tokens must be an integer >= 1, got True"),
        (lambda cm: cm.prefill_time("12"), "got '12'"),
        (lambda cm: cm.prefill_time(100, batch=0), "batch must be an integer >= 1, got 0"),
        (lambda cm: cm.decode_step_time(4, -1), "context_tokens must be a finite number >= 0, got -1"),
        (lambda cm: cm.decode_step_time(4, float("inf")), "context_tokens"),
        (lambda cm: cm.service_time([10, 20, -3], 5), r"prompt_tokens\[2\] must be an integer >= 1, got -3"),
        (lambda cm: cm.service_time(10, 0), "output_tokens must be an integer >= 1, got 0"),
        (lambda cm: cm.step_time([10], prefill_cached_tokens=[1, 2]), "2 entries"),
        (lambda cm: cm.step_time([0]), r"prefill_tokens\[0\]"),
    ],
)
def test_bad_counts(call, match):
    with pytest.raises(InvalidArgumentError, match=match):
        call(CostModel("A40"))


def test_report_and_docs_carry_the_generated_tables():
    import io

    from capsched.sim.report import main

    buf = io.StringIO()
    assert main(out=buf) == 0
    text = buf.getvalue()
    assert "Largest error" in text and "| L4 |" in text
    doc = Path(__file__).resolve().parents[1] / "docs" / "simulator.md"
    assert validation_table_markdown(validate_against_vidur()) in doc.read_text(encoding="utf-8"), (
        "docs/simulator.md is out of date: paste the output of python -m capsched.sim.report"
    )
