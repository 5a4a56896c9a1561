"""How a Llama-style decoder splits over N ranks, and what that costs in communication (Chapter 5).

:func:`plan_tensor_parallel` checks that N fits the model (it divides the query heads and the MLP
width; the KV heads are split when N divides them and replicated when N is a multiple of them, as
Megatron-LM and vLLM do for grouped-query attention) and says which heads each rank holds.
:func:`comm_per_token` counts the bytes the forward pass communicates per token: Megatron's pairing
(one all-reduce of the hidden vector per attention block and one per MLP) against the seed's design
(every linear layer column-split and its output all-gathered).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tutx._validate import check_choice, check_int

__all__ = ["TPPlan", "plan_tensor_parallel", "comm_per_token"]


@dataclass(frozen=True)
class TPPlan:
    """The split of one model over ``world_size`` ranks (head counts are per rank where ``local_``)."""

    world_size: int
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    local_heads: int
    local_kv_heads: int
    local_intermediate_size: int

    @property
    def kv_replicated(self) -> bool:
        """True when there are fewer KV heads than ranks: each rank keeps a copy of the one it needs."""
        return self.num_kv_heads < self.world_size

    def q_heads(self, rank: int) -> range:
        """The query heads of ``rank`` (a contiguous block)."""
        return range(rank * self.local_heads, (rank + 1) * self.local_heads)

    def kv_heads(self, rank: int) -> range:
        """The KV heads ``rank``'s query heads read (query head i reads KV head i // group)."""
        group = self.num_heads // self.num_kv_heads
        first = self.q_heads(rank).start // group
        return range(first, first + self.local_kv_heads)

    def q_rows(self, rank: int) -> tuple[int, int]:
        """Rows of ``q_proj.weight`` (and columns of ``o_proj.weight``) held by ``rank``."""
        heads = self.q_heads(rank)
        return heads.start * self.head_dim, heads.stop * self.head_dim

    def kv_rows(self, rank: int) -> tuple[int, int]:
        """Rows of ``k_proj.weight`` / ``v_proj.weight`` held by ``rank``."""
        heads = self.kv_heads(rank)
        return heads.start * self.head_dim, heads.stop * self.head_dim

    def mlp_rows(self, rank: int) -> tuple[int, int]:
        """Rows of ``gate_proj``/``up_proj`` (and columns of ``down_proj``) held by ``rank``."""
        return rank * self.local_intermediate_size, (rank + 1) * self.local_intermediate_size


def _fields(config) -> dict:
    if isinstance(config, str):
        from tutx.configs import get_config
        config = get_config(config)
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    try:
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        fields = dict(num_layers=get("num_hidden_layers"), hidden_size=hidden, num_heads=heads,
                      num_kv_heads=get("num_key_value_heads") or heads,
                      head_dim=get("head_dim") or hidden // heads, intermediate_size=get("intermediate_size"))
    except TypeError:  # a field is None: not a Llama-style config
        fields = {}
    if len(fields) < 6 or any(not isinstance(v, int) for v in fields.values()):
        raise TypeError("config: expected a Llama-style config (hidden_size, num_attention_heads, "
                        f"num_hidden_layers, intermediate_size), a dict of them or a name, got {type(config).__name__}")
    return fields


def plan_tensor_parallel(config, world_size: int) -> TPPlan:
    """The :class:`TPPlan` of a Llama-style ``config`` (HF config, dict, or a name in ``tutx.configs``)
    over ``world_size`` ranks; ``ValueError`` naming the size that ``world_size`` does not divide."""
    check_int("world_size", world_size, minimum=1)
    f = _fields(config)
    if f["num_heads"] % world_size:
        raise ValueError(f"world_size: {world_size} does not divide num_attention_heads ({f['num_heads']})")
    if f["num_kv_heads"] % world_size and world_size % f["num_kv_heads"]:
        raise ValueError(f"world_size: {world_size} must divide num_key_value_heads ({f['num_kv_heads']}) "
                         "or be a multiple of it (KV heads are split or replicated)")
    if f["intermediate_size"] % world_size:
        raise ValueError(f"world_size: {world_size} does not divide intermediate_size ({f['intermediate_size']})")
    return TPPlan(world_size=world_size, **f, local_heads=f["num_heads"] // world_size,
                  local_kv_heads=max(1, f["num_kv_heads"] // world_size),
                  local_intermediate_size=f["intermediate_size"] // world_size)


def comm_per_token(config, world_size: int, dtype: torch.dtype = torch.float32,
                   scheme: str = "megatron") -> dict:
    """Communication of one forward pass, per token, over all decoder layers, as a table row.

    ``scheme="megatron"``: one all-reduce of ``hidden_size`` values after o_proj and after down_proj.
    ``scheme="allgather"``: the seed's column-parallel linear that all-gathers its output after every
    one of the 7 linear layers (q, k, v, o, gate, up, down), so every rank holds every activation.
    ``payload_bytes`` is the size of the tensors handed to the collectives; ``sent_per_rank_bytes``
    what each rank sends with the ring algorithms (all-reduce ``2(N-1)/N`` of the payload, all-gather
    ``(N-1)/N`` of the gathered output). The embedding and LM head are replicated: no traffic.
    """
    plan = plan_tensor_parallel(config, world_size)
    check_choice("scheme", scheme, ("megatron", "allgather"))
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r}")
    size = torch.empty((), dtype=dtype).element_size()
    n, layers = world_size, plan.num_layers
    if scheme == "megatron":
        per_layer, elements = 2, 2 * plan.hidden_size
        sent = 2 * (n - 1) / n * elements
    else:
        q, kv = plan.num_heads * plan.head_dim, plan.num_kv_heads * plan.head_dim
        per_layer = 7
        elements = q + 2 * kv + plan.hidden_size + 2 * plan.intermediate_size + plan.hidden_size
        sent = (n - 1) / n * elements
    return {"scheme": scheme, "world_size": n, "collectives": per_layer * layers,
            "payload_bytes": elements * layers * size, "sent_per_rank_bytes": round(sent * layers * size)}
