"""Chapter 1's checks accept right answers, reject wrong ones and say which case failed."""
import math

import pytest

from tutx.exercises import ch01


def kv_right(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem):
    return 2 * num_layers * num_kv_heads * head_dim * batch * seq_len * bytes_per_elem


def kv_forgets_values(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem):
    return num_layers * num_kv_heads * head_dim * batch * seq_len * bytes_per_elem


def batch_by_search(spec, hardware, dtype, context_len):
    b = 1
    while spec.decode_intensity(dtype, b, context_len) < hardware.ridge_point(dtype):
        b += 1
    return b


def batch_ignoring_kv(spec, hardware, dtype, context_len):
    """Right at context 0, where the model size cancels out; wrong once the KV cache is read."""
    return math.ceil(hardware.ridge_point(dtype) * {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}[dtype] / 2)


def test_wrong_kv_cache_names_the_case_expected_and_got():
    with pytest.raises(AssertionError) as err:
        ch01.check_kv_cache_bytes(kv_forgets_values)
    msg = str(err.value)
    assert "case 1/5 fn(32, 8, 128, 1, 8192, 2)" in msg
    assert "returned 536870912" in msg and "expected 1073741824" in msg


def test_wrong_decode_ceiling_fails():
    with pytest.raises(AssertionError, match="check_decode_ceiling: case 1/5"):
        ch01.check_decode_ceiling(lambda param_bytes, bandwidth: param_bytes / bandwidth)
    with pytest.raises(AssertionError, match="returned '1'"):
        ch01.check_decode_ceiling(lambda param_bytes, bandwidth: "1")


def test_memory_bound_batch_catches_forgetting_the_kv_cache():
    with pytest.raises(AssertionError, match=r"case 5/6 .*'bf16', 128\) returned 296, expected 438"):
        ch01.check_memory_bound_batch(batch_ignoring_kv)


# ---- the build-it exercise: a parameter counter, checked on hidden random configs ----------------
def count_without_bias(config):
    """Right on every real model of the check, wrong once a hidden config has attention biases."""
    return ch01._solution_param_count({**config, "attention_bias": False})


def count_assuming_head_dim(config):
    """Forgets that head_dim may be given explicitly."""
    return ch01._solution_param_count({k: v for k, v in config.items() if k != "head_dim"}
                                      | {"head_dim": config["hidden_size"] // config["num_attention_heads"]})


def test_param_count_reference_matches_transformers_on_the_hidden_configs():
    import random

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tutx.scaling import ModelSpec

    rng = random.Random(7)
    for k in range(60):
        cfg = ch01._random_llama_config(rng)
        assert ch01._solution_param_count(cfg) == ModelSpec.from_config(cfg).n_params, cfg
        if k < 6:  # a few on the meta device too (ModelSpec is checked against it family by family)
            small = {**cfg, "vocab_size": 1000, "num_hidden_layers": 2}
            hf = AutoConfig.for_model("llama", **{k2: v for k2, v in small.items() if k2 != "model_type"})
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(hf)
            assert ch01._solution_param_count(small) == sum(p.numel() for p in model.parameters()), small


@pytest.mark.parametrize("wrong", [count_without_bias, count_assuming_head_dim, ch01._wrong_param_count])
def test_param_count_catches_mistakes_only_the_hidden_cases_show(wrong, capsys):
    with pytest.raises(AssertionError, match=r"check_param_count: case \d+/28"):
        ch01.check_param_count(wrong)


def test_public_names_are_the_checks_only():
    assert ch01.__all__ == ["check_kv_cache_bytes", "check_decode_ceiling", "check_memory_bound_batch",
                            "check_param_count"]
    assert set(ch01.CONTRACT) == set(ch01.__all__)
