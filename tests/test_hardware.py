"""The hardware table carries the datasheet's dense numbers, and the roofline is a min()."""
import numpy as np
import pytest

from tutx.hardware import ACCELERATORS, HARDWARE, Hardware, get_hardware


def test_table_has_the_course_gpus_and_a_cpu():
    assert set(HARDWARE) == {"T4", "L4", "A100-40GB", "A100-80GB", "H100-SXM", "H200", "laptop-cpu"}
    for hw in HARDWARE.values():
        assert hw.source and hw.memory_bytes > 0 and hw.memory_bandwidth > 0


@pytest.mark.parametrize(
    "name, dtype, flops, bandwidth, memory",
    [
        ("H100-SXM", "bf16", 989.4e12, 3.35e12, 80e9),
        ("H200", "bf16", 989.4e12, 4.8e12, 141e9),
        ("A100-40GB", "bf16", 312e12, 1555e9, 40e9),
        ("A100-80GB", "bf16", 312e12, 2039e9, 80e9),
        ("L4", "bf16", 121e12, 300e9, 24e9),
        ("L4", "fp16", 121e12, 300e9, 24e9),
        ("T4", "fp16", 65e12, 320e9, 16e9),
    ],
)
def test_datasheet_numbers_are_dense(name, dtype, flops, bandwidth, memory):
    hw = HARDWARE[name]
    assert hw.peak(dtype) == pytest.approx(flops)
    assert hw.memory_bandwidth == pytest.approx(bandwidth)
    assert hw.memory_bytes == pytest.approx(memory)


def test_t4_has_no_bf16_and_says_what_it_has():
    with pytest.raises(ValueError, match=r"dtype='bf16'.*T4.*fp16"):
        HARDWARE["T4"].peak("bf16")


@pytest.mark.parametrize(
    "name, dtype, ridge",
    [("H100-SXM", "bf16", 295.343), ("A100-40GB", "bf16", 200.643), ("T4", "fp16", 203.125),
     ("H200", "bf16", 206.125), ("L4", "fp8", 808.333)],
)
def test_ridge_points(name, dtype, ridge):
    assert HARDWARE[name].ridge_point(dtype) == pytest.approx(ridge, rel=1e-4)


def test_roofline_is_memory_then_compute_bound():
    hw = HARDWARE["H100-SXM"]
    ridge = hw.ridge_point("bf16")
    assert hw.attainable_flops(1.0) == pytest.approx(3.35e12)  # batch-1 decode, bf16
    assert hw.attainable_flops(ridge / 2) == pytest.approx(hw.peak("bf16") / 2)
    assert hw.attainable_flops(ridge) == pytest.approx(hw.peak("bf16"))
    assert hw.attainable_flops(10 * ridge) == hw.peak("bf16")
    assert hw.attainable_flops(0) == 0
    curve = hw.attainable_flops(np.array([1.0, ridge, 1e4]), "bf16")
    np.testing.assert_allclose(curve, [3.35e12, 989.4e12, 989.4e12])


@pytest.mark.parametrize("bad", [-1.0, float("nan"), np.array([1.0, -2.0])])
def test_roofline_rejects_negative_intensity(bad):
    with pytest.raises(ValueError, match="intensity"):
        HARDWARE["A100-80GB"].attainable_flops(bad)


def test_get_hardware_ignores_case_and_lists_names_when_unknown():
    assert get_hardware("h100-sxm") is HARDWARE["H100-SXM"]
    assert get_hardware("LAPTOP-CPU") is HARDWARE["laptop-cpu"]
    assert get_hardware(HARDWARE["T4"]) is HARDWARE["T4"]
    with pytest.raises(ValueError, match=r"name='B200'.*H100-SXM.*laptop-cpu"):
        get_hardware("B200")
    with pytest.raises(TypeError, match="name"):
        get_hardware(100)


