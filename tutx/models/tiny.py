"""The tiny Shakespeare LM shipped inside tutx, and how to load it without a network.

Every chapter needs a real transformer to quantize, prune, serve and benchmark, on a laptop
CPU as well as on Colab. The tiny model is a genuine Hugging Face ``LlamaForCausalLM``
(RMSNorm, RoPE, SwiGLU, grouped-query attention) of a few million parameters, so the
code paths are those of a real Llama while everything runs in seconds.
It was trained by ``scripts/train_tiny_lm.py``; its model card is ``tiny/README.md``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tutx._validate import check_int
from tutx.models.hf import check_device_dtype, no_progress_bar

if TYPE_CHECKING:  # transformers is imported on first use: it takes seconds
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_DIR = Path(__file__).resolve().parent / "tiny"
"""Folder holding the tiny model: config, fp32 weights, tokenizer, model card, held-out text."""

SPECIAL_TOKEN = "<|endoftext|>"
"""The one special token: separates plays in training, and serves as bos, eos and pad."""


def tiny_config(vocab_size: int = 4096, eos_token_id: int = 0) -> LlamaConfig:
    """The tiny model's architecture (used by the training script to build it).

    Sized to fit an fp32 ``model.safetensors`` of at most 18 MB: hidden 256, 5 layers,
    8 query heads sharing 2 key/value heads (GQA, a 4x smaller KV cache), SwiGLU 640.
    """
    from transformers import LlamaConfig

    check_int("vocab_size", vocab_size, minimum=1)
    check_int("eos_token_id", eos_token_id, minimum=0, maximum=vocab_size - 1)
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=640,
        num_hidden_layers=5,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        attn_implementation="sdpa",
    )


def load_tiny_tokenizer(path: str | Path = TINY_DIR) -> PreTrainedTokenizerFast:
    """The tiny model's byte-level BPE tokenizer, with ``<|endoftext|>`` as bos/eos/pad."""
    from transformers import PreTrainedTokenizerFast

    tokenizer_file = Path(path) / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"path: no tokenizer.json in {path}")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_file),
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        pad_token=SPECIAL_TOKEN,
    )


def load_tiny(
    device: str | torch.device | None = None, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """``(model, tokenizer)`` of the shipped tiny LM, in eval mode; never touches the network.

    ``device=None`` keeps the model on the CPU, as ``from_pretrained`` does; pass
    ``tutx.device.get()`` to use a GPU when there is one. The weights are stored in fp32
    (later chapters quantize from them); ``dtype`` casts them after loading.
    """
    from transformers import LlamaForCausalLM

    check_device_dtype(device, dtype)
    with no_progress_bar():
        model = LlamaForCausalLM.from_pretrained(TINY_DIR, local_files_only=True, dtype=dtype)
    if device is not None:
        model.to(device)
    model.eval()
    return model, load_tiny_tokenizer()


def heldout_text() -> str:
    """The held-out plays (never seen in training) as plain text, for perplexity."""
    return (TINY_DIR / "heldout.txt").read_text(encoding="utf-8")
