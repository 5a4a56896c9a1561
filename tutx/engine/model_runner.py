"""Run a Hugging Face Llama-style model on a batch of sequences with a paged KV cache.

The model's own modules do the work — embedding, each layer's RMSNorms, q/k/v/o projections and
MLP, the rotary embedding, the final norm and ``lm_head`` — but attention is ours: it writes the
new keys/values into the pool slots given by the block tables and attends through them.

Batches are *flattened* (as in nano-vllm): a prefill of sequences of 7 and 12 new tokens is one
``[19, hidden]`` activation, with no padding; a decode step is ``[B, hidden]``, one token each.

KV pool: one tensor ``kv_cache [2, num_layers, num_blocks, block_size, Hkv, D]`` (K then V), so
layer ``l``'s pools are ``kv_cache[0, l]`` and ``kv_cache[1, l]`` of shape
``[num_blocks, block_size, Hkv, D]`` (see :mod:`tutx.kernels.paged_decode`). Block ids are
shared by all layers: the block manager hands out a block once for every layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tutx.engine.attention import gather_kv, store_kv, paged_decode_attention_sdpa, prefill_attention
from tutx.engine.sequence import Sequence
from tutx.kernels.paged_decode import check_block_tables, paged_decode_attention

from tutx.engine.config import BACKENDS, cdiv


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotary embedding as Hugging Face's Llama applies it (``cos``/``sin``: ``[T, D]``; q, k: ``[T, H, D]``)."""
    cos, sin = cos[:, None], sin[:, None]  # [T, 1, D]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


@dataclass
class AttentionMetadata:
    """One step's batch, flattened: what every layer's attention needs besides q, k and v.

    input_ids, positions, slots: ``[T]`` — the tokens computed, their positions, their pool slots.
    Prefill: ``spans`` (start, end, num_cached, block table tensor or None) per sequence and
    ``logit_rows`` (the rows whose logits are computed: each sequence's last, or all of a
    sequence that wants prompt logprobs). Decode: ``block_tables [B, max_blocks]`` and
    ``lengths [B]``, rows sorted longest first when ``groups`` is set: ``(start, end, width)``
    row ranges whose attention gathers only ``width`` blocks, and ``unsort`` maps the rows back.
    """

    is_prefill: bool
    input_ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    spans: list | None = None
    logit_rows: torch.Tensor | None = None
    block_tables: torch.Tensor | None = None
    lengths: torch.Tensor | None = None
    groups: list | None = None
    unsort: torch.Tensor | None = None


