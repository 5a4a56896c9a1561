"""Linear layers on the CPU with weights prepacked once for oneDNN (as vLLM's CPU backend does).

``F.linear`` hands a row-major ``[out, in]`` weight to the BLAS on every call, which re-blocks it
for its micro-kernel each time; oneDNN can reorder the weight *once* into the blocked layout its
kernel streams through (``torch.ops.mkldnn._reorder_linear_weight``) and then multiply against
it (``torch.ops.mkldnn._linear_pointwise``). On this workplace's 2-core AMD EPYC a decode step's
36 products of the tiny LM took 1.3-1.9x less time that way (``tutx/results/PERF_NOTES.md``).
The results equal ``F.linear``'s to float rounding (the summation order differs).

Projections that read the same input are packed as one matrix (q/k/v; gate/up): one product of
``[in, out_q + out_k + out_v]`` instead of three, which matters for the small k/v projections where
oneDNN's fixed cost per call (~20 us) exceeds the arithmetic. The outputs are split again.

The packed copies live beside the model (the model itself is not changed): they cost as much
memory again as the linear weights.
"""
from __future__ import annotations

import torch


def prepack_supported(weight: torch.Tensor) -> bool:
    """Whether oneDNN prepacking applies: a CPU weight in fp32 or bf16, and torch built with oneDNN."""
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and weight.dim() == 2 and torch.backends.mkldnn.is_available())


class PackedLinears:
    """Prepacked weights for every ``nn.Linear`` of a model; ``self(module, x)`` runs one of them.

    A module that could not be packed (or ``enabled=False``) runs as itself. ``batch_hint`` is the
    row count oneDNN tunes the layout for (decode steps: the batch size).
    """

    def __init__(self, model: torch.nn.Module, enabled: bool = True, batch_hint: int = 64):
        self.enabled = enabled
        self.batch_hint = batch_hint
        self.packed: dict[torch.nn.Module, torch.Tensor] = {}
        self.fused: dict[tuple, tuple[torch.Tensor, torch.Tensor | None, list[int]]] = {}
        if not enabled:
            return
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                weight = self._pack(module.weight, module.bias)
                if weight is not None:
                    self.packed[module] = weight

    def _pack(self, weight: torch.Tensor, bias) -> torch.Tensor | None:
        if not prepack_supported(weight) or (bias is not None and bias.dtype != weight.dtype):
            return None
        try:
            with torch.no_grad():
                return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.batch_hint)
        except RuntimeError:  # a build whose oneDNN refuses this shape or dtype: run it as is
            return None

    def fuse(self, modules: tuple) -> bool:
        """Pack ``modules`` (linear layers with the same input size) as one matrix; True if done."""
        if not self.enabled or modules in self.fused:
            return modules in self.fused
        if len({m.in_features for m in modules}) != 1 or len({m.bias is None for m in modules}) != 1:
            return False
        with torch.no_grad():
            weight = torch.cat([m.weight.detach() for m in modules])  # [sum(out), in]
            bias = None if modules[0].bias is None else torch.cat([m.bias.detach() for m in modules])
        packed = self._pack(weight, bias)
        if packed is None:
            return False
        self.fused[modules] = (packed, bias, [m.out_features for m in modules])
        return True

    def fused_output(self, modules: tuple, x: torch.Tensor) -> torch.Tensor:
        """The product of a fused group, unsplit: ``[T, sum of out_features]`` (contiguous)."""
        weight, bias, _ = self.fused[modules]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    def many(self, modules: tuple, x: torch.Tensor) -> list[torch.Tensor]:
        """``[m(x) for m in modules]``, as one product when :meth:`fuse` packed them together."""
        entry = self.fused.get(modules)
        if entry is None:
            return [self(m, x) for m in modules]
        weight, bias, sizes = entry
        return list(torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "").split(sizes, dim=-1))

    def __len__(self) -> int:
        return len(self.packed)

    def __repr__(self) -> str:
        return f"PackedLinears({len(self)} weights prepacked for oneDNN, {len(self.fused)} fused groups)"

    def __call__(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = self.packed.get(module)
        if weight is None:
            return module(x)
        return torch.ops.mkldnn._linear_pointwise(x, weight, module.bias, "none", [], "")


__all__ = ["PackedLinears", "prepack_supported"]
