"""The C glue of a Llama layer (tutx/kernels/csrc/llama_cpu_ops.c) against its references and Hugging Face.

Built with the system C compiler on first use (tutx.kernels.cpu_build); skipped without one.
"""
import zlib

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from tutx.kernels import cpu_build
from tutx.kernels import llama_cpu_ops as lco
from tutx.kernels.llama_cpu_ops import (
    add_rms_norm_cpu,
    add_rms_norm_ref,
    rope_store_cpu,
    rope_store_ref,
    silu_mul_cpu,
    silu_mul_ref,
)
from tutx.kernels.paged_decode_cpu import transpose_keys

pytestmark = pytest.mark.skipif(cpu_build.compiler() is None, reason="no C compiler to build the CPU kernels")

TOL = dict(atol=1e-5, rtol=1e-5)
BLOCK = 16


def gen(*key):
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


@pytest.fixture
def threads(request):
    """``torch.set_num_threads(param)`` for the test; the previous count restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(n)


def rotary_tables(positions, d, base=10000.0):
    """Hugging Face's cos/sin ``[T, D]`` (frequencies repeated: the "rotate_half" layout)."""
    inv_freq = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    freqs = positions.float()[:, None] * inv_freq[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().contiguous(), emb.sin().contiguous()


def make_rope(t, hq, hkv, d, spare_blocks=2):
    """qkv, cos, sin, NaN-filled pools and distinct random slots for ``t`` tokens."""
    g = gen("rope", t, hq, hkv, d)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g)
    positions = torch.randint(0, 4096, (t,), generator=g)
    cos, sin = rotary_tables(positions, d)
    num_blocks = -(-t // BLOCK) + spare_blocks
    k_pool = torch.full((num_blocks, BLOCK, hkv, d), float("nan"))
    v_pool = torch.full((num_blocks, BLOCK, hkv, d), float("nan"))
    slots = torch.randperm(num_blocks * BLOCK, generator=g)[:t].contiguous()
    return qkv, cos, sin, k_pool, v_pool, slots


# --- add + RMSNorm ---------------------------------------------------------------------------------

def check_add_rms_norm(t, hidden, with_x):
    g = gen("norm", t, hidden, with_x)
    h = torch.randn(t, hidden, generator=g)
    x = torch.randn(t, hidden, generator=g) if with_x else None
    weight = 1 + 0.1 * torch.randn(hidden, generator=g)
    h0, x0, w0 = h.clone(), None if x is None else x.clone(), weight.clone()
    h_ref = h.clone()
    ref = add_rms_norm_ref(h_ref, None if x is None else x.clone(), weight, 1e-6)
    out = add_rms_norm_cpu(h, x, weight, 1e-6)
    assert out.shape == (t, hidden) and out.dtype == torch.float32 and out.data_ptr() != h.data_ptr()
    torch.testing.assert_close(out, ref, **TOL)
    assert torch.equal(h, h0 + x0 if with_x else h0)  # h += x in place (or left alone), exactly
    assert torch.equal(h, h_ref)
    assert torch.equal(weight, w0) and (x is None or torch.equal(x, x0))


@pytest.mark.parametrize("with_x", [False, True], ids=["x=None", "with_x"])
@pytest.mark.parametrize("hidden", [64, 256])
@pytest.mark.parametrize("t", [1, 7, 300])
def test_add_rms_norm_matches_ref(t, hidden, with_x):
    check_add_rms_norm(t, hidden, with_x)


# --- rotary + KV write -----------------------------------------------------------------------------

def check_rope_store(t, hq, hkv, d):
    qkv, cos, sin, k_pool, v_pool, slots = make_rope(t, hq, hkv, d)
    qkv0 = qkv.clone()
    qkv_ref, k_ref, v_ref = qkv.clone(), k_pool.clone(), v_pool.clone()
    rope_store_ref(qkv_ref, cos, sin, k_ref, v_ref, slots, hq, hkv)
    assert rope_store_cpu(qkv, cos, sin, k_pool, v_pool, slots, hq, hkv) is None

    nq, nk = hq * d, hkv * d
    torch.testing.assert_close(qkv[:, :nq + nk], qkv_ref[:, :nq + nk], **TOL)  # q and k rotated in place
    assert torch.equal(qkv[:, nq + nk:], qkv0[:, nq + nk:])  # v untouched
    # Exactly the given slots written, with this call's rotated k and its v; every other slot still NaN.
    k_rows, v_rows = k_pool.view(-1, hkv, d), v_pool.view(-1, hkv, d)
    assert torch.equal(k_rows[slots], qkv[:, nq:nq + nk].view(t, hkv, d))
    assert torch.equal(v_rows[slots], qkv0[:, nq + nk:].view(t, hkv, d))
    written = torch.zeros(k_rows.shape[0], dtype=torch.bool)
    written[slots] = True
    assert k_rows[~written].isnan().all() and v_rows[~written].isnan().all()
    torch.testing.assert_close(k_pool, k_ref, equal_nan=True, **TOL)
    torch.testing.assert_close(v_pool, v_ref, equal_nan=True, **TOL)


HEADS = [  # Hq, Hkv, D
    (4, 4, 32),  # MHA
    (8, 2, 64),  # GQA, group 4
    (6, 2, 48),  # GQA, head dim not a power of two
    (4, 1, 48),  # MQA
]


@pytest.mark.parametrize("hq,hkv,d", HEADS, ids=lambda v: str(v))
@pytest.mark.parametrize("t", [1, 7, 300])
def test_rope_store_matches_ref(t, hq, hkv, d):
    check_rope_store(t, hq, hkv, d)


@pytest.mark.parametrize("hq,hkv,d", HEADS[:2], ids=lambda v: str(v))
def test_rope_store_writes_transposed_keys(hq, hkv, d):
    """keys_transposed=True: the same keys, in the layout [num_blocks, Hkv, D, block_size]."""
    qkv, cos, sin, k_rows, v_pool, slots = make_rope(40, hq, hkv, d)
    qkv_t, k_t, v_t = qkv.clone(), transpose_keys(k_rows), v_pool.clone()
    rope_store_cpu(qkv, cos, sin, k_rows, v_pool, slots, hq, hkv)
    rope_store_cpu(qkv_t, cos, sin, k_t, v_t, slots, hq, hkv, keys_transposed=True)
    assert torch.equal(qkv_t, qkv)
    torch.testing.assert_close(v_t, v_pool, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(k_t, transpose_keys(k_rows), equal_nan=True, atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"^k_pool: expected shape"):
        rope_store_cpu(qkv, cos, sin, k_rows, v_pool, slots, hq, hkv, keys_transposed=True)  # keys in rows


# --- SiLU-and-multiply -----------------------------------------------------------------------------

def check_silu_mul(t, inter):
    gate_up = torch.randn(t, 2 * inter, generator=gen("silu", t, inter)) * 3
    gate_up0 = gate_up.clone()
    out = silu_mul_cpu(gate_up)
    assert out.shape == (t, inter) and out.dtype == torch.float32
    torch.testing.assert_close(out, silu_mul_ref(gate_up), **TOL)
    assert torch.equal(gate_up, gate_up0)


@pytest.mark.parametrize("inter", [64, 172, 256])  # 172: a vector tail
@pytest.mark.parametrize("t", [1, 7, 300])
def test_silu_mul_matches_ref(t, inter):
    check_silu_mul(t, inter)


def test_silu_mul_large_negative_and_positive_gates():
    """Gates far below -88 (where exp(-gate) overflows) give silu = -0, not NaN, in every lane."""
    values = torch.tensor([-1e4, -1000.0, -100.0, -89.0, -88.0, -50.0, -10.0, 0.0, 10.0, 50.0, 100.0, 1000.0])
    gate = values.repeat(2, 16)[:, torch.randperm(192, generator=gen("perm"))]  # [2, 192]: vector and tail
    gate_up = torch.cat((gate, torch.randn(2, 192, generator=gen("up"))), dim=1)
    out = silu_mul_cpu(gate_up)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, silu_mul_ref(gate_up), **TOL)


# --- threads and the OpenMP threshold --------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_large_inputs_across_the_parallel_threshold(threads):
    assert torch.get_num_threads() == threads
    check_add_rms_norm(2000, 256, True)  # 2000 x 256 >= 32768: parallel when threads > 1
    check_add_rms_norm(2000, 256, False)
    check_rope_store(2000, 4, 2, 32)  # row (4 + 2 * 2) * 32 = 256
    check_silu_mul(2000, 256)
    check_rope_store(7, 8, 2, 64)  # small ones stay serial
    check_silu_mul(7, 64)



# --- Hugging Face's own modules --------------------------------------------------------------------

@pytest.fixture(scope="module")
def config():
    return LlamaConfig(hidden_size=128, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=1, max_position_embeddings=1024, rms_norm_eps=1e-5, vocab_size=32)


@pytest.mark.parametrize("t", [1, 7, 300])
def test_rotary_matches_hugging_face(config, t):
    hq, hkv = config.num_attention_heads, config.num_key_value_heads
    d = config.hidden_size // hq
    g = gen("hf-rope", t)
    positions = torch.randint(0, config.max_position_embeddings, (t,), generator=g)
    rotary = LlamaRotaryEmbedding(config=config)
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions[None])  # [1, T, D] each
    cos, sin = cos[0].contiguous(), sin[0].contiguous()
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g)
    q = qkv[:, :hq * d].view(t, hq, d).transpose(0, 1)[None]  # [1, Hq, T, D]
    k = qkv[:, hq * d:(hq + hkv) * d].view(t, hkv, d).transpose(0, 1)[None]
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    num_blocks = -(-t // BLOCK) + 1
    k_pool = torch.full((num_blocks, BLOCK, hkv, d), float("nan"))
    v_pool = k_pool.clone()
    slots = torch.arange(t)
    rope_store_cpu(qkv, cos, sin, k_pool, v_pool, slots, hq, hkv)
    torch.testing.assert_close(qkv[:, :hq * d].view(t, hq, d), q_hf[0].transpose(0, 1), **TOL)
    torch.testing.assert_close(qkv[:, hq * d:(hq + hkv) * d].view(t, hkv, d), k_hf[0].transpose(0, 1), **TOL)
    torch.testing.assert_close(k_pool.view(-1, hkv, d)[:t], k_hf[0].transpose(0, 1), **TOL)


@pytest.mark.parametrize("t", [1, 300])
def test_rms_norm_matches_hugging_face(config, t):
    norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
    g = gen("hf-norm", t)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.1 * torch.randn(config.hidden_size, generator=g))
        h, x = torch.randn(t, config.hidden_size, generator=g), torch.randn(t, config.hidden_size, generator=g)
        expected = norm(h + x)
        out = add_rms_norm_cpu(h, x, norm.weight.detach(), norm.variance_epsilon)
    torch.testing.assert_close(out, expected, **TOL)


