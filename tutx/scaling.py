"""Chapter 1's calculators: parameters, memory, KV cache, FLOPs, decode ceilings and cost.

Everything here is arithmetic on a :class:`ModelSpec` read from a Hugging Face config, so a
reader can size an 8B model on a laptop without downloading it. Parameter counts are exact
(the tests compare them with ``transformers`` models built on the meta device); the memory
and FLOP figures are the standard estimates, each documented where it is computed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from tutx.hardware import HARDWARE, Hardware, get_hardware

__all__ = [
    "DTYPE_BYTES", "ModelSpec", "Hardware", "HARDWARE", "get_hardware", "dtype_bytes",
    "kv_cache_bytes", "memory_bound_tokens_per_s", "decode_ceiling", "memory_bound_batch",
    "cost_per_million_tokens",
]

#: Bytes per element when stored. tf32 is fp32 data (tensor cores only round the math).
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3")
FAMILIES = LLAMA_LIKE + ("gpt2", "bert")


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype`` (a name from :data:`DTYPE_BYTES`)."""
    if not isinstance(dtype, str):
        raise TypeError(f"dtype={dtype!r}: expected a dtype name such as 'bf16'")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r}: unknown dtype; known: {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")


def _check_number(name: str, value, positive: bool = True) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or not (value > 0 if positive else value >= 0):
        raise ValueError(f"{name}={value!r}: expected a {'positive number' if positive else 'number >= 0'}")


def kv_cache_bytes(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem) -> float:
    """K and V for every layer, KV head and position: ``2·L·kv·d·batch·seq·bytes``."""
    return 2 * num_layers * num_kv_heads * head_dim * batch * seq_len * bytes_per_elem


@dataclass(frozen=True, repr=False)
class ModelSpec:
    """The shape of a transformer, enough to count its parameters, bytes and FLOPs.

    Build it with :meth:`from_config`. The flags describe where the families differ: Llama-style
    models have a gated (SwiGLU) MLP, RMSNorm and rotary positions; GPT-2 and BERT have learned
    positions, LayerNorm with bias and biases on every linear layer.
    """

    name: str
    family: str  # model_type: llama, mistral, qwen2, qwen3, gpt2 or bert
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    tie_embeddings: bool = False
    gated_mlp: bool = True  # SwiGLU: gate, up and down projections
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k
    norm_bias: bool = False  # LayerNorm has a bias, RMSNorm does not
    final_norm: bool = True
    position_embeddings: int = 0  # rows of a learned position table (0: rotary)
    token_type_embeddings: int = 0  # BERT's segment table
    embedding_norm: bool = False  # BERT normalises the summed embeddings
    lm_head: bool = True  # BertModel has none
    pooler: bool = False

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name={self.name!r}: expected a non-empty string")
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: expected one of {', '.join(FAMILIES)}")
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                  "head_dim", "intermediate_size"):
            _check_int(f, getattr(self, f))
        for f in ("position_embeddings", "token_type_embeddings"):
            _check_int(f, getattr(self, f), minimum=0)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads}: expected a divisor of num_heads={self.num_heads}"
            )

    @classmethod
    def from_config(cls, config, name: str | None = None) -> "ModelSpec":
        """Read a Hugging Face config (a ``PretrainedConfig`` or its dict) — no download needed."""
        if hasattr(config, "to_dict"):
            config = config.to_dict()
        if not isinstance(config, Mapping):
            raise TypeError(f"config: expected a transformers config or a dict, got {type(config).__name__}")

        def get(key, default=None, required=False):
            value = config.get(key)
            if value is None:
                if required:
                    raise ValueError(f"config is missing the required field {key!r}")
                return default
            return value

        family = get("model_type", required=True)
        if family not in FAMILIES:
            raise ValueError(f"model_type={family!r}: unsupported; supported: {', '.join(FAMILIES)}")
        name = name or family
        if family == "gpt2":
            h, heads = get("n_embd", required=True), get("n_head", required=True)
            return cls(
                name, family, get("vocab_size", required=True), h, get("n_layer", required=True),
                heads, heads, _head_dim(h, heads), get("n_inner", 4 * h),
                tie_embeddings=get("tie_word_embeddings", True), gated_mlp=False, qkv_bias=True,
                out_bias=True, mlp_bias=True, norm_bias=True,
                position_embeddings=get("n_positions", required=True),
            )
        h, heads = get("hidden_size", required=True), get("num_attention_heads", required=True)
        common = dict(
            name=name, family=family, vocab_size=get("vocab_size", required=True), hidden_size=h,
            num_layers=get("num_hidden_layers", required=True), num_heads=heads,
            intermediate_size=get("intermediate_size", required=True),
        )
        if family == "bert":
            return cls(
                **common, num_kv_heads=heads, head_dim=_head_dim(h, heads), gated_mlp=False,
                qkv_bias=True, out_bias=True, mlp_bias=True, norm_bias=True, final_norm=False,
                position_embeddings=get("max_position_embeddings", required=True),
                token_type_embeddings=get("type_vocab_size", required=True),
                embedding_norm=True, lm_head=False, pooler=True,
            )
        bias = bool(get("attention_bias", False))
        return cls(
            **common, num_kv_heads=get("num_key_value_heads", heads),
            head_dim=get("head_dim") or (128 if family == "qwen3" else _head_dim(h, heads)),
            tie_embeddings=bool(get("tie_word_embeddings", False)),
            qkv_bias=True if family == "qwen2" else bias,  # Qwen2: bias on q, k, v only
            out_bias=bias and family in ("llama", "qwen3"),
            mlp_bias=bool(get("mlp_bias", False)) and family == "llama",
            qk_norm=family == "qwen3",
        )

    # ---- parameters -------------------------------------------------------------------
    def param_breakdown(self) -> dict[str, int]:
        """Parameters by part; a tied lm_head shares the embedding matrix and counts 0."""
        h, L, d = self.hidden_size, self.num_layers, self.head_dim
        q, kv, i = self.num_heads * d, self.num_kv_heads * d, self.intermediate_size
        norm = h * (2 if self.norm_bias else 1)
        attention = h * q + 2 * h * kv + q * h
        attention += (q + 2 * kv) * self.qkv_bias + h * self.out_bias
        mlp = (3 if self.gated_mlp else 2) * h * i
        mlp += ((2 if self.gated_mlp else 1) * i + h) * self.mlp_bias
        norms = L * (2 * norm + 2 * d * self.qk_norm) + norm * (self.final_norm + self.embedding_norm)
        parts = {
            "embeddings": (self.vocab_size + self.position_embeddings + self.token_type_embeddings) * h,
            "attention": L * attention,
            "mlp": L * mlp,
            "norms": norms,
            "lm_head": self.vocab_size * h if self.lm_head and not self.tie_embeddings else 0,
        }
        if self.pooler:
            parts["pooler"] = h * h + h
        return parts

    @property
    def n_params(self) -> int:
        """Exact parameter count, tied weights counted once (as ``model.parameters()`` does)."""
        return sum(self.param_breakdown().values())

    @property
    def non_embedding_params(self) -> int:
        """Kaplan et al.'s N: everything but the vocabulary and position tables and the lm_head."""
        parts = self.param_breakdown()
        return self.n_params - parts["embeddings"] - parts["lm_head"]

    def weight_bytes(self, dtype: str = "bf16") -> float:
        """Bytes to store all weights in ``dtype`` (int4: 0.5 B, ignoring group scales)."""
        return self.n_params * dtype_bytes(dtype)

    # ---- memory ------------------------------------------------------------------------
    def _decoder_only(self, what: str) -> None:
        if self.family == "bert":
            raise ValueError(f"{what}: {self.name} is an encoder (BERT); it has no KV cache or decode step")

    def kv_cache_bytes_per_token(self, dtype: str = "bf16") -> float:
        """K and V of one token in every layer; GQA shrinks it by num_heads / num_kv_heads.

        Sliding windows (Mistral-7B-v0.1's 4096) are ignored: every position is counted.
        """
        self._decoder_only("kv_cache_bytes_per_token")
        return kv_cache_bytes(self.num_layers, self.num_kv_heads, self.head_dim, 1, 1, dtype_bytes(dtype))

    def kv_cache_bytes(self, batch: int, seq_len: int, dtype: str = "bf16") -> float:
        """KV cache for ``batch`` sequences of ``seq_len`` tokens."""
        _check_int("batch", batch)
        _check_int("seq_len", seq_len, minimum=0)
        return self.kv_cache_bytes_per_token(dtype) * batch * seq_len

    def activation_bytes(self, batch: int, seq_len: int, dtype: str = "bf16", training: bool = True) -> float:
        """Activation memory of a forward pass over ``batch × seq_len`` tokens.

        ``training=True``: what backward needs stored, Korthikanti et al. 2022 ("Reducing
        Activation Recomputation in Large Transformer Models", eq. 1): per layer
        ``s·b·h·(34 + 5·a·s/h)`` bytes for 16-bit activations, no recomputation, no tensor or
        sequence parallelism, eager attention. Of those, ``2·sbh + a·s²·b`` are one-byte dropout
        masks, the rest are 2-byte elements; for another dtype of ``e`` bytes we keep the masks
        and scale the elements: ``sbh·(16e + 2) + a·s²·b·(2e + 1)``. It covers the transformer
        layers only (not embeddings or logits) and assumes a 4h GeLU MLP, as the paper does.

        ``training=False``: the peak working set of one layer's forward, since inference frees
        each layer's activations: the residual and its normalised copy (``2·sbh``) plus the
        larger of attention — q, k, v, the ``s×s`` scores and probabilities (eager attention;
        FlashAttention never materialises them) and the output — and MLP — 3 tensors of
        ``s·b·i`` for a gated MLP (activated gate, up, product), 2 otherwise.
        """
        _check_int("batch", batch)
        _check_int("seq_len", seq_len)
        e = dtype_bytes(dtype)
        s, b, h, a = seq_len, batch, self.hidden_size, self.num_heads
        if training:
            return self.num_layers * (s * b * h * (16 * e + 2) + a * s * s * b * (2 * e + 1))
        q, kv = a * self.head_dim, self.num_kv_heads * self.head_dim
        attention = s * b * (q + 2 * kv) + 2 * b * a * s * s + s * b * q
        mlp = (3 if self.gated_mlp else 2) * s * b * self.intermediate_size
        return e * (2 * s * b * h + max(attention, mlp))

    # ---- FLOPs -------------------------------------------------------------------------
    def flops_per_token(self, seq_len: int, training: bool = False) -> float:
        """Kaplan et al. 2020 (Table 1): forward ``2·N + 2·n_layer·seq_len·d_attn``.

        N is :attr:`non_embedding_params`; the second term is attention's QKᵀ and AV — each
        ``2·d_attn`` FLOPs per (query, key) pair, averaged over a causal context of
        ``seq_len/2``. BERT attends to all ``seq_len`` positions, so for it the term doubles.
        Training (forward + backward) is 3× forward. Like Kaplan, we leave out the lm_head.
        """
        _check_int("seq_len", seq_len, minimum=0)
        d_attn = self.num_heads * self.head_dim
        attention = 2 * self.num_layers * seq_len * d_attn * (2 if self.family == "bert" else 1)
        forward = 2 * self.non_embedding_params + attention
        return 3 * forward if training else forward

    def training_flops(self, tokens: float, seq_len: int) -> float:
        """FLOPs to train on ``tokens`` tokens in sequences of ``seq_len`` (≈ 6·N·D)."""
        _check_number("tokens", tokens)
        return tokens * self.flops_per_token(seq_len, training=True)

    # ---- one decode step ---------------------------------------------------------------
    @property
    def decode_weight_params(self) -> int:
        """Weights one decode step reads: all but the input tables, of which it reads one row.

        The lm_head matrix is always read — with tied embeddings it *is* the token table.
        """
        self._decoder_only("decode_weight_params")
        return self.non_embedding_params + self.vocab_size * self.hidden_size

    def decode_flops_per_token(self, context_len: int = 0) -> float:
        """FLOPs to decode one token: 2 per weight read, plus QKᵀ and AV over the context."""
        _check_int("context_len", context_len, minimum=0)
        attention = 4 * self.num_layers * context_len * self.num_heads * self.head_dim
        return 2 * self.decode_weight_params + attention

    def decode_bytes_per_step(self, dtype="bf16", context_len=0, batch=1, kv_dtype=None) -> float:
        """Bytes read by one decode step of ``batch`` sequences, each with ``context_len`` cached.

        Weights are read once per step and shared by the batch; every sequence reads its own
        KV cache (in ``kv_dtype``, default ``dtype``).
        """
        _check_int("batch", batch)
        _check_int("context_len", context_len, minimum=0)
        kv = self.kv_cache_bytes_per_token(kv_dtype or dtype) * context_len * batch
        return self.decode_weight_params * dtype_bytes(dtype) + kv

    def decode_bytes_per_token(self, dtype="bf16", context_len=0, batch=1, kv_dtype=None) -> float:
        """Bytes read per token generated: one step's bytes shared by the ``batch`` tokens."""
        return self.decode_bytes_per_step(dtype, context_len, batch, kv_dtype) / batch

    def decode_intensity(self, dtype="bf16", batch=1, context_len=0, kv_dtype=None) -> float:
        """Arithmetic intensity of a decode step (FLOP/byte): about ``2·batch / bytes_per_weight``."""
        flops = batch * self.decode_flops_per_token(context_len)
        return flops / self.decode_bytes_per_step(dtype, context_len, batch, kv_dtype)

    # ---- display -----------------------------------------------------------------------
    def summary(self) -> str:
        """One line a reader can check against the model card."""
        if self.num_kv_heads == self.num_heads:
            attn = f"MHA {self.num_heads} heads"
        else:
            kind = "MQA" if self.num_kv_heads == 1 else "GQA"
            attn = f"{kind} {self.num_heads}/{self.num_kv_heads} heads"
        mlp = "SwiGLU" if self.gated_mlp else "GeLU"
        head = "no" if not self.lm_head else "tied" if self.tie_embeddings else "untied"
        return (
            f"{self.name}: {_human(self.n_params)} params, {self.num_layers} layers, hidden "
            f"{self.hidden_size}, {attn} (head_dim {self.head_dim}), {mlp} MLP "
            f"{self.intermediate_size}, vocab {self.vocab_size}, {head} lm_head"
        )

    def __repr__(self) -> str:
        return f"ModelSpec({self.name!r}, {_human(self.n_params)} params, {self.num_layers} layers)"


