"""Run a Hugging Face Llama-style model on a batch of sequences with a paged KV cache.

The model's own modules do the work — embedding, each layer's RMSNorms, q/k/v/o projections and
MLP, the rotary embedding, the final norm and ``lm_head`` — but attention is ours: it writes the
new keys/values into the pool slots given by the block tables and attends through them.

Batches are *flattened* (as in nano-vllm): a prefill of sequences of 7 and 12 new tokens is one
``[19, hidden]`` activation, with no padding; a decode step is ``[B, hidden]``, one token each.

KV pool: one tensor ``kv_cache [2, num_layers, num_blocks, block_size, Hkv, D]`` (K then V), so
layer ``l``'s pools are ``kv_cache[0, l]`` and ``kv_cache[1, l]`` of shape
``[num_blocks, block_size, Hkv, D]`` (see :mod:`tutx.kernels.paged_decode`). The C path
(``cpu_ops``) views its key pools as ``[num_blocks, Hkv, D, block_size]`` instead, the keys of a
block transposed (:attr:`ModelRunner.keys_transposed`). Block ids are shared by all layers: the
block manager hands out a block once for every layer.
"""
from __future__ import annotations

import array
import itertools
from dataclasses import dataclass

import torch

from tutx.engine.attention import gather_kv, store_kv, paged_decode_attention_sdpa, prefill_attention
from tutx.engine.cpu_linear import PackedLinears
from tutx.engine.cpu_memory import keep_freed_memory
from tutx.engine.sequence import Sequence
from tutx.kernels.paged_decode import check_block_tables, paged_decode_attention
from tutx.kernels.llama_cpu_ops import add_rms_norm_cpu, rope_store_cpu
from tutx.kernels.paged_decode_cpu import paged_decode_attention_cpu, paged_prefill_attention_cpu

from tutx.engine.config import BACKENDS, cdiv

