"""A picture of a tensor-parallel split: which rank holds which part of each weight (Chapter 5)."""
from __future__ import annotations

import numpy as np

from tutx.parallel.tp_plan import TPPlan

__all__ = ["draw_tensor_parallel"]


def draw_tensor_parallel(plan: TPPlan, title: str | None = None):
    """Draw the seven weight matrices of one decoder layer, coloured by the rank that holds each
    part (``[out, in]`` as stored by ``nn.Linear``, to scale); returns the matplotlib figure.

    q/k/v and gate/up are split by output rows (column-parallel), o and down by input columns
    (row-parallel, followed by the all-reduce). KV rows held by several ranks are marked as copies.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    if not isinstance(plan, TPPlan):
        raise TypeError(f"plan: expected a TPPlan (tutx.parallel.plan_tensor_parallel), got {type(plan).__name__}")
    n, h, inter = plan.world_size, plan.hidden_size, plan.intermediate_size
    q, kv = plan.num_heads * plan.head_dim, plan.num_kv_heads * plan.head_dim
    ranks = range(n)
    mats = [("q_proj", q, h, [plan.q_rows(r) for r in ranks], "rows"),
            ("k_proj", kv, h, [plan.kv_rows(r) for r in ranks], "rows"),
            ("v_proj", kv, h, [plan.kv_rows(r) for r in ranks], "rows"),
            ("o_proj", h, q, [plan.q_rows(r) for r in ranks], "cols"),
            ("gate_proj", inter, h, [plan.mlp_rows(r) for r in ranks], "rows"),
            ("up_proj", inter, h, [plan.mlp_rows(r) for r in ranks], "rows"),
            ("down_proj", h, inter, [plan.mlp_rows(r) for r in ranks], "cols")]
    colors = ListedColormap(plt.get_cmap("tab10").colors[:n] if n <= 10 else plt.get_cmap("viridis")(np.linspace(0, 1, n)))
    fig, axes = plt.subplots(1, len(mats), figsize=(15, 3.6), sharey=True,
                             gridspec_kw={"width_ratios": [m[2] for m in mats]})
    for ax, (name, out, inp, spans, how) in zip(axes, mats):
        holders: dict[tuple[int, int], list[int]] = {}
        for rank, span in enumerate(spans):
            holders.setdefault(span, []).append(rank)
        copies = max(len(who) for who in holders.values())
        owner = np.zeros((out, copies) if how == "rows" else (1, inp), dtype=int)
        for (start, stop), who in holders.items():
            if how == "rows":  # a KV head held by several ranks: one stripe per copy
                for j in range(copies):
                    owner[start:stop, j] = who[j % len(who)]
            else:
                owner[:, start:stop] = who[0]
            if len(who) > 1:
                ax.text(inp / 2, (start + stop) / 2, f"copies: ranks {who[0]}-{who[-1]}", ha="center",
                        va="center", fontsize=7, color="white")
        ax.imshow(owner, cmap=colors, vmin=0, vmax=max(n - 1, 1), aspect="auto", extent=(0, inp, out, 0),
                  interpolation="nearest")
        split = "output rows: column-parallel" if how == "rows" else "input cols: row-parallel"
        ax.set_title(f"{name}\n[{out}, {inp}]", fontsize=9)
        ax.set_xlabel(split + ("\nthen all-reduce" if how == "cols" else ""), fontsize=8)
        ax.set_xticks([])
        ax.grid(False)
    axes[0].set_ylim(max(m[1] for m in mats), 0)  # shared: every matrix to the same scale
    axes[0].set_ylabel("output features")
    fig.legend(handles=[Patch(color=colors(r), label=f"rank {r}") for r in ranks], loc="upper right",
               ncol=min(n, 8), fontsize=8)
    fig.suptitle(title or f"One decoder layer over {n} ranks", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig
