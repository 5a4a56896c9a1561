"""LayerDrop (Fan et al., 2019): train with whole layers skipped at random, then drop layers for good.

In training, each layer of the stack is skipped with probability ``p`` for the whole batch — its
input goes straight on, as if the layer were not there. A residual stack survives this because
every layer only *adds* to the residual stream. The model learns to work with a random subset
of its layers, so at inference any sub-network of about ``(1 - p) * L`` layers works well, and
:func:`prune_layers_` removes the others from the model for good (the config's
``num_hidden_layers`` follows, so the pruned model generates and saves like any other).

There is **no rescaling** at inference. Dropout rescales because it drops individual
activations of one sum; LayerDrop drops a whole residual branch ``x + f(x)``, and scaling the
layer's *output* by ``1 - p`` (the seed's sketch) shrinks the residual stream itself by
``(1 - p)`` per layer — ``(1 - p)^L`` after ``L`` layers. :func:`seed_rescaled_layers` does
exactly that, only so the notebook can measure how much it hurts.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from tutx._validate import check_choice, check_int, check_number

__all__ = ["layerdrop_", "remove_layerdrop_", "prune_layers_", "layers_to_keep", "decoder_layers",
           "seed_rescaled_layers", "LAYER_STRATEGIES"]

LAYER_STRATEGIES = ("every_other", "spread", "first")
"""Which layers :func:`layers_to_keep` keeps: every other one (0, 2, 4, …), ``depth`` spread evenly
(first and last kept), or the first ``depth``."""

_STACK_NAMES = ("layers", "layer", "h", "blocks")  # Llama/Mistral/OPT, BERT, GPT-2, others


def decoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """``(parent, name, layers)``: the ``nn.ModuleList`` of transformer layers of an HF model.

    Found as the ``ModuleList`` named ``layers``/``layer``/``h``/``blocks`` with
    ``config.num_hidden_layers`` entries (``model.model.layers`` for Llama, ``bert.encoder.layer``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in _STACK_NAMES and (n is None or len(module) == n):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            return parent, name.rsplit(".", 1)[-1], module
    raise ValueError(f"model: found no layer stack (an nn.ModuleList named one of {_STACK_NAMES}"
                     f"{'' if n is None else f' with {n} layers'}) in {type(model).__name__}")


class LayerDropList(nn.ModuleList):
    """A ``ModuleList`` that, in training mode, hands out a random subset of its layers.

    The model's forward iterates over the stack (``for layer in self.layers[:n]`` in Llama,
    ``for layer in self.layer`` in BERT); while training, each layer is left out with probability
    ``p`` (torch's global generator, so a seeded run repeats). Indexing by an int, ``len`` and the
    ``state_dict`` are unchanged, so checkpoints stay compatible. Iterating over it yourself in
    training mode gets a random subset too: switch to eval mode first to see every layer.
    """

    p: float = 0.0

    def _kept(self, layers: list) -> list:
        if not self.training or self.p == 0 or not layers:
            return layers
        keep = torch.rand(len(layers)) >= self.p  # [L]: one draw per layer, for the whole batch
        return [layer for layer, k in zip(layers, keep.tolist()) if k]

    def __iter__(self):
        return iter(self._kept(list(super().__iter__())))

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return self._kept(list(self._modules.values())[idx])
        return super().__getitem__(idx)


def layerdrop_(model: nn.Module, p: float) -> nn.Module:
    """Turn on LayerDrop with rate ``p`` in ``[0, 1)`` for ``model``'s layer stack, in place; returns ``model``.

    Only in training mode (``model.train()``); in eval mode every layer runs, unscaled.
    """
    check_number("p", p)
    if not 0 <= p < 1:
        raise ValueError(f"p: the LayerDrop rate must be in [0, 1), got {p}")
    _, _, layers = decoder_layers(model)
    layers.__class__ = LayerDropList
    layers.p = float(p)
    return model


def remove_layerdrop_(model: nn.Module) -> nn.Module:
    """Undo :func:`layerdrop_` (the stack becomes a plain ``nn.ModuleList`` again); returns ``model``."""
    _, _, layers = decoder_layers(model)
    if isinstance(layers, LayerDropList):
        layers.__class__ = nn.ModuleList
        del layers.p
    return model


def layers_to_keep(num_layers: int, strategy: str = "every_other", depth: int | None = None) -> list[int]:
    """Indices of the layers a pruned stack keeps (see :data:`LAYER_STRATEGIES`)."""
    check_int("num_layers", num_layers, minimum=1)
    check_choice("strategy", strategy, LAYER_STRATEGIES)
    if strategy == "every_other":
        if depth is not None:
            raise ValueError(f"depth: strategy='every_other' keeps ceil(L/2) layers; got depth={depth} "
                             "(use strategy='spread' or 'first' to choose the depth)")
        return list(range(0, num_layers, 2))
    if depth is None:
        raise ValueError(f"depth: strategy={strategy!r} needs the number of layers to keep")
    check_int("depth", depth, minimum=1, maximum=num_layers)
    if strategy == "first":
        return list(range(depth))
    if depth == 1:
        return [0]
    return sorted({round(i * (num_layers - 1) / (depth - 1)) for i in range(depth)})


def prune_layers_(model: nn.Module, strategy: str = "every_other", depth: int | None = None,
                  layers: list[int] | None = None) -> nn.Module:
    """Keep only some layers of ``model``'s stack, in place; returns ``model``.

    ``layers`` lists the indices to keep explicitly; otherwise :func:`layers_to_keep` chooses them
    by ``strategy`` and ``depth``. Outputs are **not** rescaled. ``config.num_hidden_layers`` (and
    ``config.layer_types`` where present) follow, and each kept layer's ``layer_idx`` is renumbered,
    so the KV cache, ``generate`` and ``save_pretrained``/``from_pretrained`` work on the result.
    """
    parent, name, stack = decoder_layers(model)
    n = len(stack)
    if layers is None:
        keep = layers_to_keep(n, strategy, depth)
    else:
        if depth is not None:
            raise ValueError("depth: pass either layers= or strategy/depth, not both")
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError(f"layers: expected a non-empty list of layer indices, got {layers!r}")
        keep = [check_int("layers", i, minimum=0, maximum=n - 1) for i in layers]
        if len(set(keep)) != len(keep):
            raise ValueError(f"layers: indices repeat in {layers!r}")
        keep = sorted(keep)
    modules = list(stack._modules.values())  # not iter(stack): a LayerDropList in training would drop some
    new = nn.ModuleList(modules[i] for i in keep)
    new.train(stack.training)
    if isinstance(stack, LayerDropList):
        new.__class__, new.p = LayerDropList, stack.p
    for new_idx, layer in enumerate(modules[i] for i in keep):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    setattr(parent, name, new)
    config = getattr(model, "config", None)
    if config is not None:
        config.num_hidden_layers = len(keep)
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = [config.layer_types[i] for i in keep]
    return model


def _scale_output(scale: float):
    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            return output * scale
        return (output[0] * scale,) + tuple(output[1:])
    return hook


@contextlib.contextmanager
def seed_rescaled_layers(model: nn.Module, p: float):
    """WRONG on purpose: multiply every layer's output by ``1 - p`` inside this ``with`` block.

    The seed's LayerDrop sketch did this at inference, copying dropout. For a residual layer the
    output is the residual stream ``x + f(x)``, so the scale compounds to ``(1 - p)^L`` through the
    stack. Exists only so the notebook can measure the damage.
    """
    check_number("p", p)
    if not 0 <= p < 1:
        raise ValueError(f"p: the LayerDrop rate must be in [0, 1), got {p}")
    _, _, stack = decoder_layers(model)
    handles = [layer.register_forward_hook(_scale_output(1 - p)) for layer in stack]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
