"""TutxLlama on the tiny LM: same logits and same greedy tokens as Hugging Face, with a GQA-sized cache."""
import pytest
import torch

from tutx.attention import KVCache, TutxLlama
from tutx.models import load_tiny
from tutx.scaling import ModelSpec, kv_cache_bytes

PROMPTS = ["ROMEO:\nO", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "KING HENRY:\nOnce more unto the breach"]


@pytest.fixture(autouse=True)
def reference_kernels(monkeypatch):
    """On CPU run the kernels' PyTorch references: the interpreter would take minutes here
    (``tests/attention/test_gqa.py`` runs the kernel path itself)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture(scope="module")
def tiny():
    hf, tok = load_tiny()
    return hf, tok, TutxLlama.from_hf(hf)


def ids_of(tok, text):
    return tok(text, return_tensors="pt").input_ids  # [1, S]


def hf_generate(hf, ids, n):
    return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                       eos_token_id=hf.config.eos_token_id, pad_token_id=hf.config.eos_token_id)


def test_shares_the_hf_weights(tiny):
    hf, _, model = tiny
    ours = {p.data_ptr() for p in model.parameters()}
    theirs = {p.data_ptr() for p in hf.parameters()}
    assert ours == theirs  # nothing copied, nothing new
    assert model.layers[0].self_attn.q_proj is hf.model.layers[0].self_attn.q_proj
    assert model.layers[2].mlp is hf.model.layers[2].mlp and model.lm_head is hf.lm_head


def test_prefill_logits_match_hf(tiny):
    hf, tok, model = tiny
    ids = ids_of(tok, PROMPTS[1])
    with torch.no_grad():
        expected = hf(ids).logits
        cache = model.new_cache(1, 64)
        torch.testing.assert_close(model(ids, cache), expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(model(ids), expected, rtol=0, atol=1e-4)  # no cache
    assert cache.seq_len == ids.shape[1]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_generation_matches_hf_token_for_token(tiny, prompt):
    hf, tok, model = tiny
    ids = ids_of(tok, prompt)
    got = model.generate(ids, max_new_tokens=48, eos_token_id=hf.config.eos_token_id)
    expected = hf_generate(hf, ids, 48)
    assert got.shape[1] - ids.shape[1] >= 40
    assert got.tolist() == expected.tolist(), tok.decode(got[0])


def test_batched_generation_matches_hf(tiny):
    hf, tok, model = tiny
    ids = torch.cat([ids_of(tok, "ROMEO:"), ids_of(tok, "JULIET:")])  # equal lengths
    assert ids.shape[0] == 2
    got = model.generate(ids, max_new_tokens=44, eos_token_id=hf.config.eos_token_id)
    assert got.tolist() == hf_generate(hf, ids, 44).tolist()
    assert got.shape == (2, ids.shape[1] + 44)


def test_chunked_prefill_and_decode_match_one_pass(tiny):
    hf, tok, model = tiny
    ids = ids_of(tok, PROMPTS[1])  # [1, S]
    s = ids.shape[1]
    with torch.no_grad():
        whole = model(ids, model.new_cache(1, 32))
        cache = model.new_cache(1, 32)
        parts = [model(ids[:, :7], cache), model(ids[:, 7:s - 2], cache)]  # two prefill chunks
        parts += [model(ids[:, i:i + 1], cache) for i in (s - 2, s - 1)]  # two decode steps
        expected = hf(ids).logits
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-5, atol=5e-5)  # logits ~10: fp32 rounding
    torch.testing.assert_close(torch.cat(parts, dim=1), expected, rtol=0, atol=1e-4)
    assert cache.seq_len == s


def test_cache_stores_only_the_kv_heads(tiny):
    hf, tok, model = tiny
    cfg = hf.config
    batch, s_max = 3, 40
    cache = model.new_cache(batch, s_max)
    with torch.no_grad():
        model(ids_of(tok, "ROMEO:").expand(batch, -1), cache)
    d = cfg.hidden_size // cfg.num_attention_heads
    assert cache.keys[0].shape == (batch, cfg.num_key_value_heads, s_max, d) == (3, 2, 40, 32)
    expected = 2 * cfg.num_hidden_layers * batch * cfg.num_key_value_heads * s_max * d * 4
    assert cache.nbytes == expected == kv_cache_bytes(5, 2, 32, batch, s_max, 4)
    assert cache.nbytes == ModelSpec.from_config(cfg).kv_cache_bytes(batch, s_max, "fp32")
    assert cache.nbytes * cfg.num_attention_heads // cfg.num_key_value_heads == expected * 4  # vs MHA


def test_generate_stops_at_eos_like_hf(tiny):
    hf, tok, model = tiny
    ids = ids_of(tok, "ROMEO:")
    free = model.generate(ids, max_new_tokens=6)
    stop = int(free[0, ids.shape[1] + 2])  # pretend the third new token is the eos
    got = model.generate(ids, max_new_tokens=6, eos_token_id=stop)
    expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                           eos_token_id=stop, pad_token_id=stop)
    assert got.tolist() == expected.tolist() and got.shape[1] <= ids.shape[1] + 3


def test_convert_to_mha_keeps_logits_and_to_mqa_shrinks_the_cache():
    hf, tok = load_tiny()
    ids = ids_of(tok, PROMPTS[0])
    with torch.no_grad():
        expected = hf(ids).logits
        mha = TutxLlama.from_hf(hf).convert_kv_heads_(8)
        torch.testing.assert_close(mha(ids), expected, rtol=0, atol=1e-4)
        mqa = TutxLlama.from_hf(hf).convert_kv_heads_(1)
        assert mqa.new_cache(1, 16).nbytes * 8 == mha.new_cache(1, 16).nbytes
        assert mqa(ids, mqa.new_cache(1, 16)).shape == expected.shape
    assert hf.model.layers[0].self_attn.k_proj.out_features == 64  # the HF model is untouched


def test_bad_inputs(tiny):
    hf, tok, model = tiny
    ids = ids_of(tok, "ROMEO:")
    with pytest.raises(TypeError, match=r"input_ids: expected an int64/int32 tensor \[B, S\]"):
        model(ids.float())
    with pytest.raises(TypeError, match="input_ids"):
        model.generate(ids[0], 4)
    with pytest.raises(TypeError, match="cache: expected a KVCache or None, got dict"):
        model(ids, {})
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 1, got 0"):
        model.generate(ids, 0)
    with pytest.raises(ValueError, match="k: expected batch 2 .* got 1"):
        model(ids, model.new_cache(2, 16))
    with pytest.raises(TypeError, match="k: expected dtype torch.float16"):
        model(ids, KVCache.for_model(hf.config, 1, 16, dtype=torch.float16))
    cache = model.new_cache(1, ids.shape[1] + 1)
    with torch.no_grad():
        model(ids, cache)
        model(ids[:, :1], cache)
        with pytest.raises(ValueError, match="exceeds max_seq_len"):
            model(ids[:, :1], cache)
    with pytest.raises(TypeError, match="hf_model: expected a LlamaForCausalLM"):
        TutxLlama.from_hf(torch.nn.Linear(2, 2))


@pytest.mark.gpu
def test_gpu_fp16_kernels_match_hf(monkeypatch):
    """On CUDA in fp16 prefill and decode run the Triton kernels."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hf, tok = load_tiny(device="cuda", dtype=torch.float16)
    model = TutxLlama.from_hf(hf)
    ids = ids_of(tok, PROMPTS[1]).cuda()
    s = ids.shape[1]
    with torch.no_grad():
        expected = hf(ids).logits.float()
        cache = model.new_cache(1, 64)
        got = torch.cat([model(ids[:, :s - 3], cache)] + [model(ids[:, i:i + 1], cache) for i in range(s - 3, s)], 1)
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=5e-2)
    out = model.generate(ids, max_new_tokens=16, eos_token_id=hf.config.eos_token_id)
    ref = hf_generate(hf, ids, 16)
    assert out[:, : s + 8].tolist() == ref[:, : s + 8].tolist()


@pytest.mark.gpu
def test_gpu_fp32_generation_matches_hf(monkeypatch):
    """fp32 on CUDA takes PyTorch's attention (the kernels are fp16/bf16): still token for token."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hf, tok = load_tiny(device="cuda")
    model = TutxLlama.from_hf(hf)
    ids = ids_of(tok, PROMPTS[2]).cuda()
    assert model.generate(ids, 40, eos_token_id=0).tolist() == hf_generate(hf, ids, 40).tolist()


def test_hf_call_view_scores_like_the_hf_model():
    from tutx.models import perplexity

    hf, tok = load_tiny()
    ours = TutxLlama.from_hf(hf)
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\n" * 4
    view = ours.as_hf()
    assert torch.equal(view(input_ids=tok(text, return_tensors="pt").input_ids).logits,
                       ours(tok(text, return_tensors="pt").input_ids))
    assert abs(perplexity(view, tok, text, window=32, stride=32) - perplexity(hf, tok, text, window=32, stride=32)) < 1e-3
