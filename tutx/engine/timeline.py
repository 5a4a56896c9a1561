"""Chapter 6's pictures of the engine at work, drawn from the step records (:class:`StepStats`).

:class:`StepRecorder` is a step hook: ``recorder = StepRecorder(engine)`` keeps every step's
record. :func:`plot_timeline` draws one row per request and one column per step, coloured by what
the request did; :func:`plot_block_tables` draws the block tables of one step and the pool they
point into. Nothing here touches the engine's internals: the records are what it reports.
"""
from __future__ import annotations

from tutx.engine.sampling import SamplingParams
from tutx.engine.stats import StepStats

STATES = ["waiting", "prefill", "decode", "paused (holds its blocks)", "preempted (blocks freed)", "finished"]
STATE_COLORS = ["white", "tab:orange", "tab:blue", "lightsteelblue", "tab:red", "0.85"]


class StepRecorder:
    """Records every step of ``engine`` (a step hook); ``steps`` is the list of :class:`StepStats`."""

    def __init__(self, engine):
        self.steps: list[StepStats] = []
        engine.add_step_hook(self.steps.append)

    def __len__(self) -> int:
        return len(self.steps)

    def fullest(self) -> StepStats:
        """The (last) step whose running sequences held the most blocks."""
        return max(self.steps, key=lambda s: (sum(map(len, s.block_tables.values())), s.step))


def run_to_end(engine, requests) -> dict[str, list[int]]:
    """Queue greedy ``(request_id, prompt, max_tokens)`` requests (eos ignored), step until the engine
    is idle; the completions by request id."""
    for name, prompt, n in requests:
        engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), request_id=name)
    done = {}
    while engine.has_unfinished():
        done.update((out.request_id, out.token_ids) for out in engine.step() if out.finished)
    return done


def timeline_grid(steps: list[StepStats], names: list[str]):
    """``[len(names), len(steps)]`` state codes (indices into :data:`STATES`)."""
    import numpy as np

    grid = np.zeros((len(names), len(steps)), dtype=int)
    for i, name in enumerate(names):
        ran = [t for t, s in enumerate(steps) if name in s.request_ids]
        started = False
        for t, s in enumerate(steps):
            if name in s.request_ids:
                grid[i, t], started = (1 if name in s.prefill_request_ids or s.is_prefill else 2), True
            elif ran and t > ran[-1]:
                grid[i, t] = 5
            elif name in s.block_tables:
                grid[i, t] = 3  # running, but this step was another request's prefill
            elif started:
                grid[i, t] = 4
    return grid


def plot_timeline(ax, steps: list[StepStats], names: list[str], labels: list[str] | None = None,
                  num_steps: int | None = None) -> None:
    """One row per request, one column per engine step, coloured by what the request did."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    grid = timeline_grid(steps, names)
    ax.imshow(grid, cmap=ListedColormap(STATE_COLORS), vmin=0, vmax=len(STATES) - 1, aspect="auto",
              interpolation="nearest")
    ax.set_yticks(range(len(names)), labels or names)
    ax.set_xticks(range(len(steps)), [{"prefill": "P", "mixed": "M"}.get(s.kind, "D") for s in steps], fontsize=7)
    ax.set_xticks(np.arange(-0.5, len(steps)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(names)), minor=True)
    ax.grid(False)
    ax.grid(which="minor", color="0.6", lw=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlim(-0.5, (num_steps or len(steps)) - 0.5)
    ax.set_xlabel("engine step (P = prefill step, D = decode step, M = mixed)")


def state_legend(fig, **kwargs) -> None:
    """The legend of :func:`plot_timeline`'s colours, below the axes."""
    from matplotlib.patches import Patch

    fig.legend(handles=[Patch(facecolor=c, edgecolor="0.5", label=s) for s, c in zip(STATES, STATE_COLORS)],
               loc="lower center", ncol=6, fontsize=8, **kwargs)


def plot_block_tables(tables: dict[str, tuple[int, ...]], num_blocks: int, title: str):
    """Top: each sequence's block table (logical block → pool block). Bottom: the pool, by owner.

    A block held by two sequences (prefix sharing) is hatched. Returns the figure.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    names = sorted(tables)
    palette = dict(zip(names, plt.get_cmap("tab10").colors))
    owners: dict[int, list[str]] = {}
    for name in names:
        for logical, block in enumerate(tables[name]):
            owners.setdefault(block, []).append(f"{name}[{logical}]")
    width = max(num_blocks, max(len(t) for t in tables.values()))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 0.45 * len(names) + 1.6),
                                      gridspec_kw={"height_ratios": [len(names), 1.3]})
    for row, name in enumerate(names):
        for logical, block in enumerate(tables[name]):
            top.add_patch(plt.Rectangle((logical, row), 1, 1, facecolor=palette[name], edgecolor="k",
                                        hatch="//" if len(owners[block]) > 1 else None, alpha=0.8))
            top.text(logical + 0.5, row + 0.5, str(block), ha="center", va="center", fontsize=8)
    top.set(xlim=(0, width), ylim=(len(names), 0), yticks=np.arange(len(names)) + 0.5, yticklabels=names,
            xticks=np.arange(width) + 0.5, xticklabels=range(width),
            xlabel="logical block (number = pool block it lives in)", title=title)
    for block in range(num_blocks):
        who = owners.get(block, [])
        color = palette[who[0].split("[")[0]] if who else "white"
        bottom.add_patch(plt.Rectangle((block, 0), 1, 1, facecolor=color, edgecolor="k",
                                       hatch="//" if len(who) > 1 else None, alpha=0.8 if who else 1))
        bottom.text(block + 0.5, 0.5, "\n".join(who), ha="center", va="center", fontsize=7)
    bottom.set(xlim=(0, width), ylim=(0, 1), yticks=[], xticks=np.arange(width) + 0.5, xticklabels=range(width),
               xlabel="pool block (white = free)")
    for ax in (top, bottom):
        ax.grid(False)
    fig.tight_layout()
    return fig


__all__ = ["StepRecorder", "run_to_end", "timeline_grid", "plot_timeline", "plot_block_tables", "state_legend",
           "STATES", "STATE_COLORS"]
