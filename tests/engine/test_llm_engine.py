"""The engine end to end on the tiny LM: greedy output equals Hugging Face ``generate`` token for token."""
import copy
import random

import pytest
import torch

from tutx.engine import EngineConfig, LLMEngine, SamplingParams
from tutx.models import heldout_text, load_tiny

LENGTHS = [5, 17, 33, 64, 100, 9, 48, 130]  # prompt lengths in tokens
MAX_TOKENS = [12, 30, 7, 25, 40, 3, 18, 33]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_tiny()


@pytest.fixture(scope="module")
def ids(tiny):
    return tiny[1].encode(heldout_text()[:30000])


@pytest.fixture(scope="module")
def prompts(ids):
    return [ids[300 * i: 300 * i + n] for i, n in enumerate(LENGTHS)]


_HF = {}


def hf_greedy(model, prompt, max_new_tokens, eos_token_id=None):
    """The completion of ``model.generate`` on the prompt alone (cached)."""
    key = (tuple(prompt), max_new_tokens, eos_token_id)
    if key not in _HF:
        x = torch.tensor([prompt])
        extra = {} if eos_token_id is None else {"eos_token_id": eos_token_id}
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=0, **extra)
        _HF[key] = out[0, len(prompt):].tolist()
    return _HF[key]


def greedy(n):
    return SamplingParams(temperature=0, max_tokens=n)


def assert_all_blocks_free(engine):
    bm = engine.block_manager
    assert bm.num_free_blocks == bm.num_blocks and all(b.ref_count == 0 for b in bm.blocks)
    assert not engine.has_unfinished()


@pytest.mark.parametrize("config", [
    EngineConfig(),  # plenty of blocks: no preemption
    EngineConfig(block_size=8, num_blocks=21, max_model_len=256),  # tight pool: preemption
    EngineConfig(block_size=4, num_blocks=60, max_model_len=256, enable_prefix_caching=False),
    # decode attention in sorted groups of 2 rows (odd batches too)
    EngineConfig(attention_backend="sdpa", decode_group_size=2),
    EngineConfig(attention_backend="sdpa", decode_group_size=None),  # one SDPA call over the whole batch
    EngineConfig(attention_backend="cpu"),  # the C paged-decode kernel
    EngineConfig(prepack_weights=False),  # linear layers as the model's own
    EngineConfig(attention_backend="sdpa", prepack_weights=False),  # the PyTorch path throughout
    EngineConfig(mixed_batches=True),  # decode and prefill in one step
    EngineConfig(block_size=8, num_blocks=21, max_model_len=256, mixed_batches=True),  # ... with preemption
    EngineConfig(mixed_batches=True, attention_backend="sdpa", prepack_weights=False),  # ... in PyTorch
    EngineConfig(mixed_batches=True, max_model_len=176, max_num_batched_tokens=176),  # prompts cut into chunks
    EngineConfig(mixed_batches=True, max_model_len=176, max_num_batched_tokens=176, attention_backend="sdpa",
                 prepack_weights=False),  # ... in PyTorch
    EngineConfig(mixed_batches=True, max_model_len=176, max_num_batched_tokens=176, mixed_prefill_budget=24),
    EngineConfig(idle_prefill_budget=40),  # a small first prefill step, then whole budgets
], ids=["roomy", "preempt", "preempt-no-prefix-cache", "decode-groups-of-2", "decode-one-group", "cpu-kernel",
        "no-prepack", "sdpa-unpacked", "mixed", "mixed-preempt", "mixed-sdpa", "chunked", "chunked-sdpa",
        "chunked-capped", "idle-budget"])
