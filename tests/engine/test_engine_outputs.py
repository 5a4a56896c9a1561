"""What the engine reports besides tokens: log-probabilities (of the completion and of the prompt),
prompt scoring with ``max_tokens=0``, step statistics and step hooks, batched unseeded sampling."""
import pytest
import torch

from tutx.engine import EngineConfig, LLMEngine, SamplingParams, StepStats
from tutx.models import heldout_text, load_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_tiny()


@pytest.fixture(scope="module")
def prompts(tiny):
    ids = tiny[1].encode(heldout_text()[20000:30000])
    return [ids[150 * i: 150 * i + n] for i, n in enumerate([9, 21, 40])]


def hf_logprobs(model, tokens):
    """log-softmax of the model's logits at every position of ``tokens``: ``[S, V]``."""
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([tokens])).logits[0].float(), dim=-1)


def test_completion_logprobs_match_the_model(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok)
    rid = engine.add_request(prompts[1], SamplingParams(temperature=0, max_tokens=6, logprobs=3))
    streamed, final = [], None
    while engine.has_unfinished():
        for out in engine.step():
            assert len(out.logprobs) == len(out.new_token_ids) == 1
            streamed += out.logprobs
            final = out
    assert final.request_id == rid and final.token_logprobs == streamed and len(streamed) == 6
    ref = hf_logprobs(model, prompts[1] + final.token_ids)
    for i, (token, lp) in enumerate(zip(final.token_ids, streamed)):
        row = ref[len(prompts[1]) - 1 + i]  # [V]: predicts completion token i
        top = row.topk(3)
        assert set(lp) == set(top.indices.tolist()) | {token}  # greedy: the token is the top one
        assert max(lp, key=lp.get) == token
        for t, v in lp.items():
            assert v == pytest.approx(float(row[t]), abs=1e-4)
    plain, = engine.generate([prompts[1]], SamplingParams(temperature=0, max_tokens=2))
    assert plain.logprobs is None and plain.token_logprobs is None and plain.prompt_logprobs is None


def test_prompt_scoring_with_max_tokens_0(tiny, prompts):
    """echo + logprobs + max_tokens=0, as lm-evaluation-harness scores text: prompt logprobs only."""
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(block_size=8))
    engine.generate([prompts[2]], SamplingParams(temperature=0, max_tokens=1))  # its blocks are now cached
    out, = engine.generate([prompts[2]], SamplingParams(temperature=0, max_tokens=0, prompt_logprobs=2))
    assert out.finished and out.finish_reason == "length" and out.token_ids == [] and out.text == ""
    assert out.num_cached_tokens == 0  # computed in full: the cache holds no logits
    assert len(out.prompt_logprobs) == len(prompts[2]) and out.prompt_logprobs[0] is None
    ref = hf_logprobs(model, prompts[2])
    for j in range(1, len(prompts[2])):
        lp = out.prompt_logprobs[j]
        assert prompts[2][j] in lp and len(lp) <= 3
        assert lp[prompts[2][j]] == pytest.approx(float(ref[j - 1, prompts[2][j]]), abs=1e-4)
    # With a completion too, and alongside ordinary requests in the same prefill.
    both, other = engine.generate([prompts[0], prompts[1]], [
        SamplingParams(temperature=0, max_tokens=3, prompt_logprobs=0, logprobs=0),
        SamplingParams(temperature=0, max_tokens=3)])
    alone, = LLMEngine(model, tok).generate([prompts[1]], SamplingParams(temperature=0, max_tokens=3))
    assert other.token_ids == alone.token_ids and len(both.token_ids) == 3
    assert len(both.prompt_logprobs) == len(prompts[0]) and all(len(d) == 1 for d in both.token_logprobs)
    assert engine.num_free_blocks == engine.config.num_blocks


def test_step_stats_and_hooks(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok, EngineConfig(block_size=8, max_num_seqs=2))
    seen = []
    engine.add_step_hook(seen.append)
    assert engine.last_step_stats is None
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=3))
    assert all(isinstance(s, StepStats) for s in seen) and engine.last_step_stats is seen[-1]
    assert [s.step for s in seen] == list(range(len(seen)))
    first = seen[0]
    assert first.kind == "prefill" and first.is_prefill and first.request_ids == ("req-0", "req-1")
    assert first.num_tokens == len(prompts[0]) + len(prompts[1]) and first.num_waiting == 1
    assert set(first.block_tables) == {"req-0", "req-1"} and first.num_running == 2
    assert first.num_blocks_used == sum(len(t) for t in first.block_tables.values())
    assert seen[1].kind == "decode" and seen[1].num_tokens == 2 and seen[1].num_seqs == 2
    ended = {rid: reason for s in seen for rid, reason in s.finished.items()}
    assert ended == {o.request_id: "length" for o in outs}
    assert seen[-1].num_blocks_free == engine.config.num_blocks and seen[-1].num_running == 0
    assert all(s.duration_s > 0 and s.num_preemptions == 0 for s in seen)
    engine.remove_step_hook(seen.append)
    with pytest.raises(TypeError, match="fn"):
        engine.add_step_hook(42)


def test_unseeded_rows_are_sampled_together_within_their_filters(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok)
    torch.manual_seed(0)
    params = [SamplingParams(temperature=1.0, top_k=1, max_tokens=8), SamplingParams(temperature=0.7, max_tokens=8),
              SamplingParams(temperature=0, max_tokens=8)]
    top1, free, greedy = engine.generate(prompts, params)
    ref = [o.token_ids for o in engine.generate(prompts, SamplingParams(temperature=0, max_tokens=8))]
    assert top1.token_ids == ref[0] and greedy.token_ids == ref[2]  # top_k=1 is greedy, batched or not
    assert len(free.token_ids) == 8


def test_abort_of_a_finished_request_is_a_key_error(tiny, prompts):
    model, tok = tiny
    engine = LLMEngine(model, tok)
    out, = engine.generate([prompts[0]], SamplingParams(temperature=0, max_tokens=2))
    with pytest.raises(KeyError, match="no unfinished request"):
        engine.abort(out.request_id)
