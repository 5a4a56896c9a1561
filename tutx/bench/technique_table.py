"""Measure the optimisation table: every technique in one process, interleaved, with its noise.

Speed: each round times one generation (prefill, then ``gen_len - 1`` decode steps) of every
variant in turn — the order rotates between rounds — so a noisy neighbour slows all variants
alike; a row's speed-up is the median over rounds of ``reference time / variant time`` measured in
the same round, with a bootstrap interval. Memory: weights (every parameter and buffer) plus the
KV cache of that generation. Quality: the course's held-out perplexity protocol, and the paired
bootstrap noise of the difference (``tutx.models.perplexity_noise``).
"""
from __future__ import annotations

import math
import statistics

import torch

from tutx._validate import check_int, check_positive_int
from tutx.bench.model import generate_timed, weight_bytes
from tutx.bench.stats import bootstrap_ci
from tutx.bench.techniques import Technique, default_techniques, reference_builders
from tutx.models.kv import kv_cache_nbytes

MB = 2**20


def calibration_batches(tokenizer, num_batches: int = 4, batch_size: int = 8, seq_len: int = 256, seed: int = 0):
    """Windows of the training plays (never the held-out ones), for GPTQ and the pruning scores."""
    from tutx.models.corpus import split_plays
    from tutx.train import random_windows

    train, _ = split_plays()
    ids = tokenizer("\n".join(train[n][:20000] for n in sorted(train)), add_special_tokens=False,
                    return_tensors="pt").input_ids[0]
    return random_windows(ids, batch_size=batch_size, seq_len=seq_len, num_batches=num_batches, seed=seed)


