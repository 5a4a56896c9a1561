"""enforce_eager=False: compiled (CPU) / CUDA-graph (GPU) decode steps give the eager engine's tokens."""
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tutx.engine import EngineConfig, LLMEngine, SamplingParams
from tutx.engine.graphs import CompiledDecode, bucket, graph_batch_sizes

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_TOKENS = [9, 5, 2]  # the decode batch shrinks 3 -> 2 -> 1: every size pads to the one compiled bucket


def tiny_random(device="cpu", dtype=torch.float32):
    """A one-layer Llama small enough to compile in seconds (GQA, rotary: the real code paths)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval().to(device, dtype)


def prompts():
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(1, 97, (n,), generator=gen).tolist() for n in (7, 19, 3)]


def generate(model, **config):
    engine = LLMEngine(model, None, EngineConfig(max_num_seqs=4, block_size=8, **config))
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in MAX_TOKENS]
    for p, sp in zip(prompts(), params):
        engine.add_request(p, sp)
    out = {}
    while engine.has_unfinished():
        for o in engine.step():
            out[o.request_id] = o.token_ids
    return [out[k] for k in sorted(out)], engine


def test_compiled_decode_gives_the_eager_tokens_with_one_compile(monkeypatch):
    import torch._inductor.config

    # No pool of compile workers on a small CI machine: measured 117 s -> 73 s wall on a loaded 2-core box.
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    model = tiny_random()
    eager, _ = generate(model)
    compiled, engine = generate(model, enforce_eager=False, graph_batch_sizes=(4,))
    graphs = engine.runner.graphs
    assert isinstance(graphs, CompiledDecode)
    assert compiled == eager
    assert graphs.graph_steps == max(MAX_TOKENS) - 1 and graphs.eager_steps == 0
    assert graphs.num_compiles == 1  # batch sizes 3, 2, 1 and growing contexts: no recompile


def test_a_batch_larger_than_every_bucket_and_a_failed_compile_run_eagerly(monkeypatch):
    model = tiny_random()
    eager, _ = generate(model)
    served = []  # (no real compile here: the test above pays for one)
    monkeypatch.setattr(CompiledDecode, "run_padded", lambda self, size, args: served.append(size)
                        or self.forward(*args))
    small, engine = generate(model, enforce_eager=False, graph_batch_sizes=(1,))
    assert small == eager and set(served) == {1}
    assert engine.runner.graphs.eager_steps == MAX_TOKENS[1] - 1  # the steps of 3 and 2 sequences ran eagerly
    monkeypatch.setattr(CompiledDecode, "run_padded",
                        lambda self, size, args: self.warn("torch.compile failed (test)"))
    with pytest.warns(RuntimeWarning, match="enforce_eager=False: torch.compile failed"):
        failed, engine = generate(model, enforce_eager=False, graph_batch_sizes=(1,))
    assert failed == eager and engine.runner.graphs.graph_steps == 0


def test_buckets_and_sizes():
    assert graph_batch_sizes(16) == (1, 2, 4, 8, 16)
    assert graph_batch_sizes(12) == (1, 2, 4, 8, 12)
    assert graph_batch_sizes(16, (8, 1, 8)) == (1, 8)
    assert [bucket(b, (1, 2, 4, 8)) for b in (1, 3, 5, 8, 9)] == [1, 4, 8, 8, None]


@pytest.mark.parametrize("kw, error, match", [
    (dict(enforce_eager=0), TypeError, "enforce_eager"),
    (dict(graph_batch_sizes=[1, 2]), TypeError, "graph_batch_sizes"),
    (dict(graph_batch_sizes=()), TypeError, "graph_batch_sizes"),
    (dict(graph_batch_sizes=(1, 0)), ValueError, r"graph_batch_sizes\[1\]"),
])
def test_config_checks_the_options(kw, error, match):
    with pytest.raises(error, match=match):
        EngineConfig(**kw)


def test_eager_default_has_no_scratch_block():
    model = tiny_random()
    engine = LLMEngine(model, None, EngineConfig(max_num_seqs=4, block_size=8))
    assert engine.runner.graphs is None and engine.runner.kv_cache.shape[2] == engine.config.num_blocks
    engine = LLMEngine(model, None, EngineConfig(max_num_seqs=4, block_size=8, enforce_eager=False))
    assert engine.runner.kv_cache.shape[2] == engine.config.num_blocks + 1  # the padded rows' scratch block
    assert "CompiledDecode" in repr(engine.runner)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_graph_decode_gives_the_eager_tokens(dtype):
    model = tiny_random("cuda", dtype)
    eager, _ = generate(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture would warn and run eagerly
        graphed, engine = generate(model, enforce_eager=False)
    graphs = engine.runner.graphs
    assert type(graphs).__name__ == "CUDAGraphDecode" and set(graphs.graphs) == {1, 2, 4}
    assert graphed == eager
    assert graphs.graph_steps == max(MAX_TOKENS) - 1 and graphs.eager_steps == 0