def _head_dim(hidden: int, heads: int) -> int:
    _check_int("hidden_size", hidden)
    _check_int("num_attention_heads", heads)
    if hidden % heads:
        raise ValueError(f"hidden_size={hidden}: expected a multiple of num_attention_heads={heads}")
    return hidden // heads


def _human(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


# ---- serving arithmetic ----------------------------------------------------------------
def _check_spec(spec) -> None:
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec (ModelSpec.from_config(cfg)), got {type(spec).__name__}")


def memory_bound_tokens_per_s(bytes_read_per_token: float, bandwidth_bytes_per_s: float) -> float:
    """If every token needs its bytes streamed from memory, bandwidth ÷ bytes is the ceiling."""
    _check_number("bytes_read_per_token", bytes_read_per_token)
    _check_number("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    return bandwidth_bytes_per_s / bytes_read_per_token


def decode_ceiling(spec: ModelSpec, hardware, dtype="bf16", batch=1, context_len=0,
                   kv_dtype=None, compute_dtype=None) -> float:
    """Upper bound on decode throughput (tokens/s summed over the batch).

    The memory bound is ``bandwidth ÷ bytes per step × batch``, the compute bound
    ``peak FLOP/s ÷ FLOPs per token``; the smaller one wins. ``compute_dtype`` (default
    ``dtype``) picks the peak rate — pass e.g. ``"fp16"`` for int4 weight-only kernels.
    """
    _check_spec(spec)
    hw = get_hardware(hardware)
    per_token = spec.decode_bytes_per_token(dtype, context_len, batch, kv_dtype)
    memory = memory_bound_tokens_per_s(per_token, hw.memory_bandwidth)
    compute = hw.peak(compute_dtype or dtype) / spec.decode_flops_per_token(context_len)
    return min(memory, compute)


def memory_bound_batch(spec: ModelSpec, hardware, dtype="bf16", context_len=0) -> int:
    """Smallest batch at which decode reaches the ridge point (stops being memory-bound).

    Intensity ``B·F / (W + B·K)`` grows with B towards ``F/K`` (F: FLOPs per token, W: weight
    bytes, K: KV bytes per sequence). If that limit is below the ridge, no batch gets there.
    """
    _check_spec(spec)
    hw = get_hardware(hardware)
    ridge = hw.ridge_point(dtype)
    flops, kv = spec.decode_flops_per_token(context_len), spec.decode_bytes_per_step(dtype, context_len, 1)
    weights = spec.decode_weight_params * dtype_bytes(dtype)
    kv -= weights
    if flops <= ridge * kv:
        raise ValueError(
            f"context_len={context_len}: decode of {spec.name} on {hw.name} stays memory-bound at "
            f"every batch (intensity tends to {flops / kv:.0f} < ridge {ridge:.0f} FLOP/byte)"
        )
    batch = max(1, math.ceil(ridge * weights / (flops - ridge * kv)))
    while batch > 1 and spec.decode_intensity(dtype, batch - 1, context_len) >= ridge:
        batch -= 1  # guard against rounding in the closed form
    while spec.decode_intensity(dtype, batch, context_len) < ridge:
        batch += 1
    return batch


def cost_per_million_tokens(tokens_per_s: float, dollars_per_hour: float) -> float:
    """Dollars per million tokens for a machine rented at ``dollars_per_hour``."""
    _check_number("tokens_per_s", tokens_per_s)
    _check_number("dollars_per_hour", dollars_per_hour, positive=False)
    return dollars_per_hour / (tokens_per_s * 3600) * 1e6

