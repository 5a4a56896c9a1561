"""Sampling parameters and the sampler: validation, filtering, seeded reproducibility."""
import pytest
import torch

from tutx.engine import EngineConfig, LLMEngine, SamplingParams
from tutx.engine.sampling import Sampler, filter_logits
from tutx.models import heldout_text, load_tiny


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def engine():
    model, tok = load_tiny()
    return LLMEngine(model, tok, EngineConfig(block_size=8, num_blocks=40, max_model_len=256))


@pytest.fixture(scope="module")
def prompts(engine):
    ids = engine.tokenizer.encode(heldout_text()[40000:50000])
    return [ids[200 * i: 200 * i + n] for i, n in enumerate([7, 30, 12, 55])]


@pytest.mark.parametrize("kwargs,exc,name", [
    ({"temperature": -0.1}, ValueError, "temperature"),
    ({"temperature": float("nan")}, ValueError, "temperature"),
    ({"temperature": "hot"}, TypeError, "temperature"),
    ({"top_k": 0}, ValueError, "top_k"),
    ({"top_k": 2.5}, TypeError, "top_k"),
    ({"top_p": 0.0}, ValueError, "top_p"),
    ({"top_p": 1.5}, ValueError, "top_p"),
    ({"seed": "42"}, TypeError, "seed"),
    ({"max_tokens": 0}, ValueError, "max_tokens"),
    ({"max_tokens": True}, TypeError, "max_tokens"),
    ({"logprobs": -1}, ValueError, "logprobs"),
    ({"logprobs": 21}, ValueError, "logprobs"),
    ({"prompt_logprobs": 1.0}, TypeError, "prompt_logprobs"),
    ({"stop_token_ids": 3}, TypeError, "stop_token_ids"),
    ({"stop": ""}, ValueError, "stop"),
    ({"stop": ["ok", 3]}, ValueError, "stop"),
    ({"stop_token_ids": [-1]}, ValueError, "stop_token_ids"),
    ({"ignore_eos": 1}, TypeError, "ignore_eos"),
])
def test_bad_params_raise(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        SamplingParams(**kwargs)


def test_params_are_normalised():
    p = SamplingParams(temperature=0, stop="\n\n", stop_token_ids=[3, 4], top_p=1)
    assert p.greedy and p.stop == ("\n\n",) and p.stop_token_ids == (3, 4) and isinstance(p.top_p, float)
    assert SamplingParams(stop=None).stop == ()


def test_filter_logits_keeps_top_k_and_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    kept = lambda x: torch.isfinite(x).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, 2, 1.0)) == [0, 1]
    assert kept(filter_logits(logits, None, 0.45)) == [0]  # the top token alone reaches 0.45
    assert kept(filter_logits(logits, None, 0.8)) == [0, 1, 2]  # 0.5 + 0.2 < 0.8 <= 0.85
    assert kept(filter_logits(logits, 4, 0.9)) == [0, 1, 2, 3]
    assert kept(filter_logits(logits[[3, 0, 4, 1, 2]], None, 0.65)) == [1, 3]  # order does not matter


def test_sampler_rows_and_generators():
    sampler = Sampler()
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    logits[2] = logits[1]
    params = [SamplingParams(temperature=0), SamplingParams(seed=1), SamplingParams(seed=1)]
    a = sampler(logits, [10, 11, 12], params)
    assert a[0] == int(logits[0].argmax()) and a[1] == a[2]  # same seed, same logits, fresh generators
    assert "seeded_requests=2" in repr(sampler)
    sampler.release(11)
    sampler.release(12)
    assert sampler(logits, [10, 11, 12], params) == a
    with pytest.raises(ValueError, match="logits"):
        sampler(logits, [1, 2], params[:2])


def test_seeded_requests_are_reproducible_whatever_the_batch(engine, prompts):
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=7, max_tokens=20)
    alone, = engine.generate([prompts[1]], params, progress=False)
    others = [SamplingParams(temperature=0.8, seed=s, max_tokens=25) for s in (1, 2)]
    batched = engine.generate([prompts[0], prompts[1], prompts[3]], [others[0], params, others[1]], progress=False)
    assert batched[1].token_ids == alone.token_ids
    other_seed, = engine.generate([prompts[1]], SamplingParams(temperature=1.0, top_p=0.95, seed=8, max_tokens=20),
                                  progress=False)
    assert other_seed.token_ids != alone.token_ids


def test_top_k_1_equals_greedy(engine, prompts):
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=15), progress=False)
    top1 = engine.generate(prompts, SamplingParams(temperature=1.3, top_k=1, seed=3, max_tokens=15), progress=False)
    assert [o.token_ids for o in top1] == [o.token_ids for o in greedy]


def test_sampling_differs_from_greedy_and_survives_preemption(engine, prompts):
    model, tok = engine.runner.model, engine.tokenizer
    params = [SamplingParams(temperature=1.0, seed=100 + i, max_tokens=40) for i in range(4)]
    roomy = LLMEngine(model, tok).generate(prompts, params, progress=False)
    tight = LLMEngine(model, tok, EngineConfig(block_size=4, num_blocks=25, max_model_len=128))
    squeezed = tight.generate(prompts, params, progress=False)
    assert tight.scheduler.num_preemptions >= 1
    assert [o.token_ids for o in squeezed] == [o.token_ids for o in roomy]
    greedy = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=40), progress=False)
    assert [o.token_ids for o in roomy] != [o.token_ids for o in greedy]