def test_greedy_matches_hf_generate(tiny, prompts, config):
    model, tok = tiny
    engine = LLMEngine(model, tok, config)
    chunked = []
    engine.add_step_hook(lambda st: chunked.extend(
        rid for rid in st.prefill_request_ids if engine._requests.get(rid) is not None
        and engine._requests[rid].num_computed_tokens < engine._requests[rid].num_prompt_tokens))
    outs = engine.generate(prompts, [greedy(n) for n in MAX_TOKENS], progress=False)
    for prompt, n, out in zip(prompts, MAX_TOKENS, outs):
        assert out.token_ids == hf_greedy(model, prompt, n)
        assert out.prompt_token_ids == prompt and out.finished and out.finish_reason == "length"
        assert out.text == tok.decode(out.token_ids, skip_special_tokens=True)
    if config.num_blocks is not None:
        assert engine.scheduler.num_preemptions >= 1
    if config.max_num_batched_tokens == 176:  # (the capped config chunks prompts while others decode)
        assert chunked, "no prompt was cut into chunks"
    assert_all_blocks_free(engine)


def test_c_path_with_keys_in_rows_matches_hf_generate(tiny, prompts):
    """The C path's other key layout (rows, as the PyTorch paths keep them): same greedy tokens."""
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(block_size=8))
    if not engine.runner.cpu_ops:
        pytest.skip("the C layer path is not available here")
    engine.runner.keys_transposed = False
    outs = engine.generate(prompts, [greedy(n) for n in MAX_TOKENS], progress=False)
    for prompt, n, out in zip(prompts, MAX_TOKENS, outs):
        assert out.token_ids == hf_greedy(model, prompt, n)
    assert_all_blocks_free(engine)


def test_chunked_prompt_shares_only_the_blocks_already_computed(tiny, ids):
    """A chunked prompt's blocks become prefix-cache hits only once their K/V is computed."""
    model, tok = tiny
    other, shared = ids[2000:2100], ids[5000:5100]
    a, b = shared + ids[7000:7007], shared + ids[8000:8012]
    engine = LLMEngine(model, tok, EngineConfig(mixed_batches=True, max_model_len=128, max_num_batched_tokens=128))
    outs = engine.generate([other, a, b], [greedy(12), greedy(10), greedy(8)], progress=False)
    # Step 1: other (100) and the first 28 of a; step 2: other decodes, a's other 79, then b, which
    # finds a's first block (16 tokens) computed and the rest of a's shared blocks not yet.
    assert outs[1].num_cached_tokens == 0 and outs[2].num_cached_tokens == 16
    for prompt, n, out in zip((other, a, b), (12, 10, 8), outs):
        assert out.token_ids == hf_greedy(model, prompt, n)
    assert_all_blocks_free(engine)


def test_many_preemptions_short_prompts_long_outputs(tiny, ids):
    model, tok = tiny
    prompts = [ids[1000 + 97 * i: 1000 + 97 * i + n] for i, n in enumerate([3, 11, 6, 20, 9, 14, 4, 17])]
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=20, max_model_len=128))
    outs = engine.generate(prompts, [greedy(40 + 3 * i) for i in range(8)], progress=False)
    for i, (prompt, out) in enumerate(zip(prompts, outs)):
        assert out.token_ids == hf_greedy(model, prompt, 40 + 3 * i)
    assert engine.scheduler.num_preemptions >= 4
    assert_all_blocks_free(engine)


def test_prefix_sharing(tiny, ids):
    model, tok = tiny
    shared = ids[5000:5100]  # 100 tokens: 6 full blocks of 16
    a, b, c = shared + ids[7000:7007], shared + ids[8000:8012], shared + ids[9000:9003]
    engine = LLMEngine(model, tok, EngineConfig(block_size=16))
    out_a, out_b = engine.generate([a, b], [greedy(20), greedy(15)], progress=False)
    # Admitted in the same prefill step: b reads the blocks a writes in that very forward pass.
    assert out_a.num_cached_tokens == 0 and out_b.num_cached_tokens == 96
    out_c, = engine.generate([c], greedy(10), progress=False)  # a and b are done; their blocks stay cached
    assert out_c.num_cached_tokens == 96
    for prompt, n, out in ((a, 20, out_a), (b, 15, out_b), (c, 10, out_c)):
        assert out.token_ids == hf_greedy(model, prompt, n)
    assert_all_blocks_free(engine)
    engine.add_request(c, greedy(3))
    engine.step()  # c is running: its blocks are in use, so the cache stays
    assert engine.reset_prefix_cache() is False and engine.block_manager.hash_to_block
    while engine.has_unfinished():
        engine.step()
    assert engine.reset_prefix_cache() is True and not engine.block_manager.hash_to_block
    out_c2, = engine.generate([c], greedy(10), progress=False)  # nothing cached any more
    assert out_c2.num_cached_tokens == 0 and out_c2.token_ids == out_c.token_ids
    assert_all_blocks_free(engine)


