"""Model compression (Chapter 2): distillation, structured pruning that shrinks the weights, LayerDrop.

- ``kd_loss``, ``HiddenStateDistillLoss``: distillation losses (``distill.py``);
- ``DistillationTrainer``, ``make_student``: train a smaller student from a frozen teacher (``trainer.py``);
- ``layerdrop_``, ``prune_layers_``: structured layer dropout in training and dropping layers at
  inference (``layerdrop.py``);
- head and FFN pruning (``heads.py``, ``ffn.py``).

Names load on first use (PEP 562), so ``import tutx.compress`` is cheap and ``tutx.train`` can use
``tutx.compress.distill`` without an import cycle.
"""
from __future__ import annotations

import importlib

_WHERE = {  # public name -> the submodule that defines it
    "kd_loss": "distill", "HiddenStateDistillLoss": "distill",
    "DistillationTrainer": "trainer", "make_student": "trainer", "check_same_tokenizer": "trainer",
    "layerdrop_": "layerdrop", "remove_layerdrop_": "layerdrop", "prune_layers_": "layerdrop",
    "layers_to_keep": "layerdrop", "decoder_layers": "layerdrop", "seed_rescaled_layers": "layerdrop",
    "LAYER_STRATEGIES": "layerdrop",
    # --- pruning (heads.py, ffn.py) ---
    "prune_heads_": "heads", "head_mask": "heads",
    "head_importance": "importance", "mean_attention_score": "importance", "heads_to_prune": "importance",
    "ffn_importance": "ffn", "prune_ffn_": "ffn",
    "load_pruned": "saving", "PrunedLlamaForCausalLM": "saving", "PrunedBertModel": "saving",
    # --- end pruning ---
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
