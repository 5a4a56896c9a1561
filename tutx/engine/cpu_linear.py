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

Products with few rows (a decode step of a few dozen sequences) run through
:func:`~tutx.kernels.linear_cpu.linear_cpu` instead, a register-blocked C kernel that beats oneDNN
there (``few_rows=True``; its own packed copy of a weight is made on first use). Built for AVX-512
it beats oneDNN at every row count measured (1 to 2,048), so there every product runs through it
(:func:`~tutx.kernels.linear_cpu.few_rows_limit`) and the oneDNN copies serve only as the
fallback for inputs it does not take.
"""
from __future__ import annotations

import torch

from tutx.kernels.cpu_build import KernelBuildError
from tutx.kernels.linear_cpu import few_rows_limit, linear_cpu, linear_silu_cpu, pack_gated, pack_weight, pad_bias
from tutx.kernels.llama_cpu_ops import silu_mul_cpu


def prepack_supported(weight: torch.Tensor) -> bool:
    """Whether oneDNN prepacking applies: a CPU weight in fp32 or bf16, and torch built with oneDNN."""
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and weight.dim() == 2 and torch.backends.mkldnn.is_available())


class PackedLinears:
    """Prepacked weights for every ``nn.Linear`` of a model; ``self(module, x)`` runs one of them.

    A module that could not be packed (or ``enabled=False``) runs as itself. ``batch_hint`` is the
    row count oneDNN tunes the layout for (decode steps: the batch size).
    """

    def __init__(self, model: torch.nn.Module, enabled: bool = True, batch_hint: int = 64, few_rows: bool = True):
        self.enabled = enabled
        self.batch_hint = batch_hint
        self.few_rows = few_rows  # products of few rows through linear_cpu (fp32 weights)
        self.fused_silu = True  # silu_output through linear_silu_cpu where linear_cpu would run
        self.packed: dict[torch.nn.Module, torch.Tensor] = {}
        self.fused: dict[tuple, tuple[torch.Tensor, torch.Tensor | None, list[int]]] = {}
        self._few: dict = {}  # module or fused group -> (packed, padded bias, out_features, row limit) or None
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

    def _few_rows_product(self, key, weights, bias, x: torch.Tensor) -> torch.Tensor | None:
        """``x``'s product through :func:`linear_cpu` when it has few enough rows for it
        (:func:`~tutx.kernels.linear_cpu.few_rows_limit`; None: use oneDNN).
        ``weights()`` gives the module's or fused group's weights, read only on the first call."""
        few = self._c_weight(key, weights, bias, x)
        return None if few is None else linear_cpu(x.contiguous(), few[0], few[2], few[1], trusted=True)

    def _c_weight(self, key, weights, bias, x: torch.Tensor, gated: bool = False):
        """The C kernel's packed weight for ``key`` (a module, a fused group, or ``("silu", group)``
        with ``gated``) when it takes ``x``: ``(packed, padded bias, out features, row limit)``, made
        on first use from ``weights()``; None where oneDNN runs instead (no C compiler, not fp32,
        too many rows)."""
        if not self.few_rows or x.dim() != 2:
            return None
        if key not in self._few:
            entry, ws = None, weights()
            if ws[0].dtype == torch.float32 and not (gated and ws[0].shape != ws[1].shape):
                with torch.no_grad():
                    weight = torch.cat([w.detach() for w in ws])  # [sum(out), in]
                try:
                    packed = pack_gated(weight) if gated else pack_weight(weight)
                    entry = (packed, None if gated else pad_bias(bias, packed),
                             weight.shape[0] // 2 if gated else weight.shape[0], few_rows_limit(weight.shape[1]))
                except KernelBuildError:  # no C compiler: oneDNN for every product
                    entry = None
            self._few[key] = entry
        few = self._few[key]
        return None if few is None or (few[3] is not None and x.shape[0] > few[3]) else few

    def fused_output(self, modules: tuple, x: torch.Tensor) -> torch.Tensor:
        """The product of a fused group, unsplit: ``[T, sum of out_features]`` (contiguous)."""
        weight, bias, _ = self.fused[modules]
        out = self._few_rows_product(modules, lambda: [m.weight for m in modules], bias, x)
        return out if out is not None else torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    def silu_output(self, modules: tuple, x: torch.Tensor) -> torch.Tensor:
        """``silu(gate(x)) * up(x)`` for a fused ``(gate_proj, up_proj)`` group without biases:
        ``[T, intermediate]``. One pass through :func:`~tutx.kernels.linear_cpu.linear_silu_cpu`
        where :meth:`fused_output` would use ``linear_cpu`` (the ``[T, 2 I]`` product is never
        written), else the fused product and :func:`~tutx.kernels.llama_cpu_ops.silu_mul_cpu`."""
        if self.fused_silu and self.fused[modules][1] is None:
            few = self._c_weight(("silu", modules), lambda: [m.weight for m in modules], None, x, gated=True)
            if few is not None:
                return linear_silu_cpu(x.contiguous(), few[0], few[2], trusted=True)
        return silu_mul_cpu(self.fused_output(modules, x), trusted=True)

    def many(self, modules: tuple, x: torch.Tensor) -> list[torch.Tensor]:
        """``[m(x) for m in modules]``, as one product when :meth:`fuse` packed them together."""
        entry = self.fused.get(modules)
        if entry is None:
            return [self(m, x) for m in modules]
        return list(self.fused_output(modules, x).split(entry[2], dim=-1))

    def __len__(self) -> int:
        return len(self.packed)

    def __repr__(self) -> str:
        few = sum(v is not None for v in self._few.values())
        return (f"PackedLinears({len(self)} weights prepacked for oneDNN, {len(self.fused)} fused groups, "
                f"few_rows={self.few_rows} ({few} packed for linear_cpu))")

    def __call__(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight = self.packed.get(module)
        if weight is None:
            return module(x)
        out = self._few_rows_product(module, lambda: [module.weight], module.bias, x)
        return out if out is not None else torch.ops.mkldnn._linear_pointwise(x, weight, module.bias, "none", [], "")


__all__ = ["PackedLinears", "prepack_supported"]