def test_mixed_steps_prefill_newcomers_while_others_decode(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(mixed_batches=True))
    first = [engine.add_request(p, greedy(12)) for p in prompts[:2]]
    kinds = []
    engine.add_step_hook(lambda st: kinds.append((st.kind, st.prefill_request_ids, st.request_ids)))
    outs = {}
    for _ in range(3):
        outs.update((o.request_id, o) for o in engine.step())
    later = [engine.add_request(p, greedy(9)) for p in prompts[2:4]]
    outs.update((o.request_id, o) for o in engine.step())
    assert kinds[0] == ("prefill", tuple(first), tuple(first))
    assert kinds[1][0] == "decode" and kinds[3] == ("mixed", tuple(later), tuple(first + later))
    while engine.has_unfinished():
        outs.update((o.request_id, o) for o in engine.step())
    for rid, prompt, n in zip(first + later, prompts[:4], [12, 12, 9, 9]):
        assert outs[rid].token_ids == hf_greedy(model, prompt, n)
    assert_all_blocks_free(engine)


def test_random_aborts_free_everything_and_leave_others_intact(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(block_size=8, num_blocks=24, max_model_len=256))
    rids = [engine.add_request(p, greedy(n)) for p, n in zip(prompts, MAX_TOKENS)]
    rng = random.Random(1234)
    finals, aborted, streamed = {}, set(), {r: [] for r in rids}
    while engine.has_unfinished():
        for out in engine.step():
            streamed[out.request_id] += out.new_token_ids
            if out.finished:
                finals[out.request_id] = out
        live = [r for r in rids if r not in finals and r not in aborted]
        if live and rng.random() < 0.15:
            victim = rng.choice(live)
            engine.abort(victim)
            aborted.add(victim)
    assert 1 <= len(aborted) < len(rids)
    for rid, prompt, n in zip(rids, prompts, MAX_TOKENS):
        if rid in aborted:
            assert rid not in finals
            with pytest.raises(KeyError, match="no unfinished request"):
                engine.abort(rid)
        else:
            assert finals[rid].token_ids == streamed[rid] == hf_greedy(model, prompt, n)
    assert_all_blocks_free(engine)


def test_too_long_prompt_is_rejected_while_the_engine_serves_others(tiny, prompts, ids):
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(max_model_len=128))
    engine.add_request(prompts[3], greedy(25))
    tokens = [t for o in engine.step() for t in o.new_token_ids]
    with pytest.raises(ValueError, match="max_model_len=128"):
        engine.add_request(ids[:128], greedy(5))
    with pytest.raises(ValueError, match=r"prompts\[1\]"):
        engine.generate([prompts[0], ids[:500]], greedy(5), progress=False)
    while engine.has_unfinished():
        tokens += [t for o in engine.step() for t in o.new_token_ids]
    assert tokens == hf_greedy(model, prompts[3], 25)
    # Generation stops at the context length with finish reason "length".
    out, = engine.generate([ids[:120]], greedy(50), progress=False)
    assert len(out.token_ids) == 8 and out.finish_reason == "length"
    assert out.token_ids == hf_greedy(model, ids[:120], 8)


