"""tutx.cpu: exported graphs match PyTorch (tiny LM with KV cache, MiniLM), INT8 stays close, errors are clear.

The real models are exported once per module with the TorchScript exporter (about 5x faster to
export than dynamo; both give the same graph outputs). The dynamo exporter (the default, ~9 s for
one trace) is tested on a one-layer Llama, and on the real models by the recorded run of
``scripts/bench_cpu_inference.py``, whose ``cpu_export`` rows the last test checks.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from tutx.cpu import (HIDDEN_ATOL, INT8_MIN_COSINE, LOGITS_ATOL, OnnxExportError, OrtCausalLM, OrtEncoder,  # noqa: E402
                      compare_causal_lm, compare_encoder, cosine_similarity, export_causal_lm, export_encoder,
                      make_session, quantize_onnx_int8, torch_dynamic_int8)
from tutx.models import heldout_text, load_minilm, load_tiny  # noqa: E402

SENTENCES = ["To be, or not to be, that is the question.", "Stocks fell sharply on Monday.", "hi"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model, tok = load_tiny()
    path = export_causal_lm(model, tmp_path_factory.mktemp("tiny") / "tiny.onnx", exporter="torchscript")
    int8 = quantize_onnx_int8(path, path.with_suffix(".int8.onnx"))
    return model, tok, path, int8


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    model, tok = load_minilm()
    path = export_encoder(model, tmp_path_factory.mktemp("minilm") / "minilm.onnx", exporter="torchscript")
    return model, tok, path, quantize_onnx_int8(path, path.with_suffix(".int8.onnx"))


def _prompts(tok, batch, length, offset=0):
    ids = tok.encode(heldout_text()[:4000])
    return torch.tensor([ids[offset + 50 * i: offset + 50 * i + length] for i in range(batch)])


def test_tiny_lm_logits_and_greedy_tokens_match_pytorch(tiny):
    model, tok, path, _ = tiny
    got = compare_causal_lm(model, OrtCausalLM(path, threads=1), _prompts(tok, 2, 11), max_new_tokens=24)
    assert got["prefill_max_abs"] <= LOGITS_ATOL
    assert got["decode_max_abs"] <= LOGITS_ATOL
    assert got["tokens_equal"], got


def test_tiny_lm_graph_has_dynamic_axes_and_the_cache_as_inputs_and_outputs(tiny):
    model, tok, path, _ = tiny
    session = make_session(path, threads=1)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    assert [i.name for i in inputs][:3] == ["input_ids", "past_key_0", "past_value_0"]
    assert len(inputs) == 1 + 2 * model.config.num_hidden_layers
    assert [o.name for o in outputs][:2] == ["logits", "present_key_0"]
    assert all(isinstance(d, str) for d in inputs[0].shape)  # batch and seq are symbolic
    assert isinstance(inputs[1].shape[0], str) and isinstance(inputs[1].shape[2], str)  # batch, past
    assert inputs[1].shape[1] == model.config.num_key_value_heads


def test_prefill_then_decode_through_the_cache_equals_one_full_pass(tiny):
    _, tok, path, _ = tiny
    lm = OrtCausalLM(path, threads=1)
    ids = _prompts(tok, 3, 9, offset=7).numpy()  # batch 3: not the export's example batch
    full, _ = lm.forward(ids)
    part, past = lm.forward(ids[:, :5])  # past 0 -> 5
    assert past[0].shape == (3, lm.kv_heads, 5, lm.head_dim)
    rest = []
    for t in range(5, 9):  # one token at a time
        logits, past = lm.forward(ids[:, t:t + 1], past)
        rest.append(logits)
    stitched = np.concatenate([part, *rest], axis=1)
    assert np.abs(stitched - full).max() <= LOGITS_ATOL


def test_int8_tiny_lm_is_smaller_and_close(tiny):
    model, tok, path, int8 = tiny
    assert int8.stat().st_size < 0.5 * path.stat().st_size
    ids = _prompts(tok, 2, 16)
    ref, _ = OrtCausalLM(path, threads=1).forward(ids)
    got, _ = OrtCausalLM(int8, threads=1).forward(ids)
    assert float(cosine_similarity(got.reshape(-1, got.shape[-1]), ref.reshape(-1, ref.shape[-1])).min()) > 0.95
    assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.8


def test_torch_dynamic_int8_copy_leaves_the_model_fp32(tiny):
    model = tiny[0]
    q = torch_dynamic_int8(model)
    assert isinstance(model.model.layers[0].mlp.up_proj, torch.nn.Linear)
    assert "quantized.dynamic" in type(q.model.layers[0].mlp.up_proj).__module__
    assert "per_channel" in str(q.model.layers[0].mlp.up_proj.weight().qscheme())


def test_minilm_matches_pytorch_and_int8_keeps_the_embeddings(minilm):
    model, tok, path, int8 = minilm
    fp32 = compare_encoder(model, OrtEncoder(path, threads=1), tok, SENTENCES)
    assert fp32["hidden_max_abs"] <= HIDDEN_ATOL
    assert fp32["min_cosine"] > 0.9999
    assert compare_encoder(model, OrtEncoder(int8, threads=1), tok, SENTENCES)["min_cosine"] >= INT8_MIN_COSINE


def test_dynamo_exporter_on_a_small_llama_with_cache(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    path = export_causal_lm(model, tmp_path / "llama.onnx")  # dynamo is the default
    ids = torch.randint(0, 97, (1, 6))  # batch 1: the export example had batch 2
    got = compare_causal_lm(model, OrtCausalLM(path, threads=1), ids, max_new_tokens=8)
    assert got["prefill_max_abs"] <= LOGITS_ATOL and got["decode_max_abs"] <= LOGITS_ATOL
    assert got["tokens_equal"]


# ---- errors ------------------------------------------------------------------------------------

class _Histc(torch.nn.Module):
    """An "encoder" whose forward uses aten::histc, which has no ONNX translation."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.config = types.SimpleNamespace(hidden_size=4, max_position_embeddings=16, vocab_size=10,
                                            _name_or_path="histc-encoder")

    def forward(self, input_ids, attention_mask, token_type_ids):
        h = self.emb(input_ids)
        return types.SimpleNamespace(last_hidden_state=torch.histc(h, bins=4).expand(*h.shape[:2], 4))


