"""Memory, FLOPs and the bytes of one decode step, computed from a :class:`ModelSpec`.

A mixin, so the formulas read as methods of the spec (``spec.flops_per_token(4096)``) while
the parameter counting stays in :mod:`tutx.scaling.spec`. For a mixture of experts the weights
in memory are *all* experts, while FLOPs and the bytes a decode step reads follow the experts
the router picks.
"""
from __future__ import annotations

from tutx._validate import check_bool, check_int, check_positive, check_positive_int
from tutx.scaling.units import dtype_bytes, kv_cache_bytes


class SpecCosts:
    """Cost formulas of :class:`~tutx.scaling.ModelSpec` (a mixin; the fields live there)."""

    # ---- memory ------------------------------------------------------------------------
    def _decoder_only(self, what: str) -> None:
        if not self.decoder:
            raise ValueError(f"{what}: {self.name} is an encoder ({self.family}); it has no KV cache or decode step")

    def kv_cache_bytes_per_token(self, dtype: str = "bf16") -> float:
        """K and V of one token in every layer; GQA shrinks it by num_heads / num_kv_heads.

        Sliding windows (Mistral-7B-v0.1's 4096, Gemma 2's local layers) are ignored: every
        position is counted, as a cache that keeps the whole context does.
        """
        self._decoder_only("kv_cache_bytes_per_token")
        return kv_cache_bytes(self.num_layers, self.num_kv_heads, self.head_dim, 1, 1, dtype_bytes(dtype))

    def kv_cache_bytes(self, batch: int, seq_len: int, dtype: str = "bf16") -> float:
        """KV cache for ``batch`` sequences of ``seq_len`` tokens."""
        check_positive_int("batch", batch)
        check_int("seq_len", seq_len, minimum=0)
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
        check_positive_int("batch", batch)
        check_positive_int("seq_len", seq_len)
        check_bool("training", training)
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

        N is :attr:`active_non_embedding_params` — every weight but the embedding tables and the
        lm_head, counting only the experts a token is routed to — each used once in a
        multiply-add (2 FLOPs). The second term is attention's QKᵀ and AV: for one (query, key)
        pair each costs ``2·d_attn`` FLOPs (``d_attn`` = heads × head_dim), 4·d_attn together;
        a causal token attends to ``seq_len/2`` keys on average, hence ``2·n_layer·seq_len·d_attn``.
        An encoder (BERT) attends to all ``seq_len`` keys, so for it the term doubles.
        Training (forward + backward) is 3× forward.
        """
        check_int("seq_len", seq_len, minimum=0)
        check_bool("training", training)
        d_attn = self.num_heads * self.head_dim
        attention = 2 * self.num_layers * seq_len * d_attn * (1 if self.decoder else 2)
        forward = 2 * self.active_non_embedding_params + attention
        return 3 * forward if training else forward

    def training_flops(self, tokens: float, seq_len: int) -> float:
        """FLOPs to train on ``tokens`` tokens in sequences of ``seq_len`` (≈ 6·N·D)."""
        check_positive("tokens", tokens)
        return tokens * self.flops_per_token(seq_len, training=True)

    # ---- one decode step ---------------------------------------------------------------
    @property
    def decode_weight_params(self) -> int:
        """Weights one decode step of one sequence reads: all but the input tables, of which it
        reads one row, and only the experts its token is routed to.

        The lm_head matrix is always read — with tied embeddings it *is* the token table.
        """
        self._decoder_only("decode_weight_params")
        return self.active_non_embedding_params + self.vocab_size * self.hidden_size

    def decode_weight_params_at(self, batch: int) -> float:
        """Weights read by a decode step of ``batch`` sequences (read once, shared by the batch).

        Dense models read the same weights at any batch. In a mixture of experts each token
        picks ``k`` of ``E`` experts; with routing spread evenly an expert is left unread by all
        ``batch`` tokens with probability ``(1 − k/E)^batch``, so a step reads the expected
        ``E·(1 − (1 − k/E)^batch)`` experts per MoE layer: ``k`` at batch 1, nearly all at large
        batches (an estimate: real routers are less even).
        """
        check_positive_int("batch", batch)
        base = self.decode_weight_params
        if not self.num_experts:
            return base
        e, k = self.num_experts, self.experts_per_token
        touched = e * (1 - (1 - k / e) ** batch)
        return base + self.expert_params / e * (touched - k)

    def decode_flops_per_token(self, context_len: int = 0) -> float:
        """FLOPs to decode one token: 2 per weight it uses, plus QKᵀ and AV over the context."""
        check_int("context_len", context_len, minimum=0)
        attention = 4 * self.num_layers * context_len * self.num_heads * self.head_dim
        return 2 * self.decode_weight_params + attention

    def decode_bytes_per_step(self, dtype="bf16", context_len=0, batch=1, kv_dtype=None) -> float:
        """Bytes read by one decode step of ``batch`` sequences, each with ``context_len`` cached.

        Weights are read once per step and shared by the batch (for experts, see
        :meth:`decode_weight_params_at`); every sequence reads its own KV cache (in
        ``kv_dtype``, default ``dtype``).
        """
        check_positive_int("batch", batch)
        check_int("context_len", context_len, minimum=0)
        kv = self.kv_cache_bytes_per_token(kv_dtype or dtype) * context_len * batch
        return self.decode_weight_params_at(batch) * dtype_bytes(dtype) + kv

    def decode_bytes_per_token(self, dtype="bf16", context_len=0, batch=1, kv_dtype=None) -> float:
        """Bytes read per token generated: one step's bytes shared by the ``batch`` tokens."""
        return self.decode_bytes_per_step(dtype, context_len, batch, kv_dtype) / batch

    def decode_intensity(self, dtype="bf16", batch=1, context_len=0, kv_dtype=None) -> float:
        """Arithmetic intensity of a decode step (FLOP/byte): about ``2·batch / bytes_per_weight``."""
        flops = batch * self.decode_flops_per_token(context_len)
        return flops / self.decode_bytes_per_step(dtype, context_len, batch, kv_dtype)