def test_stop_strings_are_stripped_and_streaming_adds_up(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok)
    full, = engine.generate([prompts[4]], greedy(40), progress=False)
    stop = full.text[31:35]  # a piece from the middle of the greedy text
    cut = full.text.find(stop)
    rid = engine.add_request(prompts[4], SamplingParams(temperature=0, max_tokens=40, stop=["#never#", stop]))
    pieces, last = [], None
    while engine.has_unfinished():
        for out in engine.step():
            pieces.append(out.new_text)
            last = out
    assert last.request_id == rid and last.finish_reason == "stop" and last.stop_reason == stop
    assert last.text == full.text[:cut] == "".join(pieces)
    assert last.token_ids == full.token_ids[: len(last.token_ids)]
    # Without stop strings every step's text is streamed at once.
    engine.add_request(prompts[4], greedy(40))
    pieces = [o.new_text for _ in range(60) if engine.has_unfinished() for o in engine.step()]
    assert "".join(pieces) == full.text


def test_eos_and_stop_token_ids(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok)
    ref = hf_greedy(model, prompts[1], 30)
    stop_id = ref[10]  # a token the greedy completion produces; first seen at index k
    k = ref.index(stop_id)
    assert hf_greedy(model, prompts[1], 30, eos_token_id=stop_id) == ref[: k + 1]
    engine.eos_token_ids = frozenset({stop_id})  # pretend it is the model's eos
    eos, ignored = engine.generate([prompts[1]] * 2, [greedy(30), SamplingParams(temperature=0, max_tokens=30,
                                                                                 ignore_eos=True)], progress=False)
    assert eos.token_ids == ref[: k + 1] and eos.finish_reason == "stop" and eos.stop_reason is None
    assert ignored.token_ids == ref and ignored.finish_reason == "length"
    engine.eos_token_ids = frozenset({0})
    out, = engine.generate([prompts[1]], SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[stop_id]),
                           progress=False)
    assert out.token_ids == ref[: k + 1] and out.stop_reason == stop_id
    assert out.text == tok.decode(ref[:k])  # the stop token's text is left out
    assert_all_blocks_free(engine)


def test_triton_backend_through_the_interpreter(tiny, prompts):
    """The paged-decode kernel inside the engine (on CPU under TRITON_INTERPRET=1)."""
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(block_size=4, attention_backend="triton"))
    outs = engine.generate(prompts[:2], [greedy(4), greedy(3)], progress=False)
    for prompt, n, out in zip(prompts, (4, 3), outs):
        assert out.token_ids == hf_greedy(model, prompt, n)
    assert engine.runner.attention_backend == "triton"


def test_backend_choice_and_packed_weights_on_cpu(tiny):
    """On a CPU "auto" means the C kernel with fp32 weights (linears prepacked), SDPA in groups with bf16."""
    from tutx.kernels.cpu_build import compiler

    if compiler() is None:
        pytest.skip("no C compiler to build the CPU kernel")
    model, tok = tiny
    runner = LLMEngine(model, tok, EngineConfig()).runner
    assert runner.attention_backend == "cpu" and runner.decode_group_size is None
    assert runner.keys_transposed == runner.cpu_ops  # the C path keeps each block's keys transposed
    if torch.backends.mkldnn.is_available():
        assert len(runner.linear) == 7 * runner.num_layers + 1 and runner.linear.fused
    assert len(LLMEngine(model, tok, EngineConfig(prepack_weights=False)).runner.linear) == 0
    sdpa = LLMEngine(model, tok, EngineConfig(attention_backend="sdpa", decode_group_size=4)).runner
    assert sdpa.attention_backend == "sdpa" and sdpa.decode_group_size == 4
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with pytest.raises(ValueError, match="attention_backend"):
        LLMEngine(bf16, tok, EngineConfig(attention_backend="cpu"))
    auto = LLMEngine(bf16, tok, EngineConfig(decode_group_size=4)).runner
    assert auto.attention_backend == "sdpa" and auto.decode_group_size == 4  # "auto" resolved to SDPA groups