@pytest.mark.parametrize("t", [1, 300])
def test_silu_mul_matches_hugging_face_mlp(config, t):
    torch.manual_seed(0)
    mlp = LlamaMLP(config)
    x = torch.randn(t, config.hidden_size, generator=gen("hf-mlp", t))
    with torch.no_grad():
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)
        act = silu_mul_cpu(torch.cat((gate, up), dim=1))
        torch.testing.assert_close(act, mlp.act_fn(gate) * up, **TOL)
        torch.testing.assert_close(mlp.down_proj(act), mlp(x), **TOL)


# --- errors ----------------------------------------------------------------------------------------

def test_add_rms_norm_bad_inputs_raise():
    h, x, w = torch.randn(3, 64), torch.randn(3, 64), torch.ones(64)
    with pytest.raises(TypeError, match=r"^h: .*float32"):
        add_rms_norm_cpu(h.double(), None, w, 1e-6)
    with pytest.raises(TypeError, match=r"^x: .*bfloat16"):
        add_rms_norm_cpu(h, x.bfloat16(), w, 1e-6)
    with pytest.raises(TypeError, match=r"^h: .*not contiguous"):
        add_rms_norm_cpu(torch.randn(64, 3).t(), None, w, 1e-6)
    with pytest.raises(TypeError, match=r"^weight: .*not contiguous"):
        add_rms_norm_cpu(h, x, torch.ones(64, 2)[:, 0], 1e-6)
    with pytest.raises(ValueError, match=r"^weight: .*\(64,\)"):
        add_rms_norm_cpu(h, x, torch.ones(65), 1e-6)
    with pytest.raises(ValueError, match=r"^x: "):
        add_rms_norm_cpu(h, torch.randn(4, 64), w, 1e-6)
    with pytest.raises(ValueError, match=r"^h: .*2-D"):
        add_rms_norm_cpu(torch.randn(2, 3, 64), None, w, 1e-6)
    with pytest.raises(TypeError, match=r"^h: .*meta"):
        add_rms_norm_cpu(h.to("meta"), None, w, 1e-6)


