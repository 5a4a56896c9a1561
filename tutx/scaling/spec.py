"""``ModelSpec``: the shape of a transformer, and its exact parameter count.

The flags describe where the families differ: Llama-style models have a gated (SwiGLU) MLP,
RMSNorm and rotary positions; GPT-2, OPT and BERT have learned positions, LayerNorm with a bias
and biases on every linear layer; mixture-of-experts models replace the MLP of some layers by
``num_experts`` expert MLPs of which a router picks ``experts_per_token`` for each token.
Memory, FLOP and decode estimates live in :class:`~tutx.scaling.costs.SpecCosts`.
"""
from __future__ import annotations

from dataclasses import dataclass

from tutx._validate import check_bool, check_choice, check_int, check_positive_int, check_str
from tutx.scaling.costs import SpecCosts
from tutx.scaling.units import human

QK_NORMS = ("none", "head", "full")


@dataclass(frozen=True, repr=False)
class ModelSpec(SpecCosts):
    """The shape of a transformer, enough to count its parameters, bytes and FLOPs.

    Build it with :meth:`from_config` from a Hugging Face config. Where no formula applies
    (an architecture this module does not describe, e.g. DeepSeek's latent attention), the
    parameters are counted on a model built on the ``meta`` device instead and
    ``counted_on_meta`` is True: the counts are then exact, and the KV-cache and FLOP figures
    are the standard estimates from the config's head counts.
    """

    name: str
    family: str  # the config's model_type
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # the dense MLP's width
    tie_embeddings: bool = False
    gated_mlp: bool = True  # SwiGLU/GeGLU: gate, up and down projections (fused or not)
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str = "none"  # "head": norm over head_dim on q and k (Qwen3); "full": over all heads (OLMo 2)
    norm_bias: bool = False  # LayerNorm has a bias, RMSNorm does not
    norms_per_layer: int = 2  # 1 for a parallel attention/MLP block with one norm, 4 for Gemma 2
    final_norm: bool = True
    position_embeddings: int = 0  # rows of a learned position table (0: rotary or ALiBi)
    token_type_embeddings: int = 0  # BERT's segment table
    embedding_norm: bool = False  # BERT normalises the summed embeddings
    lm_head: bool = True  # BertModel has none
    lm_head_bias: bool = False  # Phi-2, GPT-J
    pooler: bool = False
    decoder: bool = True  # False for encoders (BERT): no KV cache, bidirectional attention
    # mixture of experts (num_experts == 0: a dense model)
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    moe_layers: int = 0  # layers whose MLP is the expert block; the others are dense
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE: one always-on expert ...
    shared_expert_gate: bool = False  # ... scaled by a sigmoid gate
    # where no formula applies: parameters counted on the meta device
    counted_on_meta: bool = False
    meta_counts: tuple = ()  # ((part, parameters), ...)
    meta_expert_params: int = 0  # of which routed experts (all of them)

    def __post_init__(self):
        check_str("name", self.name)
        check_str("family", self.family)
        for f in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "norms_per_layer"):
            check_positive_int(f, getattr(self, f))
        for f in ("position_embeddings", "token_type_embeddings", "num_experts", "experts_per_token",
                  "moe_intermediate_size", "shared_expert_intermediate_size", "meta_expert_params"):
            check_int(f, getattr(self, f), minimum=0)
        check_int("moe_layers", self.moe_layers, minimum=0, maximum=self.num_layers)
        for f in ("tie_embeddings", "gated_mlp", "qkv_bias", "out_bias", "mlp_bias", "norm_bias",
                  "final_norm", "embedding_norm", "lm_head", "lm_head_bias", "pooler", "decoder",
                  "shared_expert_gate", "counted_on_meta"):
            check_bool(f, getattr(self, f))
        check_choice("qk_norm", self.qk_norm, QK_NORMS)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads={self.num_kv_heads}: expected a divisor of num_heads={self.num_heads}"
            )
        if self.num_experts:
            check_int("experts_per_token", self.experts_per_token, minimum=1, maximum=self.num_experts)
            check_positive_int("moe_layers", self.moe_layers)
            if not self.counted_on_meta:
                check_positive_int("moe_intermediate_size", self.moe_intermediate_size)
        elif self.experts_per_token or self.moe_layers:
            raise ValueError(
                f"experts_per_token={self.experts_per_token}, moe_layers={self.moe_layers}: "
                "expected 0 for a dense model (num_experts=0)"
            )

    @classmethod
    def from_config(cls, config, name: str | None = None) -> "ModelSpec":
        """Read a Hugging Face config (a ``PretrainedConfig`` or its dict) — no download needed.

        The families in :data:`tutx.scaling.families.FAMILIES` are described by formulas; any
        other ``model_type`` that ``transformers`` knows is counted on the meta device.
        """
        from tutx.scaling.families import spec_fields

        return cls(**spec_fields(config, name))

    # ---- parameters -------------------------------------------------------------------
    def param_breakdown(self) -> dict[str, int]:
        """Parameters by part; a tied lm_head shares the embedding matrix and counts 0."""
        if self.counted_on_meta:
            return dict(self.meta_counts)
        h, L, d = self.hidden_size, self.num_layers, self.head_dim
        q, kv = self.num_heads * d, self.num_kv_heads * d
        norm = h * (2 if self.norm_bias else 1)
        attention = h * q + 2 * h * kv + q * h
        attention += (q + 2 * kv) * self.qkv_bias + h * self.out_bias
        qk_norm = {"none": 0, "head": 2 * d, "full": q + kv}[self.qk_norm] * (2 if self.norm_bias else 1)
        norms = L * (self.norms_per_layer * norm + qk_norm)
        norms += norm * (self.final_norm + self.embedding_norm)
        dense_layers = L - self.moe_layers
        mlp = dense_layers * _mlp(h, self.intermediate_size, self.gated_mlp, self.mlp_bias)
        if self.num_experts:
            block = h * self.num_experts + self.num_experts * _mlp(h, self.moe_intermediate_size, True, False)
            if self.shared_expert_intermediate_size or self.shared_expert_gate:
                block += _mlp(h, self.shared_expert_intermediate_size, True, False) + h * self.shared_expert_gate
            mlp += self.moe_layers * block
        head = self.vocab_size * h if self.lm_head and not self.tie_embeddings else 0
        parts = {
            "embeddings": (self.vocab_size + self.position_embeddings + self.token_type_embeddings) * h,
            "attention": L * attention,
            "mlp": mlp,
            "norms": norms,
            "lm_head": head + self.vocab_size * self.lm_head_bias,
        }
        if self.pooler:
            parts["pooler"] = h * h + h
        return parts

    @property
    def n_params(self) -> int:
        """Exact parameter count, tied weights counted once (as ``model.parameters()`` does).

        For a mixture of experts this is the *total*: what the weights take in memory.
        """
        return sum(self.param_breakdown().values())

    @property
    def expert_params(self) -> int:
        """Parameters of all routed experts together (0 for a dense model)."""
        if self.counted_on_meta:
            return self.meta_expert_params
        return self.moe_layers * self.num_experts * _mlp(self.hidden_size, self.moe_intermediate_size, True, False)

    @property
    def active_params(self) -> int:
        """Parameters one token uses: the total less the experts the router did not pick."""
        if not self.num_experts:
            return self.n_params
        return self.n_params - self.expert_params // self.num_experts * (self.num_experts - self.experts_per_token)

    @property
    def non_embedding_params(self) -> int:
        """Kaplan et al.'s N: everything but the vocabulary and position tables and the lm_head."""
        parts = self.param_breakdown()
        return self.n_params - parts["embeddings"] - parts["lm_head"]

    @property
    def active_non_embedding_params(self) -> int:
        """N for the FLOPs of one token: non-embedding parameters of the experts it uses."""
        return self.non_embedding_params - (self.n_params - self.active_params)

    def weight_bytes(self, dtype: str = "bf16") -> float:
        """Bytes to store all weights (every expert) in ``dtype`` (int4: 0.5 B, no group scales)."""
        from tutx.scaling.units import dtype_bytes

        return self.n_params * dtype_bytes(dtype)

    # ---- display -----------------------------------------------------------------------
    def summary(self) -> str:
        """One line a reader can check against the model card."""
        if self.num_kv_heads == self.num_heads:
            attn = f"MHA {self.num_heads} heads"
        else:
            kind = "MQA" if self.num_kv_heads == 1 else "GQA"
            attn = f"{kind} {self.num_heads}/{self.num_kv_heads} heads"
        kind = "" if self.counted_on_meta else "SwiGLU " if self.gated_mlp else "GeLU "  # meta: not known
        mlp = f"{kind}MLP {self.intermediate_size}"
        if self.num_experts:
            mlp = (f"MoE {self.num_experts} experts, {self.experts_per_token} active "
                   f"({human(self.active_params)} active params)")
        head = "no" if not self.lm_head else "tied" if self.tie_embeddings else "untied"
        line = (
            f"{self.name}: {human(self.n_params)} params, {self.num_layers} layers, hidden "
            f"{self.hidden_size}, {attn} (head_dim {self.head_dim}), {mlp}, vocab {self.vocab_size}, "
            f"{head} lm_head"
        )
        return line + (" (parameters counted on the meta device)" if self.counted_on_meta else "")

    def __repr__(self) -> str:
        return f"ModelSpec({self.name!r}, {human(self.n_params)} params, {self.num_layers} layers)"


def _mlp(h: int, i: int, gated: bool, bias: bool) -> int:
    """One MLP: gate and up (or one up) projection and the down projection, with their biases."""
    return (3 if gated else 2) * h * i + ((2 if gated else 1) * i + h) * bias