def test_generate_shows_a_progress_bar_and_token_id_prompts(tiny, prompts, capfd):
    model, tok = tiny
    engine = LLMEngine(model, tok)
    out, = engine.generate(prompts[0], greedy(3), progress=True)  # one token-id prompt, not wrapped
    assert out.token_ids == hf_greedy(model, prompts[0], 3)
    assert "Generating" in capfd.readouterr().err
    text_out, = engine.generate("ROMEO:\n", greedy(3), progress=False)
    assert text_out.prompt == "ROMEO:\n" and text_out.prompt_token_ids == tok.encode("ROMEO:\n")


def test_errors(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(max_model_len=64, num_blocks=4, block_size=8))
    with pytest.raises(KeyError, match="no unfinished request 'nope'"):
        engine.abort("nope")
    with pytest.raises(ValueError, match="num_blocks=4"):
        engine.add_request(prompts[0], greedy(40))
    with pytest.raises(ValueError, match="empty prompt"):
        engine.add_request([], greedy(4))
    with pytest.raises(ValueError, match="vocab_size"):
        engine.add_request([1, 5000], greedy(4))
    with pytest.raises(TypeError, match="prompt"):
        engine.add_request(3.5, greedy(4))
    with pytest.raises(TypeError, match="params"):
        engine.add_request([1, 2], {"temperature": 0})
    rid = engine.add_request([1, 2], greedy(2), request_id="mine")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([1, 2], greedy(2), request_id=rid)
    with pytest.raises(ValueError, match="one SamplingParams per prompt"):
        engine.generate([[1], [2]], [greedy(2)], progress=False)
    engine.abort("mine")
    assert_all_blocks_free(engine)
    with pytest.raises(ValueError, match="a string needs a tokenizer"):
        LLMEngine(model, None).add_request("hello")
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineConfig(max_model_len=512, max_num_batched_tokens=100)
    with pytest.raises(ValueError, match="block_size"):
        EngineConfig(block_size=0)
    with pytest.raises(ValueError, match="attention_backend"):
        EngineConfig(attention_backend="cuda")
    with pytest.raises(ValueError, match="decode_group_size"):
        EngineConfig(decode_group_size=0)
    with pytest.raises(ValueError, match="mixed_prefill_budget: .*mixed_batches=True"):
        EngineConfig(mixed_prefill_budget=256)
    with pytest.raises(ValueError, match="mixed_prefill_budget"):
        EngineConfig(mixed_batches=True, mixed_prefill_budget=0)
    with pytest.raises(ValueError, match="max_position_embeddings=512"):
        LLMEngine(model, tok, EngineConfig(max_model_len=4096))
    with pytest.raises(TypeError, match="Llama-style"):
        LLMEngine(torch.nn.Linear(2, 2), tok)
    assert "LLMEngine(unfinished=0" in repr(engine)


def test_without_a_c_compiler_the_engine_runs_in_pytorch_and_onednn(tiny, prompts, monkeypatch, tmp_path):
    """No compiler: SDPA attention, oneDNN products, torch's argmax; the same greedy tokens."""
    from tutx.kernels import cpu_build, linear_cpu, llama_cpu_ops, paged_decode_cpu

    caches = (paged_decode_cpu._kernel, llama_cpu_ops._lib, linear_cpu._lib)
    monkeypatch.setenv("CC", "/nonexistent")
    monkeypatch.setenv("TUTX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_build, "_loaded", {})
    monkeypatch.setattr(cpu_build, "_failed", {})
    for cache in caches:
        cache.cache_clear()
    try:
        model, tok = tiny
        engine = LLMEngine(model, tok, EngineConfig())
        assert engine.runner.attention_backend == "sdpa" and not engine.runner.cpu_ops
        assert not engine.sampler._fast_argmax
        outs = engine.generate(prompts, [greedy(n) for n in MAX_TOKENS], progress=False)
        for prompt, n, out in zip(prompts, MAX_TOKENS, outs):
            assert out.token_ids == hf_greedy(model, prompt, n)
        assert not any(engine.runner.linear._few.values())  # every product went to oneDNN
    finally:
        for cache in caches:
            cache.cache_clear()