def test_unsupported_op_gives_an_export_error_naming_the_model(tmp_path):
    with pytest.raises(OnnxExportError, match=r"_Histc \(histc-encoder\).*'torchscript'.*histc"):
        export_encoder(_Histc(), tmp_path / "bad.onnx", exporter="torchscript")


def test_bad_arguments(tiny, tmp_path):
    model, _, path, _ = tiny
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        export_causal_lm("tiny", tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="model:.*lacks"):
        export_causal_lm(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="exporter: expected one of"):
        export_causal_lm(model, tmp_path / "x.onnx", exporter="onnx")
    for bad, err in ((0, ValueError), (10_000, ValueError), (True, TypeError), (1.5, TypeError)):
        with pytest.raises(err, match="threads"):
            make_session(path, threads=bad)
    with pytest.raises(ValueError, match="optimization"):
        make_session(path, optimization="max")
    with pytest.raises(FileNotFoundError, match="path"):
        make_session(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="src"):
        quantize_onnx_int8(tmp_path / "missing.onnx", tmp_path / "q.onnx")
    with pytest.raises(TypeError, match="model"):
        torch_dynamic_int8("tiny")
    lm = OrtCausalLM(path, threads=1)
    with pytest.raises(ValueError, match="input_ids"):
        lm.forward(np.zeros((2, 3, 4), np.int64))
    with pytest.raises(ValueError, match="max_new_tokens"):
        lm.generate([[1, 2]], 0)
    with pytest.raises(ValueError, match="past: expected"):
        lm.forward([[1]], past=[])


def test_wrong_model_kind_for_the_runner(tiny, minilm):
    with pytest.raises(ValueError, match="expected a causal LM exported with its KV cache"):
        OrtCausalLM(minilm[2], threads=1)
    with pytest.raises(ValueError, match="expected an encoder"):
        OrtEncoder(tiny[2], threads=1)
    with pytest.raises(TypeError, match="model: expected a path"):
        OrtEncoder(42)


def test_missing_onnxruntime_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ImportError, match=r'pip install "tutx\[cpu\]"'):
        make_session(tmp_path / "x.onnx")


# ---- measurement ------------------------------------------------------------------------------

def test_measure_cpu_inference_gives_rows_for_both_models(tiny, minilm):
    from tutx.cpu import measure_cpu_inference

    paths = {"tiny_lm": tiny[2], "tiny_lm_int8": tiny[3], "minilm": minilm[2], "minilm_int8": minilm[3]}
    got = measure_cpu_inference(paths, threads=1, rounds=1, seq=8, decode_prompt=4, decode_tokens=2,
                                minilm_batch=1, minilm_seq=8, backends=("pytorch_eager", "ort_fp32"))
    assert [r["backend"] for r in got["cpu_tiny_lm"]] == ["pytorch_eager", "ort_fp32"]
    eager, ort = got["cpu_tiny_lm"]
    assert eager["forward_speedup"] == 1.0 and ort["forward_ms"] > 0 and ort["decode_tok_s"] > 0
    assert ort["max_abs_logit_diff"] <= LOGITS_ATOL and ort["greedy_tokens_agree"] == 1.0
    assert [r["backend"] for r in got["cpu_minilm"]] == ["pytorch_eager", "ort_fp32"]
    assert got["cpu_minilm"][1]["min_cosine"] > 0.9999 and got["errors"] == {}
    with pytest.raises(ValueError, match="backends"):
        measure_cpu_inference(paths, backends=("tensorrt",))
    with pytest.raises(ValueError, match="paths"):
        measure_cpu_inference({"tiny_lm": tiny[2]})


def test_recorded_results_have_every_backend_and_match_pytorch():
    from tutx.bench import latest
    from tutx.cpu import BACKENDS

    lm, enc = latest("cpu_tiny_lm"), latest("cpu_minilm")
    if lm is None or enc is None:
        pytest.skip("no cpu_inference-*.json recorded yet (scripts/bench_cpu_inference.py)")
    for measured in (lm, enc):
        assert {"device", "threads", "torch", "onnxruntime", "date", "command"} <= set(measured.environment)
        assert {r["backend"] for r in measured.rows} <= set(BACKENDS)
    ort = [r for r in lm.rows if r["backend"] == "ort_fp32"]
    assert ort and all(r["max_abs_logit_diff"] <= LOGITS_ATOL and r["greedy_tokens_agree"] == 1.0 for r in ort)
    exports = {(r["model"], r["exporter"]): r for r in latest("cpu_export").rows}
    for exporter in ("dynamo", "torchscript"):  # the recorded run checked both exporters against PyTorch
        lm_row, enc_row = exports[("tiny_lm", exporter)], exports[("minilm", exporter)]
        assert lm_row["prefill_max_abs"] <= LOGITS_ATOL and lm_row["decode_max_abs"] <= LOGITS_ATOL
        assert lm_row["tokens_equal"] and enc_row["hidden_max_abs"] <= HIDDEN_ATOL
