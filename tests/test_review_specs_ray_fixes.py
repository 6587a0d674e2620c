"""Regression tests for review findings in specs, the Ray router and tracing."""
import pytest

import capsched
from capsched.specs import UnknownAcceleratorError, lookup


@pytest.mark.parametrize("name", ["NVIDIA A100 80GB", "NVIDIA L40 48GB", "A1000 8GB", "A1080GB"])
def test_lookup_does_not_read_model_digits_as_a_memory_size(name):
    # "a10" + "080gb" used to match the A10 row; "l4" + "048gb" the L4 row.
    with pytest.raises(UnknownAcceleratorError):
        lookup(name)


def test_lookup_ambiguous_a100_80gb_suggests_both_rows():
    with pytest.raises(UnknownAcceleratorError) as info:
        lookup("NVIDIA A100 80GB")
    assert "A100-SXM-80GB" in info.value.suggestions and "A100-PCIe" in info.value.suggestions


@pytest.mark.parametrize("name, expected", [("NVIDIA L4 24GB", "L4"), ("A10 24GB", "A10"),
                                            ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "A100-40GB")])
def test_lookup_separate_decorations_still_match(name, expected):
    assert lookup(name).name == expected


def test_device_model_a100_80gb_is_not_an_a10():
    with pytest.raises(capsched.ConfigError, match="A100 80GB"):
        capsched.Device("g", model="A100 80GB")
