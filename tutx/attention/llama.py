"""A Llama decoder that runs a Hugging Face ``LlamaForCausalLM``'s weights on tutx attention + KV cache.

Only the attention is ours (:class:`~tutx.attention.gqa.GQAAttention` with a
:class:`~tutx.attention.kv_cache.KVCache`). The embedding, RMSNorms, SwiGLU MLPs, rotary tables
and LM head are the HF model's own modules, shared rather than copied, so the two models agree
token for token and a change to one model's weights (say, quantization) is seen by both.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from tutx._validate import check_positive_int
from tutx.attention.gqa import GQAAttention, convert_kv_heads_
from tutx.attention.kv_cache import KVCache


def _check_ids(input_ids) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.dtype not in (
            torch.int32, torch.int64) or input_ids.shape[1] == 0:
        got = (f"{input_ids.dtype} of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor)
               else type(input_ids).__name__)
        raise TypeError(f"input_ids: expected an int64/int32 tensor [B, S] with S >= 1, got {got}")


class LlamaBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, hf_layer: nn.Module, config, layer_idx: int):
        super().__init__()
        self.input_layernorm = hf_layer.input_layernorm
        self.self_attn = GQAAttention.from_hf(hf_layer.self_attn, config, layer_idx)
        self.post_attention_layernorm = hf_layer.post_attention_layernorm
        self.mlp = hf_layer.mlp

    def forward(self, x, cache, position_embeddings):
        x = x + self.self_attn(self.input_layernorm(x), cache, position_embeddings)  # [B, S, hidden]
        return x + self.mlp(self.post_attention_layernorm(x))


class TutxLlama(nn.Module):
    """Llama-style causal LM: HF modules everywhere except attention. Build it with :meth:`from_hf`."""

    def __init__(self, embed_tokens, layers, norm, lm_head, rotary_emb, config):
        super().__init__()
        self.embed_tokens, self.layers, self.norm = embed_tokens, nn.ModuleList(layers), norm
        self.lm_head, self.rotary_emb, self.config = lm_head, rotary_emb, config

    @classmethod
    def from_hf(cls, hf_model: nn.Module) -> "TutxLlama":
        """Share the modules of a ``LlamaForCausalLM`` (any RoPE type: its rotary module is reused)."""
        inner = getattr(hf_model, "model", None)
        if inner is None or not hasattr(inner, "layers") or not hasattr(hf_model, "lm_head"):
            raise TypeError(f"hf_model: expected a LlamaForCausalLM-like model (.model.layers, .lm_head), "
                            f"got {type(hf_model).__name__}")
        config = hf_model.config
        layers = [LlamaBlock(layer, config, i) for i, layer in enumerate(inner.layers)]
        return cls(inner.embed_tokens, layers, inner.norm, hf_model.lm_head, inner.rotary_emb, config)

    @property
    def num_kv_heads(self) -> int:
        return self.layers[0].self_attn.num_kv_heads

    def new_cache(self, batch: int, max_seq_len: int) -> KVCache:
        """An empty cache for this model (its dtype and device, ``Hkv`` heads per layer)."""
        attn, weight = self.layers[0].self_attn, self.embed_tokens.weight
        return KVCache(len(self.layers), batch, attn.num_kv_heads, max_seq_len, attn.head_dim,
                       dtype=weight.dtype, device=weight.device)

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits ``[B, S, vocab]`` for ``input_ids [B, S]`` placed after the ``cache``'s positions.

        Without a cache this is one causal pass over the sequence (nothing is kept).
        """
        _check_ids(input_ids)
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache: expected a KVCache or None, got {type(cache).__name__}")
        start = 0 if cache is None else cache.seq_len
        x = self.embed_tokens(input_ids)  # [B, S, hidden]
        positions = torch.arange(start, start + input_ids.shape[1], device=x.device)[None]  # [1, S]
        rope = self.rotary_emb(x, positions)  # (cos, sin), each [1, S, D], once for every layer
        for layer in self.layers:
            x = layer(x, cache, rope)
        return self.lm_head(self.norm(x))  # [B, S, vocab]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> torch.Tensor:
        """Greedy decoding: one prefill of the prompts ``[B, S]``, then one token per step.

        Returns ``[B, S + n]`` with ``n <= max_new_tokens``. Like HF ``generate``, a sequence that
        produced ``eos_token_id`` continues with ``pad_token_id`` (default: the eos id) and
        generation stops early once every sequence has finished.
        """
        check_positive_int("max_new_tokens", max_new_tokens)
        _check_ids(input_ids)
        batch, prompt_len = input_ids.shape
        cache = self.new_cache(batch, prompt_len + max_new_tokens)
        pad = eos_token_id if pad_token_id is None else pad_token_id
        logits = self.forward(input_ids, cache)[:, -1]  # [B, vocab]: prefill
        out, done = [input_ids], torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        for step in range(max_new_tokens):
            token = logits.argmax(dim=-1)  # [B]
            if eos_token_id is not None:
                token = token.masked_fill(done, pad)
                done |= token == eos_token_id
            out.append(token[:, None].to(input_ids.dtype))
            if step == max_new_tokens - 1 or bool(done.all()):
                break
            logits = self.forward(out[-1], cache)[:, -1]  # decode one token
        return torch.cat(out, dim=1)

    def as_hf(self) -> "HFCallView":
        """This model behind Hugging Face's calling convention, ``view(input_ids=ids).logits``, for
        tools written for HF causal LMs (e.g. :func:`tutx.models.heldout_perplexity`)."""
        return HFCallView(self)

    def convert_kv_heads_(self, new_kv_heads: int) -> "TutxLlama":
        """Every layer to ``new_kv_heads`` KV heads (MQA: 1, MHA: num_heads); see ``pool_kv_heads``."""
        for layer in self.layers:
            convert_kv_heads_(layer.self_attn, new_kv_heads)
        return self


class HFCallView(nn.Module):
    """A :class:`TutxLlama` called like an HF model: keyword ``input_ids``, output with ``.logits``."""

    def __init__(self, model: TutxLlama):
        super().__init__()
        self.model, self.config = model, model.config

    def forward(self, input_ids: torch.Tensor, **unused):
        return SimpleNamespace(logits=self.model(input_ids))  # [B, S, vocab]


__all__ = ["TutxLlama", "LlamaBlock", "HFCallView"]