def _hw(**kw):
    args = dict(name="X", peak_flops={"bf16": 1e12}, memory_bandwidth=1e11, memory_bytes=1e9, source="test")
    args.update(kw)
    return Hardware(**args)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(name=""), "name"),
        (dict(peak_flops={}), "peak_flops"),
        (dict(peak_flops={"bf17": 1e12}), "bf17"),
        (dict(peak_flops={"bf16": -1.0}), r"peak_flops\['bf16'\]"),
        (dict(memory_bandwidth=0), "memory_bandwidth: expected a number > 0, got 0"),
        (dict(memory_bytes=-5), "memory_bytes: expected a number > 0, got -5"),
        (dict(source=""), "source"),
    ],
)
def test_hardware_validates_its_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        _hw(**kw)


def test_hardware_is_frozen_and_its_table_read_only():
    hw = _hw()
    with pytest.raises(TypeError):
        hw.peak_flops["fp32"] = 1.0
    with pytest.raises(AttributeError):
        hw.memory_bandwidth = 1.0
    assert "X" in repr(hw) and "TFLOP/s" in repr(hw)


# ---- Chapter 5: accelerators beyond the GPU ----------------------------------------------------

def test_accelerators_are_kept_apart_from_the_course_gpus_and_sourced():
    assert set(ACCELERATORS) == {"TPU-v5e", "TPU-v5p", "TPU-v6e", "Trainium", "Trainium2", "Inferentia2",
                                 "Gaudi2", "Gaudi3", "M1-Ultra"}
    assert not set(ACCELERATORS) & set(HARDWARE)
    for hw in ACCELERATORS.values():
        assert hw.source and hw.memory_bandwidth > 0 and hw.memory_bytes > 0
        assert "bf16" in hw.peak_flops or "fp16" in hw.peak_flops


@pytest.mark.parametrize(
    "name, dtype, flops, bandwidth, memory",
    [
        ("TPU-v5e", "bf16", 197e12, 819e9, 16e9),
        ("TPU-v5p", "bf16", 459e12, 2765e9, 95e9),
        ("TPU-v6e", "bf16", 918e12, 1640e9, 32e9),
        ("Trainium", "bf16", 190e12, 820e9, 32e9),
        ("Trainium2", "bf16", 667e12, 2.9e12, 96e9),
        ("Inferentia2", "bf16", 190e12, 820e9, 32e9),
        ("Gaudi2", "bf16", 432e12, 2.45e12, 96e9),
        ("Gaudi3", "bf16", 1835e12, 3.7e12, 128e9),
        ("M1-Ultra", "fp16", 21e12, 800e9, 128e9),
    ],
)
def test_accelerator_datasheet_numbers(name, dtype, flops, bandwidth, memory):
    hw = get_hardware(name.lower())  # found by get_hardware, ignoring case
    assert hw is ACCELERATORS[name]
    assert hw.peak(dtype) == pytest.approx(flops)
    assert hw.memory_bandwidth == pytest.approx(bandwidth)
    assert hw.memory_bytes == pytest.approx(memory)


def test_accelerator_ridge_points_and_decode_ceiling():
    from tutx.configs import get_spec
    from tutx.scaling import decode_ceiling

    assert ACCELERATORS["TPU-v5e"].ridge_point("bf16") == pytest.approx(197e12 / 819e9)
    assert ACCELERATORS["M1-Ultra"].ridge_point("fp16") == pytest.approx(26.25)
    with pytest.raises(ValueError, match=r"dtype='bf16'.*M1-Ultra.*fp16"):
        ACCELERATORS["M1-Ultra"].peak("bf16")
    spec = get_spec("Llama-3.1-8B")
    # batch-1 decode is memory-bound everywhere: the ceiling is bandwidth / bytes per token
    for hw in ACCELERATORS.values():
        dtype = "bf16" if "bf16" in hw.peak_flops else "fp16"
        assert decode_ceiling(spec, hw, dtype) == pytest.approx(
            hw.memory_bandwidth / spec.decode_bytes_per_token(dtype))


def test_unknown_name_lists_the_accelerators_too():
    with pytest.raises(ValueError, match=r"name='TPU-v4'.*H200.*TPU-v5e.*M1-Ultra"):
        get_hardware("TPU-v4")