def check_model(model) -> None:
    inner = getattr(model, "model", None)
    need = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not hasattr(model, "lm_head") or not all(hasattr(inner, n) for n in need):
        raise TypeError(f"model: expected a Llama-style Hugging Face causal LM (model.model.embed_tokens, "
                        f".layers, .norm, .rotary_emb and model.lm_head), got {type(model).__name__}")
    for i, layer in enumerate(inner.layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim")):
            raise TypeError(f"model: layer {i} has no Llama-style self_attn (q_proj, k_proj, v_proj, o_proj)")
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            raise TypeError(f"model: layer {i} normalises q/k (Qwen3-style), which this runner does not implement")


class ModelRunner:
    """Owns the KV pool and turns scheduled sequences into next-token logits ``[B, V]``.

    ``attention_backend``: ``"sdpa"`` runs decode attention in PyTorch (gather the pages, one SDPA call),
    ``"triton"`` the :func:`~tutx.kernels.paged_decode.paged_decode_attention` wrapper (the kernel on
    CUDA, or on CPU under ``TRITON_INTERPRET=1``), ``"auto"`` the kernel on CUDA with fp16/bf16
    weights and SDPA otherwise (the interpreter is for tests, not a speed path). Sizes and the
    backend are trusted: :class:`~tutx.engine.EngineConfig` checked them.

    ``graph_sizes`` (a tuple of batch sizes, with ``max_model_len``) turns on static-shape decode
    steps (:mod:`tutx.engine.graphs`): CUDA graphs on CUDA, ``torch.compile`` elsewhere. The pool
    then has one scratch block more, for the padded rows.
    """

    def __init__(self, model, num_blocks: int, block_size: int, attention_backend: str = "auto",
                 decode_group_size: int | None = None, graph_sizes: tuple | None = None,
                 max_model_len: int | None = None):
        check_model(model)
        self.model = model
        self.block_size = block_size
        self.num_blocks = num_blocks
        cfg, layers = model.config, model.model.layers
        self.num_layers = len(layers)
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = layers[0].self_attn.head_dim
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        if attention_backend == "auto":
            fast = self.device.type == "cuda" and self.dtype in (torch.float16, torch.bfloat16)
            attention_backend = "triton" if fast else "sdpa"
        self.attention_backend = attention_backend
        # SDPA decode pads every row to the longest context of its group: groups of similar lengths pad less.
        self.decode_group_size = decode_group_size if attention_backend == "sdpa" else None
        self.max_model_len = max_model_len or cfg.max_position_embeddings
        self.graphs = None
        if graph_sizes:
            from tutx.engine.graphs import make_decode_graphs

            self.graphs = make_decode_graphs(self, graph_sizes, self.device)
            self.decode_group_size = None  # static shapes: one group as wide as the longest context
        extra = 1 if self.graphs is not None else 0  # the scratch block padded rows write to
        shape = (2, self.num_layers, num_blocks + extra, block_size, self.num_kv_heads, self.head_dim)
        self.kv_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)  # [2, L, N(+1), bs, Hkv, D]

    def __repr__(self) -> str:
        return (f"ModelRunner(model={type(self.model).__name__}, layers={self.num_layers}, "
                f"heads={self.num_heads}/{self.num_kv_heads} (q/kv), head_dim={self.head_dim}, "
                f"num_blocks={self.num_blocks}, block_size={self.block_size}, backend={self.attention_backend!r}, "
                f"kv_cache={self.kv_cache_bytes / 2**20:.1f} MiB {self.dtype} on {self.device}, "
                f"decode={'eager' if self.graphs is None else type(self.graphs).__name__})")

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache.numel() * self.kv_cache.element_size()

    def _tensor(self, values, dtype=torch.long) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    # -- batch preparation ---------------------------------------------------------------------
    def _prepare_prefill(self, seqs: list[Sequence]) -> AttentionMetadata:
        """Tokens ``num_cached_tokens .. len-1`` of every sequence, flattened."""
        ids, positions, slots, spans, rows, start, bs = [], [], [], [], [], 0, self.block_size
        for seq in seqs:
            new = range(seq.num_cached_tokens, len(seq))
            table = seq.block_table
            ids += seq.token_ids[seq.num_cached_tokens:]
            positions += new
            slots += [table[p // bs] * bs + p % bs for p in new]
            spans.append((start, start + len(new), seq.num_cached_tokens,
                          self._tensor(table) if seq.num_cached_tokens else None))
            rows += range(start, start + len(new)) if seq.wants_prompt_logits else [start + len(new) - 1]
            start += len(new)
        return AttentionMetadata(True, self._tensor(ids), self._tensor(positions), self._tensor(slots),
                                 spans=spans, logit_rows=self._tensor(rows))

    def _prepare_decode(self, seqs: list[Sequence]) -> AttentionMetadata:
        """Each sequence's last token, which attends over all ``len(seq)`` positions.

        The tables are checked as Python lists (no device sync) before they become tensors.
        """
        bs, g = self.block_size, self.decode_group_size
        groups = unsort = None
        if g and len(seqs) > g:  # longest first, then groups of g rows, each as wide as its first row needs
            order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
            seqs = [seqs[i] for i in order]
            groups = [(a, min(a + g, len(seqs)), cdiv(len(seqs[a]), bs)) for a in range(0, len(seqs), g)]
            unsort = self._tensor(sorted(range(len(order)), key=order.__getitem__))
        lengths = [len(s) for s in seqs]
        tables = [s.block_table for s in seqs]
        check_block_tables(tables, lengths, self.num_blocks, bs)
        width = max(map(len, tables))
        padded = [t + [-1] * (width - len(t)) for t in tables]
        return AttentionMetadata(
            False, self._tensor([s.last_token for s in seqs]), self._tensor([n - 1 for n in lengths]),
            self._tensor([t[(n - 1) // bs] * bs + (n - 1) % bs for t, n in zip(tables, lengths)]),
            block_tables=self._tensor(padded, torch.int32),  # [B, max_blocks]
            lengths=self._tensor(lengths, torch.int32), groups=groups, unsort=unsort)  # [B]

    # -- the forward pass ----------------------------------------------------------------------
    def _attention(self, layer: int, attn, x: torch.Tensor, cos_sin, meta: AttentionMetadata):
        t, d = x.shape[0], self.head_dim
        q = attn.q_proj(x).view(t, -1, d)  # [T, Hq, D]
        k = attn.k_proj(x).view(t, -1, d)  # [T, Hkv, D]
        v = attn.v_proj(x).view(t, -1, d)  # [T, Hkv, D]
        q, k = apply_rotary(q, k, *cos_sin)
        k_pool, v_pool = self.kv_cache[0, layer], self.kv_cache[1, layer]  # [N, bs, Hkv, D]
        # Write first, read after: a prefill may read blocks another sequence of this batch fills.
        store_kv(k_pool, v_pool, meta.slots, k, v)  # in place (a custom op: torch.compile copies nothing)
        if meta.is_prefill:
            outs = []
            for start, end, cached, table in meta.spans:
                if cached:  # prefix-cached tokens come from the pool
                    n = cached + end - start
                    ks, vs = gather_kv(k_pool, table, n), gather_kv(v_pool, table, n)  # [n, Hkv, D]
                else:
                    ks, vs = k[start:end], v[start:end]
                outs.append(prefill_attention(q[start:end], ks, vs, cached, attn.scaling))  # [S_new, Hq, D]
            o = torch.cat(outs)  # [T, Hq, D]
        elif meta.groups:  # SDPA per group of similar lengths: less padding to gather and attend over
            o = torch.cat([paged_decode_attention_sdpa(q[a:b], k_pool, v_pool, meta.block_tables[a:b, :w],
                                                       meta.lengths[a:b], sm_scale=attn.scaling, validate=False)
                           for a, b, w in meta.groups])  # [B, Hq, D]
        else:
            attend = paged_decode_attention if self.attention_backend == "triton" else paged_decode_attention_sdpa
            o = attend(q, k_pool, v_pool, meta.block_tables, meta.lengths, sm_scale=attn.scaling,
                       validate=False)  # [B, Hq, D]
        return attn.o_proj(o.reshape(t, -1))  # [T, hidden]

    def _layers(self, h: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Embedding output ``[T, hidden]`` through every layer (attention ours, the rest the model's)."""
        inner = self.model.model
        cos, sin = inner.rotary_emb(h, meta.positions[None])  # [1, T, D] each
        cos_sin = (cos[0], sin[0])  # [T, D]
        for i, layer in enumerate(inner.layers):
            h = h + self._attention(i, layer.self_attn, layer.input_layernorm(h), cos_sin, meta)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return h

    def decode_logits(self, meta: AttentionMetadata) -> torch.Tensor:
        """A decode step from plain tensors to fp32 logits ``[B, V]``.

        (``torch.compile(..., dynamic=True)`` of this function was measured in PERF_NOTES.md,
        "Engine on CPU": 100+ s to compile and ~15x slower steps than eager on the tiny LM.)
        """
        inner = self.model.model
        h = self._layers(inner.embed_tokens(meta.input_ids), meta)
        return self.model.lm_head(inner.norm(h)).float()

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool):
        """Next-token logits ``[len(seqs), vocab]`` (fp32) of each sequence's last position.

        In a prefill where some sequence wants prompt logprobs, returns ``(logits, prompt_logits)``
        instead: ``prompt_logits[i]`` is ``[S_i, vocab]`` (every prompt position of sequence ``i``,
        its last row included) or None for a sequence that did not ask.
        """
        if not is_prefill:
            meta = self._prepare_decode(seqs)
            logits = self.graphs(meta) if self.graphs is not None else None  # None: run it eagerly
            if logits is None:
                logits = self.decode_logits(meta)  # [B, V], in the rows' (maybe sorted) order
            return logits if meta.unsort is None else logits[meta.unsort]
        meta = self._prepare_prefill(seqs)
        inner = self.model.model
        h = self._layers(inner.embed_tokens(meta.input_ids), meta)  # [T, hidden]
        h = h[meta.logit_rows]  # [R, hidden]: only the positions whose logits are wanted
        logits = self.model.lm_head(inner.norm(h)).float()  # [R, V]
        if len(meta.logit_rows) == len(seqs):
            return logits
        last, prompt_logits, row = [], [], 0
        for seq, (start, end, _, _) in zip(seqs, meta.spans):
            n = end - start if seq.wants_prompt_logits else 1
            prompt_logits.append(logits[row:row + n] if seq.wants_prompt_logits else None)
            last.append(row + n - 1)
            row += n
        return logits[last], prompt_logits


__all__ = ["ModelRunner", "AttentionMetadata", "BACKENDS", "check_model"]