class _Context(dict):
    """What the builders share; the calibration batches are made on first use (quantization and pruning only)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def __missing__(self, key):
        if key != "calibration":
            raise KeyError(key)
        self[key] = calibration_batches(self.tokenizer)
        return self[key]


def explain(row: dict) -> str:
    """One sentence (or two) on why this row's measured numbers differ from the claimed/published
    ones. It depends on the measured ratios and their intervals, so it is generated, not typed."""
    kind, dec, pre = row["kind"], row["decode_speedup"], row["prefill_speedup"]
    dlo, dhi = row["decode_speedup_ci"]
    mem = row["memory_reduction"]
    clear_gain, clear_loss = dlo > 1.05, dhi < 0.95
    quality = (f" Perplexity rises by {row['ppl_change']:.1f} (noise ±{row['ppl_noise']:.2f}): the KV heads were "
               "mean-pooled without the uptraining the GQA paper applies." if row["ppl_change"] > 3 * row["ppl_noise"] > 0
               else "")
    noise = (f" The decode interval [{dlo:.2f}, {dhi:.2f}] includes 1: at this level of timing noise, no change "
             "cannot be ruled out." if dlo < 1 < dhi else "")
    if kind in ("quant", "combo") and not clear_gain:
        what = "slower" if clear_loss else "no faster"
        return (f"Memory shrinks {mem:.1f}× but decode is {what} ({dec:.2f}×): on this CPU our quantized "
                f"modules dequantize in PyTorch before a float matmul, and {row['weights_mb']:.0f} MB of weights "
                "sit in the CPU's caches, so there is no memory-bandwidth bottleneck to relieve; the published "
                "gains come from fused low-bit GPU kernels on multi-GB models whose decode is bandwidth-bound." + noise)
    if kind in ("quant", "combo"):
        return (f"Decode is {dec:.2f}× faster with {mem:.1f}× less memory: fewer bytes per weight read; "
                "published gains are larger on GPUs where decode is bound by HBM bandwidth." + noise)
    if kind == "prune":
        return (f"Removing whole heads/neurons shrinks the matmuls, so the speed-up ({pre:.2f}× prefill, "
                f"{dec:.2f}× decode) follows the removed FLOPs, diluted by the parts pruning does not touch "
                "(embeddings, LM head, norms, Python overhead); the quality cost is measured without "
                "fine-tuning, which the published numbers include." + noise)
    if kind == "attention":
        return (f"At a {row['prompt_len']}-token prompt the fused kernel gives {pre:.2f}× prefill and {dec:.2f}× "
                "decode, mostly by running fewer small operators; FlashAttention's 2–10× is for the attention "
                "kernel alone at long sequences on a GPU, where the materialised score matrix dominates memory "
                "traffic." + noise)
    if kind == "kv_heads":
        return (f"Fewer KV heads shrink the KV cache and the k/v projections (memory {mem:.2f}× here, mostly "
                f"weights at {row['prompt_len']} tokens and batch {row['batch']}); decode is {dec:.2f}×. The cache "
                "saving grows with context length and batch, where the cache dominates the bytes read per step, "
                "which is where the published speed-ups are measured." + quality + noise)
    return f"Measured {pre:.2f}× prefill and {dec:.2f}× decode on this machine." + noise


def measure_techniques(model, tokenizer, techniques: list[Technique] | None = None, *, rounds: int = 7,
                       batch: int = 1, prompt_len: int = 128, gen_len: int = 16, seed: int = 0,
                       text: str | None = None, progress: bool = True) -> list[dict]:
    """One row per technique (plus the baseline): memory, speed-ups with intervals, perplexity change.

    Every number in a row is measured here; the ``claimed``/``published`` strings come from the
    :class:`Technique` and ``why`` from :func:`explain`. ``text`` replaces the held-out text of the
    course's perplexity protocol (tests use a short one; the table uses the protocol).
    """
    from tqdm.auto import tqdm

    from tutx.models.perplexity import perplexity_noise, window_nlls

    check_positive_int("rounds", rounds)
    check_positive_int("batch", batch)
    check_positive_int("prompt_len", prompt_len)
    check_int("gen_len", gen_len, minimum=2)
    cfg = model.config
    techniques = (default_techniques(cfg.num_key_value_heads, cfg.num_attention_heads) if techniques is None
                  else list(techniques))
    if not techniques:
        raise ValueError("techniques: expected at least one technique, got none")
    ctx = _Context(tokenizer)
    variants = {"baseline": model}
    refs = reference_builders(model.config.num_attention_heads)
    for t in tqdm(techniques, desc="building variants", disable=not progress, leave=False):
        if t.reference != "baseline" and t.reference not in variants:
            variants[t.reference] = refs[t.reference](model, ctx)
        variants[t.name] = t.build(model, ctx).eval()
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=gen)  # [B, P]
    names = list(variants)
    times = {n: {"prefill": [], "decode": []} for n in names}
    kv = {}
    for n in names:  # warm-up, and the KV cache each variant keeps
        kv[n] = kv_cache_nbytes(generate_timed(variants[n], ids, gen_len)["cache"])
    for r in tqdm(range(rounds), desc="interleaved rounds", disable=not progress, leave=False):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            run = generate_timed(variants[n], ids, gen_len)
            times[n]["prefill"].append(run["prefill_s"])
            times[n]["decode"].append(statistics.fmean(run["decode_s"]))
    quality = {}
    for n in tqdm(names, desc="held-out perplexity", disable=not progress, leave=False):
        nll, count = window_nlls(variants[n], tokenizer, text)
        quality[n] = (nll, count, math.exp(float(nll.sum() / count.sum())))

    def row(name, kind, reference, t=None):
        out = {"technique": name, "kind": kind, "reference": reference, "batch": batch, "prompt_len": prompt_len,
               "gen_len": gen_len, "rounds": rounds}
        mem = weight_bytes(variants[name]) + kv[name]
        ref_mem = weight_bytes(variants[reference]) + kv[reference]
        out.update(weights_mb=weight_bytes(variants[name]) / MB, kv_cache_mb=kv[name] / MB,
                   memory_reduction=ref_mem / mem)
        for phase in ("prefill", "decode"):
            ratios = [a / b for a, b in zip(times[reference][phase], times[name][phase])]
            lo, hi = bootstrap_ci(ratios, n_resamples=500, seed=seed)
            out[f"{phase}_ms"] = 1e3 * statistics.median(times[name][phase])
            out[f"{phase}_speedup"] = statistics.median(ratios)
            out[f"{phase}_speedup_ci"] = [lo, hi]
        nll, count, ppl = quality[name]
        rnll, rcount, rppl = quality[reference]
        out.update(ppl=ppl, ppl_change=ppl - rppl,
                   ppl_noise=perplexity_noise(nll, count, baseline=(rnll, rcount)) if name != reference else 0.0)
        if t is not None:
            out.update(claimed=t.claimed, published=t.published, cite=t.cite)
            out["why"] = explain(out)
        else:
            out.update(claimed="—", published="—", cite="", why="The fp32 model every other row is compared against.")
        return out

    rows = [row("baseline", "baseline", "baseline")]
    rows += [row(t.name, t.kind, t.reference, t) for t in techniques]
    return rows


def _ci(r: dict, key: str) -> str:
    lo, hi = r[f"{key}_ci"]
    return f"{r[key]:.2f}× [{lo:.2f}, {hi:.2f}]"


def display_rows(rows: list[dict]) -> list[dict]:
    """The table Chapter 8 prints: every number formatted from a measured row (none typed in).

    Columns: the technique and what it is measured against, memory reduction, prefill and decode
    speed-up (median over interleaved rounds, bootstrap 95% interval), perplexity change ± its
    paired noise, the outline's claim and the published number with its source.
    """
    out = []
    for r in rows:
        if r["kind"] == "baseline":
            continue
        out.append({
            "technique": r["technique"], "measured against": r["reference"],
            "memory": f"{r['memory_reduction']:.2f}× less",
            "prefill": _ci(r, "prefill_speedup"), "decode": _ci(r, "decode_speedup"),
            "perplexity change": f"{r['ppl_change']:+.2f} ± {r['ppl_noise']:.2f}",
            "claimed (outline)": r["claimed"],
            "published": r["published"],
        })
    return out


def gpu_rows() -> list[dict]:
    """GPU rows from the results files ``scripts/gpu_check.py`` recorded (``tutx.bench.latest``): our
    INT8/INT4 weight-only kernels against cuBLAS bf16 at batch 1 (decode), and our Triton
    FlashAttention forward against PyTorch's (SDPA, FlashAttention-2). Empty where none was recorded."""
    from tutx.bench.results import latest

    rows = []
    quant = latest("quant_matmul")
    if quant is not None:
        for op, name in (("int8_weight_only", "INT8 weight-only GEMV"), ("int4_weight_only_g128", "INT4 g128 GEMV")):
            vals = [r["speedup_vs_cublas"] for r in quant.rows if r.get("op") == op and r.get("M") == 1
                    and "speedup_vs_cublas" in r]
            if vals:
                rows.append({"technique": name, "measured against": "cuBLAS bf16, batch 1",
                             "speed-up (median over shapes)": f"{statistics.median(vals):.2f}×",
                             "range": f"{min(vals):.2f}–{max(vals):.2f}×", "shapes": len(vals),
                             "device": quant.device, "file": quant.path.name})
    attn = latest("attention")
    if attn is not None:
        vals = [r["ratio"] for r in attn.rows if r.get("op") == "attention fwd" and r.get("baseline") == "sdpa_flash"
                and "ratio" in r]
        if vals:
            rows.append({"technique": "our Triton FlashAttention fwd", "measured against": "PyTorch SDPA (FlashAttention-2)",
                         "speed-up (median over shapes)": f"{statistics.median(vals):.2f}×",
                         "range": f"{min(vals):.2f}–{max(vals):.2f}×", "shapes": len(vals),
                         "device": attn.device, "file": attn.path.name})
    return rows


def distill_rows() -> list[dict]:
    """The distillation row, from the Chapter 2 results file (``latest("compress_distill")``): the
    distilled student against its teacher, memory and held-out perplexity as that run measured them.
    Empty when no such file is there."""
    from tutx.bench.results import latest

    m = latest("compress_distill")
    if m is None:
        return []
    by = {r.get("model"): r for r in m.rows}
    teacher, student = by.get("teacher (tiny LM)"), by.get("distilled student")
    if teacher is None or student is None:
        return []
    scratch = by.get("student from scratch")
    return [{"technique": "distillation to a smaller student", "measured against": "its teacher (the tiny LM)",
             "memory": f"{teacher['bytes_fp32'] / student['bytes_fp32']:.2f}× less",
             "perplexity change": f"{student['heldout_ppl'] - teacher['heldout_ppl']:+.1f}",
             "same student from scratch": f"{scratch['heldout_ppl'] - teacher['heldout_ppl']:+.1f}" if scratch else "—",
             "training": f"{student.get('steps', '?')} steps",
             "published": "DistilBERT: 40% smaller, 60% faster, 97% of BERT's quality",
             "file": m.path.name}]