def test_rope_store_bad_inputs_raise():
    args = make_rope(5, 4, 2, 32)
    qkv, cos, sin, k_pool, v_pool, slots = args

    def call(**kw):
        a = dict(zip(("qkv", "cos", "sin", "k_pool", "v_pool", "slots"), args), num_heads=4, num_kv_heads=2)
        rope_store_cpu(**{**a, **kw})

    with pytest.raises(TypeError, match=r"^qkv: .*float32"):
        call(qkv=qkv.double())
    with pytest.raises(TypeError, match=r"^cos: .*not contiguous"):
        call(cos=torch.randn(32, 5).t())
    with pytest.raises(TypeError, match=r"^v_pool: .*float16"):
        call(v_pool=v_pool.half())
    with pytest.raises(ValueError, match=r"^sin: "):
        call(sin=sin[:4].contiguous())
    with pytest.raises(ValueError, match=r"^qkv: "):
        call(qkv=torch.randn(5, 8 * 32 + 1))  # not (Hq + 2 Hkv) * D wide
    with pytest.raises(ValueError, match=r"^qkv: .*even"):
        rope_store_cpu(torch.randn(5, 3 * 33), torch.ones(5, 33), torch.ones(5, 33), torch.zeros(2, 4, 1, 33),
                       torch.zeros(2, 4, 1, 33), slots, 1, 1)
    with pytest.raises(ValueError, match=r"^qkv: .*2-D"):
        call(qkv=qkv.view(5, 8, 32))
    with pytest.raises(ValueError, match=r"^k_pool: "):
        call(k_pool=torch.zeros(k_pool.shape[0], BLOCK, 1, 64), v_pool=torch.zeros(k_pool.shape[0], BLOCK, 1, 64))
    with pytest.raises(ValueError, match=r"^v_pool: "):
        call(v_pool=v_pool[:1].contiguous())
    with pytest.raises(ValueError, match=r"^slots: .*int32"):
        call(slots=slots.int())
    with pytest.raises(ValueError, match=r"^slots: "):
        call(slots=slots[:4].contiguous())
    num_slots = k_pool.shape[0] * BLOCK
    for bad in (num_slots, -1):
        wrong = slots.clone()
        wrong[3] = bad
        qkv0 = qkv.clone()
        with pytest.raises(ValueError, match=rf"^slots: slot {bad} of token 3 is outside the pools' {num_slots}"):
            call(slots=wrong)
        assert torch.equal(qkv, qkv0) and k_pool.isnan().all() and v_pool.isnan().all()  # nothing touched


