"""Chapter 4's checks accept right answers, reject wrong ones and say "not solved yet" to stubs."""
import pytest
import torch

from tutx.exercises import ch04


def softmax_step_right(m, l, acc, scores, values):
    """Written independently of the reference: the new max, then rescale the old sums by exp(m - m_new);
    rows still at -inf are left as they are."""
    m_new = torch.max(torch.cat([m[:, None], scores], dim=1), dim=1).values
    seen = torch.isfinite(m_new)  # [M]
    shift = torch.where(seen, m_new, torch.zeros_like(m_new))
    scale = torch.where(seen, torch.exp(m - shift), torch.zeros_like(m))
    p = torch.exp(scores - shift[:, None])
    return m_new, scale * l + p.sum(1), scale[:, None] * acc + torch.einsum("mn,nd->md", p, values)


def softmax_step_unsafe(m, l, acc, scores, values):
    """Section 2's update: right for rows that have seen a key, NaN for rows that have not."""
    m_new = torch.maximum(m, scores.max(dim=1).values)
    alpha = torch.exp(m - m_new)
    p = torch.exp(scores - m_new[:, None])
    return m_new, alpha * l + p.sum(1), alpha[:, None] * acc + p @ values


def softmax_step_no_rescale(m, l, acc, scores, values):
    """Forgets that the running sums were taken under the old max."""
    m_new = torch.maximum(m, scores.max(dim=1).values)
    p = torch.exp(scores - m_new[:, None])
    return m_new, l + p.sum(1), acc + p @ values


def merge_right(o_parts, lse_parts):
    """Written independently: shift by the largest LSE, weight, renormalise."""
    top = lse_parts.max(dim=0).values  # [M]
    w = torch.exp(lse_parts - top)  # [S, M]
    total = w.sum(dim=0)  # [M]
    return torch.einsum("sm,smd->md", w, o_parts) / total[:, None], top + torch.log(total)


def merge_mean(o_parts, lse_parts):
    """Averages the splits, ignoring how many keys (how much mass) each one holds."""
    return o_parts.mean(dim=0), torch.logsumexp(lse_parts, dim=0)


def window_blocks_right(num_q_blocks, num_k_blocks, block, window):
    """Interval arithmetic: block (i, j) is visited if its closest allowed pair is in the window."""
    out = torch.zeros(num_q_blocks, num_k_blocks, dtype=torch.bool)
    offset = (num_k_blocks - num_q_blocks) * block
    for i in range(num_q_blocks):
        q_lo, q_hi = offset + i * block, offset + (i + 1) * block - 1
        for j in range(num_k_blocks):
            k_lo, k_hi = j * block, (j + 1) * block - 1
            out[i, j] = k_lo <= q_hi and q_lo - min(k_hi, q_lo) < window
    return out


def window_blocks_causal_only(num_q_blocks, num_k_blocks, block, window):
    return torch.ones(num_q_blocks, num_k_blocks, dtype=torch.bool).tril(num_k_blocks - num_q_blocks)


def kv_bytes_right(config, batch, seq_len, bytes_per_elem):
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * batch * seq_len * bytes_per_elem


def kv_bytes_mha(config, batch, seq_len, bytes_per_elem):
    """Counts every query head: right for Llama-2-7B, 4x too much for Llama-3.1-8B."""
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_attention_heads"] * head_dim * batch * seq_len * bytes_per_elem


def test_only_checks_are_public():
    assert all(name.startswith("check_") for name in ch04.__all__)
    assert set(ch04.CONTRACT) == set(ch04.__all__)


def test_online_softmax_steps_compose_to_softmax():
    update = ch04.CONTRACT["check_online_softmax_update"][0]
    torch.manual_seed(0)
    scores, values = torch.randn(5, 23), torch.randn(23, 4)
    scores[0, :8] = float("-inf")  # row 0 sees nothing in the first block
    state = (torch.full((5,), float("-inf")), torch.zeros(5), torch.zeros(5, 4))
    for start in range(0, 23, 8):
        state = update(*state, scores[:, start:start + 8], values[start:start + 8])
    m, l, acc = state
    torch.testing.assert_close(acc / l[:, None], torch.softmax(scores, dim=1) @ values)
    torch.testing.assert_close(m, scores.max(dim=1).values)


def test_merged_partials_are_attention_over_all_keys():
    merge = ch04.CONTRACT["check_merge_partials"][0]
    torch.manual_seed(0)
    scores, values = torch.randn(3, 30, dtype=torch.float64), torch.randn(30, 4, dtype=torch.float64)
    o_parts, lse_parts = ch04._split_attention(scores, values, [(0, 7), (7, 30), (30, 30)])
    o, lse = merge(o_parts, lse_parts)
    torch.testing.assert_close(o, torch.softmax(scores, dim=1) @ values)
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=1))


def test_window_block_mask_agrees_with_the_dense_mask():
    from tutx.kernels.masks import sliding_window_mask

    mask = ch04.CONTRACT["check_window_block_mask"][0](4, 4, 8, 12)
    dense = sliding_window_mask(32, 32, 12)
    for i in range(4):
        for j in range(4):
            assert bool(mask[i, j]) == bool(dense[i * 8:(i + 1) * 8, j * 8:(j + 1) * 8].any())
    assert mask.tolist() == [[True, False, False, False], [True, True, False, False],
                             [True, True, True, False], [False, True, True, True]]


def test_wrong_answers_fail_and_name_the_case():
    with pytest.raises(AssertionError, match=r"check_online_softmax_update: case 1/6 .*output 1.*values differ"):
        ch04.check_online_softmax_update(softmax_step_no_rescale)
    with pytest.raises(AssertionError, match=r"check_online_softmax_update: case 1/6 .*output 1"):
        ch04.check_online_softmax_update(softmax_step_unsafe)  # NaN in the row that saw no key
    with pytest.raises(AssertionError, match=r"check_merge_partials: case 1/5 .*output 0"):
        ch04.check_merge_partials(merge_mean)
    with pytest.raises(AssertionError, match=r"check_window_block_mask: case 1/6 fn\(4, 4, 16, 16\): values differ"):
        ch04.check_window_block_mask(window_blocks_causal_only)
    with pytest.raises(AssertionError, match="check_kv_cache_bytes_gqa: case 1/6 .* returned 4294967296, "
                                             "expected 1073741824"):
        ch04.check_kv_cache_bytes_gqa(kv_bytes_mha)


def test_wrong_dtype_or_shape_fails():
    with pytest.raises(AssertionError, match="returned shape .* torch.int64, expected .* torch.bool"):
        ch04.check_window_block_mask(lambda *args: window_blocks_right(*args).long())
    with pytest.raises(AssertionError, match="returned 2 value"):
        ch04.check_online_softmax_update(lambda m, l, acc, s, v: softmax_step_right(m, l, acc, s, v)[:2])


