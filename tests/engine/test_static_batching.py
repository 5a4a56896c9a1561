"""Static batching: left padding, and a padded batch gives each prompt the output it gets alone."""
import pytest
import torch
from _generate import PROMPTS, alone

from tutx.engine.static_batching import greedy_generate, pad_batch
from tutx.models import load_tiny


def test_pad_batch_left_and_right():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=1, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("args, error, match", [
    (([[1]], 0, "middle"), ValueError, "side: expected one of .* got 'middle'"),
    (([[1]], -1), ValueError, "pad_id: expected an int >= 0, got -1"),
    (([], 0), TypeError, "sequences: expected a non-empty list"),
    (("abc", 0), TypeError, "sequences"),
    (([[1], []], 0), ValueError, r"sequences\[1\]=\[\]"),
    (([[1, -2]], 0), ValueError, r"sequences\[0\]"),
    (([[1.0]], 0), ValueError, r"sequences\[0\]"),
])
def test_pad_batch_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        pad_batch(*args)


@pytest.fixture(scope="module")
def tiny(one_thread):
    return load_tiny()


def test_greedy_generate_matches_each_prompt_alone(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # different lengths: real padding
    outputs = greedy_generate(model, prompts, max_new_tokens=10, pad_id=tokenizer.pad_token_id,
                              eos_id=tokenizer.eos_token_id)
    assert outputs == [alone(model, p, 10) for p in prompts]
    with pytest.raises(ValueError, match="max_new_tokens: expected an int >= 1, got 0"):
        greedy_generate(model, prompts, max_new_tokens=0)


def test_greedy_generate_stops_a_sequence_at_eos(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode(p) for p in PROMPTS[:2]]
    free = greedy_generate(model, prompts, max_new_tokens=6, pad_id=0)
    eos = free[0][2]  # pretend the third token of the first completion ends it
    stopped = greedy_generate(model, prompts, max_new_tokens=6, pad_id=0, eos_id=eos)
    assert stopped[0] == free[0][:free[0].index(eos) + 1]
    assert stopped[1] == (free[1][:free[1].index(eos) + 1] if eos in free[1] else free[1])