_ARRAY_CODES = {torch.long: "q", torch.int32: "i"}  # array.array type codes (64- and 32-bit ints)


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
    prefill_seqs: list | None = None


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
    CUDA, or on CPU under ``TRITON_INTERPRET=1``), ``"cpu"`` the C kernel
    :func:`~tutx.kernels.paged_decode_cpu.paged_decode_attention_cpu` (fp32 on a CPU, reads the
    pages in place), ``"auto"`` the Triton kernel on CUDA with fp16/bf16 weights, the C kernel on
    a CPU with fp32 weights where it builds, and SDPA otherwise (the interpreter is for tests, not
    a speed path). Sizes and the backend are trusted: :class:`~tutx.engine.EngineConfig` checked them.

    ``prepack_weights``: on a CPU, run every linear layer through weights prepacked for oneDNN
    (:class:`~tutx.engine.cpu_linear.PackedLinears`) in eager steps.

    ``graph_sizes`` (a tuple of batch sizes, with ``max_model_len``) turns on static-shape decode
    steps (:mod:`tutx.engine.graphs`): CUDA graphs on CUDA, ``torch.compile`` elsewhere. The pool
    then has one scratch block more, for the padded rows.
    """

    def __init__(self, model, num_blocks: int, block_size: int, attention_backend: str = "auto",
                 decode_group_size: int | None = None, graph_sizes: tuple | None = None,
                 max_model_len: int | None = None, prepack_weights: bool = False):
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
        self.attention_backend = self._resolve_backend(attention_backend, graph_sizes)
        # SDPA decode pads every row to the longest context of its group: groups of similar lengths pad less.
        self.decode_group_size = decode_group_size if self.attention_backend == "sdpa" else None
        self.max_model_len = max_model_len or cfg.max_position_embeddings
        self.graphs = None
        if graph_sizes:
            from tutx.engine.graphs import make_decode_graphs

            self.graphs = make_decode_graphs(self, graph_sizes, self.device)
            self.decode_group_size = None  # static shapes: one group as wide as the longest context
        if self.device.type == "cpu":  # a step's freed activations stay in malloc's heap for the next step
            keep_freed_memory()
        # Packed weights serve eager steps (a compiled step keeps the model's own linear layers).
        self.linear = PackedLinears(model, prepack_weights and self.device.type == "cpu" and self.graphs is None)
        for layer in layers:  # projections of the same input run as one product
            attn, mlp = layer.self_attn, layer.mlp
            self.linear.fuse((attn.q_proj, attn.k_proj, attn.v_proj))
            if all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
                self.linear.fuse((mlp.gate_proj, mlp.up_proj))
        self.cpu_ops = self._cpu_ops_apply()
        # The C path keeps each block's keys transposed, [N, Hkv, D, bs] (a view of the same memory):
        # decode scores 16 keys per vector multiply-add (PERF_NOTES.md, L21). False: keys in rows.
        self.keys_transposed = self.cpu_ops
        if self.cpu_ops:  # what each layer's C path touches, looked up once (module attribute access is slow)
            self._cpu_layers = [
                (layer.self_attn,
                 (layer.input_layernorm.weight.detach().contiguous(), layer.input_layernorm.variance_epsilon),
                 (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj), layer.self_attn.o_proj,
                 (layer.post_attention_layernorm.weight.detach().contiguous(),
                  layer.post_attention_layernorm.variance_epsilon),
                 (layer.mlp.gate_proj, layer.mlp.up_proj), layer.mlp.down_proj) for layer in layers]
        if self.cpu_ops:
            norm = model.model.norm
            self._cpu_final_norm = (norm.weight.detach().contiguous(), norm.variance_epsilon)
        if self.cpu_ops:  # rotary tables for every position, computed once by the model's own rotary module
            with torch.inference_mode():
                positions = torch.arange(self.max_model_len, device=self.device)[None]
                cos, sin = model.model.rotary_emb(torch.zeros(1, device=self.device, dtype=self.dtype), positions)
            self.rope_cos, self.rope_sin = cos[0].contiguous(), sin[0].contiguous()  # [max_model_len, D]
        extra = 1 if self.graphs is not None else 0  # the scratch block padded rows write to
        shape = (2, self.num_layers, num_blocks + extra, block_size, self.num_kv_heads, self.head_dim)
        self.kv_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)  # [2, L, N(+1), bs, Hkv, D]

    def _resolve_backend(self, backend: str, graph_sizes) -> str:
        if backend == "cpu" and (self.device.type != "cpu" or self.dtype != torch.float32):
            raise ValueError(f"attention_backend: 'cpu' expects float32 weights on a CPU, got {self.dtype} "
                             f"on {self.device}")
        if backend == "cpu" and graph_sizes:
            raise ValueError("attention_backend: 'cpu' (a C kernel called through ctypes) runs in eager steps only; "
                             "use enforce_eager=True, or attention_backend='sdpa' with enforce_eager=False")
        if backend == "cpu":  # build it now: a missing compiler fails here, with the compiler's message
            from tutx.kernels.paged_decode_cpu import _kernel

            _kernel(self.head_dim)
        if backend != "auto":
            return backend
        if self.device.type == "cuda":
            return "triton" if self.dtype in (torch.float16, torch.bfloat16) else "sdpa"
        if self.device.type == "cpu" and self.dtype == torch.float32 and not graph_sizes:
            from tutx.kernels.paged_decode_cpu import cpu_kernel_available  # builds it once (cached)

            if cpu_kernel_available(self.head_dim):
                return "cpu"
        return "sdpa"

    def __repr__(self) -> str:
        return (f"ModelRunner(model={type(self.model).__name__}, layers={self.num_layers}, "
                f"heads={self.num_heads}/{self.num_kv_heads} (q/kv), head_dim={self.head_dim}, "
                f"num_blocks={self.num_blocks}, block_size={self.block_size}, backend={self.attention_backend!r}, "
                f"kv_cache={self.kv_cache_bytes / 2**20:.1f} MiB {self.dtype} on {self.device}, "
                f"decode={'eager' if self.graphs is None else type(self.graphs).__name__}, "
                f"prepacked_linears={len(self.linear)}, c_glue={self.cpu_ops})")

    @property
    def kv_cache_bytes(self) -> int:
        return self.kv_cache.numel() * self.kv_cache.element_size()

    def _tensor(self, values, dtype=torch.long) -> torch.Tensor:
        """A 1-D tensor of Python ints, through an ``array`` (``torch.tensor`` of a list: 3-5x slower)."""
        buf = array.array(_ARRAY_CODES[dtype], values)
        out = torch.frombuffer(buf, dtype=dtype) if len(buf) else torch.empty(0, dtype=dtype)
        return out if self.device.type == "cpu" else out.to(self.device)

    def _table_tensor(self, tables: list[list[int]], pad: int) -> torch.Tensor:
        """Block tables padded with ``pad`` to the longest: ``[len(tables), width]`` int32."""
        width = max(map(len, tables))
        return self._tensor(itertools.chain.from_iterable(t + [pad] * (width - len(t)) for t in tables),
                            torch.int32).view(len(tables), width)

    # -- batch preparation ---------------------------------------------------------------------
    def _prepare_prefill(self, seqs: list[Sequence], num_decode: int = 0, chunks=None) -> AttentionMetadata:
        """Tokens ``num_computed_tokens .. len-1`` of every sequence, flattened (``chunks[i]`` of them
        for ``seqs[num_decode + i]`` in a chunked prefill). The first ``num_decode`` sequences are
        decoding (a mixed step): each computes its last token only, over all before it."""
        ids, positions, slots, spans, rows, start, bs = [], [], [], [], [], 0, self.block_size
        for j, seq in enumerate(seqs):
            cached = seq.num_computed_tokens
            end = len(seq) if chunks is None or j < num_decode else cached + chunks[j - num_decode]
            new = range(cached, end)
            table = seq.block_table
            ids += seq.token_ids[cached:end]
            positions += new
            slots += [table[p // bs] * bs + p % bs for p in new]
            spans.append((start, start + len(new), cached, self._tensor(table) if cached else None))
            wants = seq.wants_prompt_logits and j >= num_decode
            rows += range(start, start + len(new)) if wants else [start + len(new) - 1]
            start += len(new)
        return AttentionMetadata(True, self._tensor(ids), self._tensor(positions), self._tensor(slots),
                                 spans=spans, logit_rows=self._tensor(rows), prefill_seqs=seqs)

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
        return AttentionMetadata(
            False, self._tensor([s.last_token for s in seqs]), self._tensor([n - 1 for n in lengths]),
            self._tensor([t[(n - 1) // bs] * bs + (n - 1) % bs for t, n in zip(tables, lengths)]),
            block_tables=self._table_tensor(tables, -1),  # [B, max_blocks]
            lengths=self._tensor(lengths, torch.int32), groups=groups, unsort=unsort)  # [B]

    # -- the forward pass ----------------------------------------------------------------------
    def _attention(self, layer: int, attn, x: torch.Tensor, cos_sin, meta: AttentionMetadata):
        t, d = x.shape[0], self.head_dim
        q, k, v = self.linear.many((attn.q_proj, attn.k_proj, attn.v_proj), x)
        q, k, v = q.view(t, -1, d), k.view(t, -1, d), v.view(t, -1, d)  # [T, Hq, D], [T, Hkv, D], [T, Hkv, D]
        q, k = apply_rotary(q, k, *cos_sin)
        k_pool, v_pool = self.kv_cache[0, layer], self.kv_cache[1, layer]  # [N, bs, Hkv, D]
        # Write first, read after: a prefill may read blocks another sequence of this batch fills.
        store_kv(k_pool, v_pool, meta.slots, k, v)  # in place (a custom op: torch.compile copies nothing)
        return self.linear(attn.o_proj, self._attend(attn, q, k, v, k_pool, v_pool, meta).reshape(t, -1))

    def _attend(self, attn, q, k, v, k_pool, v_pool, meta: AttentionMetadata) -> torch.Tensor:
        """Attention output ``[T, Hq, D]`` once this step's keys and values are in the pools."""
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
            attend = {"triton": paged_decode_attention, "cpu": paged_decode_attention_cpu}.get(
                self.attention_backend, paged_decode_attention_sdpa)
            o = attend(q, k_pool, v_pool, meta.block_tables, meta.lengths, sm_scale=attn.scaling,
                       validate=False)  # [B, Hq, D]
        return o

    def _mlp(self, mlp, x: torch.Tensor) -> torch.Tensor:
        """Llama's gated MLP, ``down(act(gate(x)) * up(x))``, through :attr:`linear` (another MLP runs as itself)."""
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return mlp(x)
        gate, up = self.linear.many((mlp.gate_proj, mlp.up_proj), x)
        return self.linear(mlp.down_proj, mlp.act_fn(gate) * up)

    def _layers(self, h: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Embedding output ``[T, hidden]`` through every layer (attention ours, the rest the model's)."""
        if self.cpu_ops:
            return self._layers_cpu(h, meta)
        inner = self.model.model
        cos, sin = inner.rotary_emb(h, meta.positions[None])  # [1, T, D] each
        cos_sin = (cos[0], sin[0])  # [T, D]
        for i, layer in enumerate(inner.layers):
            h = h + self._attention(i, layer.self_attn, layer.input_layernorm(h), cos_sin, meta)
            h = h + self._mlp(layer.mlp, layer.post_attention_layernorm(h))
        return h

    def _layers_cpu(self, h: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """:meth:`_layers` with the glue in C (:mod:`tutx.kernels.llama_cpu_ops`): each layer is a
        residual add + RMSNorm, the fused q|k|v product, rotary + KV write, attention, o_proj,
        add + RMSNorm, the gate|up product fused with SiLU-and-multiply, down_proj. The tensors are the
        runner's own, so the kernels run without their argument checks (``trusted=True``). The keys
        of each pool block are stored transposed (:attr:`keys_transposed`)."""
        t, d, hq, hkv = h.shape[0], self.head_dim, self.num_heads, self.num_kv_heads
        n, bs, kt = self.kv_cache.shape[2], self.block_size, self.keys_transposed
        cos, sin = self.rope_cos.index_select(0, meta.positions), self.rope_sin.index_select(0, meta.positions)
        if meta.is_prefill:  # one kernel call for every prompt: token at position p attends to p + 1 tokens
            tables, row_table, lengths = self._prefill_tables(meta)
        else:  # (the C backend never groups decode rows)
            tables, lengths = meta.block_tables.contiguous(), meta.lengths.contiguous()
        h = h.contiguous()
        residual = None  # each layer's MLP output, added to h by the next norm
        for i, (attn, (w_in, eps_in), qkv_group, o_proj, (w_post, eps_post), gate_up_group, down_proj) \
                in enumerate(self._cpu_layers):
            x = add_rms_norm_cpu(h, residual, w_in, eps_in, trusted=True)
            qkv = self.linear.fused_output(qkv_group, x)  # [T, (Hq + 2 Hkv) * D]
            k_pool, v_pool = self.kv_cache[0, i], self.kv_cache[1, i]
            if kt:
                k_pool = k_pool.view(n, hkv, d, bs)  # [N, Hkv, D, bs]: keys transposed within each block
            rope_store_cpu(qkv, cos, sin, k_pool, v_pool, meta.slots, hq, hkv, trusted=True, keys_transposed=kt)
            q = qkv[:, :hq * d].view(t, hq, d)
            if meta.is_prefill:
                o = paged_prefill_attention_cpu(q, k_pool, v_pool, tables, row_table, lengths,
                                                sm_scale=attn.scaling, trusted=True, keys_transposed=kt)  # [T, Hq, D]
            else:
                o = paged_decode_attention_cpu(q, k_pool, v_pool, tables, lengths,
                                               sm_scale=attn.scaling, validate=False, trusted=True, keys_transposed=kt)
            x = add_rms_norm_cpu(h, self.linear(o_proj, o.reshape(t, -1)), w_post, eps_post, trusted=True)
            residual = self.linear(down_proj, self.linear.silu_output(gate_up_group, x))
        return h.add_(residual)

    def _final_norm(self, h: torch.Tensor) -> torch.Tensor:
        """The model's last RMSNorm (one C call on the C path, the model's module otherwise)."""
        if self.cpu_ops:
            return add_rms_norm_cpu(h, None, *self._cpu_final_norm, trusted=True)
        return self.model.model.norm(h)

    def _prefill_tables(self, meta: AttentionMetadata):
        """The C prefill's metadata: block tables ``[S, W]``, each token's sequence ``[T]`` and length ``[T]``."""
        seqs = meta.prefill_seqs
        tables = self._table_tensor([s.block_table for s in seqs], 0)
        counts = self._tensor([end - start for start, end, _, _ in meta.spans])
        row_table = torch.repeat_interleave(torch.arange(len(seqs), dtype=torch.int32, device=self.device), counts)
        return tables, row_table, (meta.positions + 1).to(torch.int32)

    def _cpu_ops_apply(self) -> bool:
        """Whether :meth:`_layers_cpu` computes exactly this model's layers (plain Llama, fp32 CPU, packed)."""
        if self.attention_backend != "cpu" or not self.linear.fused:
            return False
        cfg, final = self.model.config, self.model.model.norm
        if getattr(cfg, "hidden_act", None) != "silu" or getattr(cfg, "mlp_bias", False):
            return False
        if not hasattr(final, "variance_epsilon") or getattr(final, "weight", None) is None:
            return False
        for layer in self.model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if not all(hasattr(n, "variance_epsilon") and getattr(n, "weight", None) is not None for n in norms):
                return False
            if (attn.q_proj, attn.k_proj, attn.v_proj) not in self.linear.fused or \
                    (getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)) not in self.linear.fused:
                return False
        return True

    def decode_logits(self, meta: AttentionMetadata) -> torch.Tensor:
        """A decode step from plain tensors to fp32 logits ``[B, V]``.

        (``torch.compile(..., dynamic=True)`` of this function was measured in PERF_NOTES.md,
        "Engine on CPU": 100+ s to compile and ~15x slower steps than eager on the tiny LM.)
        """
        h = self._layers(self.model.model.embed_tokens(meta.input_ids), meta)
        return self.linear(self.model.lm_head, self._final_norm(h)).float()

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool, num_decode: int = 0, chunks=None):
        """Next-token logits ``[len(seqs), vocab]`` (fp32) of each sequence's last position.

        A prefill computes each sequence's tokens from ``num_computed_tokens`` on: to its end, or
        ``chunks[i]`` of them for ``seqs[num_decode + i]`` (a chunked prefill: the logits of a chunk
        that stops short of the end are not a next token). A mixed step is a prefill whose first
        ``num_decode`` sequences are decoding (one new token each).

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
        meta = self._prepare_prefill(seqs, num_decode, chunks)
        inner = self.model.model
        h = self._layers(inner.embed_tokens(meta.input_ids), meta)  # [T, hidden]
        h = h[meta.logit_rows]  # [R, hidden]: only the positions whose logits are wanted
        logits = self.linear(self.model.lm_head, self._final_norm(h)).float()  # [R, V]
        if len(meta.logit_rows) == len(seqs):
            return logits
        last, prompt_logits, row = [], [], 0
        for j, (seq, (start, end, _, _)) in enumerate(zip(seqs, meta.spans)):
            wants = seq.wants_prompt_logits and j >= num_decode
            n = end - start if wants else 1
            prompt_logits.append(logits[row:row + n] if wants else None)
            last.append(row + n - 1)
            row += n
        return logits[last], prompt_logits


__all__ = ["ModelRunner", "AttentionMetadata", "BACKENDS", "check_model"]