def test_silu_mul_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"^gate_up: .*even"):
        silu_mul_cpu(torch.randn(3, 63))
    with pytest.raises(TypeError, match=r"^gate_up: .*float16"):
        silu_mul_cpu(torch.randn(3, 64).half())
    with pytest.raises(TypeError, match=r"^gate_up: .*not contiguous"):
        silu_mul_cpu(torch.randn(64, 3).t())
    with pytest.raises(ValueError, match=r"^gate_up: .*2-D"):
        silu_mul_cpu(torch.randn(64))


# --- the build ---------------------------------------------------------------------------------------

def test_builds_into_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TUTX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_build, "_loaded", {})  # restored by monkeypatch
    monkeypatch.setattr(cpu_build, "_failed", {})
    lco._lib.cache_clear()
    try:
        check_silu_mul(3, 64)
        assert len(list((tmp_path / "cpu_kernels").glob("llama_cpu_ops-*.so"))) == 1
    finally:
        lco._lib.cache_clear()


# --- greedy argmax -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (48, 4096), (2, 100_000)])
def test_argmax_rows_matches_torch(shape):
    x = torch.randn(*shape, generator=gen("argmax", *shape))
    assert lco.argmax_rows_cpu(x) == x.argmax(-1).tolist()


def test_argmax_rows_ties_infinities_zeros_and_nan_as_torch():
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[nan] * 5, [1.0, nan, inf, 0, 0], [-inf] * 4 + [-1e30], [-inf] * 5,
                      [-0.0, 0.0, -1.0, 0.0, -0.0], [-5.0, -0.0, -3.0, 0.0, 0.0], [3.0] * 5,
                      [inf, 1, inf, 0, 0], [-2.0, -1.0, -nan, 0, 0]])
    assert lco.argmax_rows_cpu(x) == x.argmax(-1).tolist() == [0, 1, 4, 0, 0, 1, 0, 0, 2]
    with pytest.raises(TypeError, match=r"^x: "):
        lco.argmax_rows_cpu(x.double())
    with pytest.raises(ValueError, match=r"^x: "):
        lco.argmax_rows_cpu(torch.zeros(2, 0))
