"""The report's figures, one function per plot, each from rows of a results file.

Offline rows (:func:`tutx.bench.benchmark_model`): ``batch``, ``prompt_len``, ``prefill_ms``,
``decode_ms`` (per generated token), ``prefill_tok_s``, ``decode_tok_s`` and the memory split
``weights_mb``/``kv_cache_mb``/``activations_mb``. Serving rows (``tutx.bench.serving.sweep``):
``request_rate``, ``output_throughput`` and ``ttft_ms``/``tpot_ms``/``e2el_ms`` dicts of
``median``/``p90``/``p99``. Each function returns a matplotlib ``Figure`` (or None when the rows
cannot draw it) and never calls ``plt.show``: the caller decides.
"""
from __future__ import annotations


def _groups(rows: list, key: str, by: str) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r[by], []).append(r)
    return {k: sorted(v, key=lambda r: r[key]) for k, v in sorted(out.items())}


def _figure(title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)  # the Report holds it; a notebook displays it with display(fig)
    return fig


def latency_vs_batch(rows: list):
    """Prefill latency and decode latency per token (median, with the p10–p90 band) against batch size."""
    if len({r["batch"] for r in rows}) < 2:
        return None
    fig, ax = _figure("Latency vs batch size")
    for plen, group in _groups(rows, "batch", "prompt_len").items():
        b = [r["batch"] for r in group]
        for key, style in (("prefill_ms", "-o"), ("decode_ms", "--s")):
            line, = ax.plot(b, [r[key] for r in group], style, label=f"{key.split('_')[0]}, prompt {plen}")
            if f"{key}_p10" in group[0]:
                ax.fill_between(b, [r[f"{key}_p10"] for r in group], [r[f"{key}_p90"] for r in group],
                                color=line.get_color(), alpha=0.15)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms (decode: per token)")
    ax.legend(fontsize=7)
    return _close(fig)


def throughput_vs_batch(rows: list):
    """Prefill and decode throughput (tokens/s) against batch size."""
    if len({r["batch"] for r in rows}) < 2:
        return None
    fig, ax = _figure("Throughput vs batch size")
    for plen, group in _groups(rows, "batch", "prompt_len").items():
        b = [r["batch"] for r in group]
        ax.plot(b, [r["prefill_tok_s"] for r in group], "-o", label=f"prefill, prompt {plen}")
        ax.plot(b, [r["decode_tok_s"] for r in group], "--s", label=f"decode, prompt {plen}")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="tokens / s")
    ax.legend(fontsize=7)
    return _close(fig)


def memory_vs_seq_len(rows: list):
    """Weights, KV cache and activations (MB, stacked) against prompt length, at the largest batch."""
    if len({r["prompt_len"] for r in rows}) < 2 or "kv_cache_mb" not in rows[0]:
        return None
    batch = max(r["batch"] for r in rows)
    seen: dict = {}
    for r in rows:
        if r["batch"] == batch:
            seen.setdefault(r["prompt_len"], r)  # first generated length per prompt length
    lens = sorted(seen)
    fig, ax = _figure(f"Memory vs sequence length (batch {batch})")
    bottom = [0.0] * len(lens)
    for key, label in (("weights_mb", "weights"), ("kv_cache_mb", "KV cache"), ("activations_mb", "activations")):
        vals = [seen[n][key] for n in lens]
        ax.bar([str(n) for n in lens], vals, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set(xlabel="prompt length (tokens)", ylabel="MB")
    ax.legend(fontsize=7)
    return _close(fig)


def latency_throughput(rows: list):
    """Serving: median and p99 TTFT and TPOT against achieved output throughput, one point per request rate."""
    rows = sorted(rows, key=lambda r: r["request_rate"])
    if len(rows) < 2:
        return None
    fig, ax = _figure("Latency vs throughput (one point per request rate)")
    x = [r["output_throughput"] for r in rows]
    for key, style in (("ttft_ms", "-o"), ("tpot_ms", "--s")):
        name = key.split("_")[0].upper()
        ax.plot(x, [r[key]["median"] for r in rows], style, label=f"{name} median")
        ax.plot(x, [r[key]["p99"] for r in rows], style, alpha=0.5, label=f"{name} p99")
    ax.set(yscale="log", xlabel="output throughput (tokens / s)", ylabel="ms")
    ax.legend(fontsize=7)
    return _close(fig)
