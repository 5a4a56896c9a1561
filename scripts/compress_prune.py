"""Chapter 2's pruning experiments, too long for the notebook: writes tutx/results/compress_prune-<tag>-<date>.json.

Areas (each a list of row dicts; the notebook reads them with ``tutx.bench.latest(area)``):

- ``compress_head_scores``: every head of the tiny LM scored by Michel et al.'s gradient importance
  and by the seed's mean attention weight;
- ``compress_heads``: held-out perplexity after pruning 0-60% of the heads, ranked by each score
  (and at random), without recovery and after a short distillation from the unpruned model;
- ``compress_prune_recover``: 30% of the heads pruned, then recovered for the same steps, data and
  learning rate by distillation from the unpruned model (the Minitron recipe) or by plain
  fine-tuning; perplexity curves and the final held-out perplexity;
- ``compress_minilm``: all-MiniLM-L6-v2 with 10-50% of heads or FFN neurons removed: cosine
  similarity of its sentence embeddings to the original's, overlap of the 10 nearest neighbours,
  parameters and CPU latency (interleaved with the original's, medians).

Run: ``OMP_NUM_THREADS=1 python scripts/compress_prune.py`` (about 8 minutes on an idle 2-core CPU;
``--quick`` for a smoke run that writes nothing).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from tutx.bench.environment import cpu_name

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
RECOVER_FRACTIONS = (0.2, 0.4, 0.6)
MINILM_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)




def environment(threads: int, argv: list[str]) -> dict:
    import transformers

    import tutx

    return {"device": f"{cpu_name()} ({threads} threads)", "machine": platform.machine(), "threads": threads,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["compress_prune.py", *argv]), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tutx": getattr(tutx, "__version__", "?"), "load_average_start": os.getloadavg()[0]}


def train_ids(tok, chars: int) -> torch.Tensor:
    """Token ids of the tiny LM's training plays (the first ``chars`` characters)."""
    from tutx.models.corpus import split_plays

    train, _ = split_plays()
    text = "\n\n".join(train.values())[:chars]
    return tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def recover(model, teacher, tok, batches, distil: bool, eval_text: str | None, eval_every: int | None, lr: float):
    """Distil from ``teacher`` (alpha=1, T=1: logits only) or fine-tune (alpha=0: next-token CE) in place."""
    from tutx.compress import DistillationTrainer

    trainer = DistillationTrainer(model, teacher, tokenizer=tok, temperature=1.0, alpha=1.0 if distil else 0.0,
                                  lr=lr, warmup_steps=5, seed=0, eval_every=eval_every, eval_text=eval_text)
    return trainer.fit(batches, progress=False)


def tiny_experiments(args, report: dict, save) -> None:
    from tutx.compress import head_importance, mean_attention_score
    from tutx.models import heldout_perplexity, load_tiny
    from tutx.train import random_windows

    teacher, tok = load_tiny()
    ids = train_ids(tok, args.train_chars)
    score_batches = random_windows(ids, 8, 128, args.score_batches, seed=1)
    scores = {"gradient": head_importance(teacher, score_batches),
              "mean_attention": mean_attention_score(teacher, score_batches[:2]),
              "random": torch.rand(teacher.config.num_hidden_layers, teacher.config.num_attention_heads,
                                   generator=torch.Generator().manual_seed(0))}
    report["compress_head_scores"] = [
        {"layer": layer, "head": head, "gradient": round(float(scores["gradient"][layer, head]), 5),
         "mean_attention": float(scores["mean_attention"][layer, head])}
        for layer in range(scores["gradient"].shape[0]) for head in range(scores["gradient"].shape[1])]
    base_ppl = heldout_perplexity(teacher, tok)
    print(f"unpruned perplexity {base_ppl:.2f}", flush=True)
    if args.only in (None, "tiny", "sweep"):
        sweep(args, teacher, tok, ids, scores, base_ppl, report, save)
    if args.only in (None, "tiny", "recover"):
        recover_30(args, teacher, tok, ids, scores, base_ppl, report, save)


def sweep(args, teacher, tok, ids, scores, base_ppl, report, save) -> None:
    """Perplexity vs fraction of heads removed, for each score, without and with a short distillation."""
    from tutx.compress import heads_to_prune, prune_heads_
    from tutx.models import heldout_perplexity
    from tutx.train import random_windows

    rows = [{"score": s, "fraction": 0.0, "recovery": r, "perplexity": round(base_ppl, 3), "params": n_params(teacher)}
            for s in scores for r in ("none", "distil")]
    recover_batches = random_windows(ids, args.batch, 128, args.recover_steps, seed=2)
    for fraction in args.fractions:
        for name, score in scores.items():
            model = prune_heads_(copy.deepcopy(teacher), heads_to_prune(score, fraction))
            ppl = heldout_perplexity(model, tok)
            rows.append({"score": name, "fraction": fraction, "recovery": "none", "perplexity": round(ppl, 3),
                         "params": n_params(model)})
            print(f"{name:15s} {fraction:.1f} none   {ppl:8.2f}", flush=True)
            if fraction in args.recover_fractions and name != "random":
                recover(model, teacher, tok, recover_batches, True, None, None, args.lr)
                ppl = heldout_perplexity(model, tok)
                rows.append({"score": name, "fraction": fraction, "recovery": "distil", "perplexity": round(ppl, 3),
                             "params": n_params(model), "steps": args.recover_steps})
                print(f"{name:15s} {fraction:.1f} distil {ppl:8.2f}", flush=True)
        report["compress_heads"] = rows
        save()


def recover_30(args, teacher, tok, ids, scores, base_ppl, report, save) -> None:
    """Prune 30% of the heads by the gradient score; recover by distillation vs fine-tuning, same everything."""
    from tutx.compress import heads_to_prune, prune_heads_
    from tutx.models import heldout_perplexity, heldout_text
    from tutx.train import random_windows

    plan = heads_to_prune(scores["gradient"], 0.3)
    eval_text = heldout_text()[: args.eval_chars]
    batches = random_windows(ids, args.batch, 128, args.steps, seed=3)
    rows = []
    for method, distil in (("distil", True), ("finetune", False)):
        model = prune_heads_(copy.deepcopy(teacher), plan)
        start = heldout_perplexity(model, tok)
        t0 = time.perf_counter()
        history = recover(model, teacher, tok, batches, distil, eval_text, args.eval_every, args.lr)
        seconds = time.perf_counter() - t0
        final = heldout_perplexity(model, tok)
        rows += [{"method": method, "step": e["step"], "perplexity": round(e["perplexity"], 3), "kind": "curve"}
                 for e in history["eval"]]
        rows.append({"method": method, "step": args.steps, "kind": "final", "perplexity": round(final, 3),
                     "start_perplexity": round(start, 3), "teacher_perplexity": round(base_ppl, 3),
                     "heads_removed": sum(len(h) for h in plan.values()), "params": n_params(model),
                     "teacher_params": n_params(teacher), "batch": args.batch, "seq_len": 128, "lr": args.lr,
                     "seconds": round(seconds, 1)})
        print(f"30% heads, {method}: {start:.2f} -> {final:.2f} ({seconds:.0f} s)", flush=True)
        report["compress_prune_recover"] = rows
        save()


def pair_batches(n_batches: int, size: int) -> list[tuple[list[str], list[str]]]:
    """Pairs of consecutive lines from the training plays: a contrastive task for MiniLM's head importance."""
    from tutx.models.corpus import split_plays

    train, _ = split_plays()
    lines = [ln.strip() for ln in "\n".join(list(train.values())[:4]).splitlines()
             if len(ln.strip()) > 25 and not ln.strip().endswith(":")]
    gen = torch.Generator().manual_seed(4)
    starts = torch.randint(0, len(lines) - 1, (n_batches, size), generator=gen).tolist()
    return [([lines[i] for i in row], [lines[i + 1] for i in row]) for row in starts]


def eval_sentences(n: int) -> list[str]:
    """A fixed set of ``n`` lines of the held-out plays (the MiniLM comparisons)."""
    from tutx.models import heldout_text

    lines = [ln.strip() for ln in heldout_text().splitlines() if 30 <= len(ln.strip()) <= 120
             and not ln.strip().endswith(":")]
    step = max(len(lines) // n, 1)
    return lines[::step][:n]


def minilm_experiments(args, report: dict, save) -> None:
    from tutx.compress import (
        ffn_importance,
        head_importance,
        heads_to_prune,
        prune_ffn_,
        prune_heads_,
    )
    from tutx.models import load_minilm, sentence_embeddings

    model, tok = load_minilm()

    def contrastive(m, pair):
        a, b = (tok(s, padding=True, truncation=True, max_length=64, return_tensors="pt") for s in pair)
        ea, eb = (F.normalize(_pool(m, x), dim=-1) for x in (a, b))
        return F.cross_entropy(20.0 * ea @ eb.T, torch.arange(len(pair[0])))  # in-batch negatives

    pairs = pair_batches(args.score_batches, 16)
    head_scores = head_importance(model, pairs, loss_fn=contrastive)
    neuron_scores = ffn_importance(model, [tok(p[0], padding=True, return_tensors="pt") for p in pairs])
    sentences = eval_sentences(args.sentences)
    ref = sentence_embeddings(model, tok, sentences)
    ref_nn = _neighbours(ref, 10)
    timing_batch = sentences[:32]
    variants = {"original": model}
    for fraction in args.minilm_fractions:
        variants[f"heads {fraction:.0%}"] = prune_heads_(copy.deepcopy(model), heads_to_prune(head_scores, fraction))
        variants[f"ffn {fraction:.0%}"] = prune_ffn_(copy.deepcopy(model), fraction, importance=neuron_scores)
    times = _interleaved_ms({k: (lambda m=m: sentence_embeddings(m, tok, timing_batch)) for k, m in variants.items()},
                            args.rounds)
    rows = []
    for name, m in variants.items():
        emb = sentence_embeddings(m, tok, sentences)
        kind, _, frac = name.partition(" ")
        rows.append({"variant": name, "pruned": kind if frac else "none",
                     "fraction": float(frac.rstrip("%")) / 100 if frac else 0.0,
                     "cosine_mean": round(float((emb * ref).sum(-1).mean()), 4),
                     "cosine_min": round(float((emb * ref).sum(-1).min()), 4),
                     "nn10_overlap": round(_overlap(_neighbours(emb, 10), ref_nn), 4),
                     "params": n_params(m), "latency_ms": round(times[name], 2),
                     "speedup": round(times["original"] / times[name], 3), "sentences": len(sentences),
                     "timing_batch": len(timing_batch)})
        print(rows[-1], flush=True)
    report["compress_minilm"] = rows
    save()


def _pool(model, batch):
    hidden = model(**batch).last_hidden_state  # [N, T, H]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, T, 1]
    return (hidden * mask).sum(1) / mask.sum(1)


def _neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    sim = emb @ emb.T
    sim.fill_diagonal_(-2.0)
    return sim.topk(k, dim=1).indices  # [N, k]


def _overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)) / a.numel()


def _interleaved_ms(fns: dict, rounds: int) -> dict:
    """Median milliseconds of each function, timed round-robin (shared machines drift)."""
    for fn in fns.values():
        fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny settings, write nothing (smoke test)")
    ap.add_argument("--only", choices=("tiny", "sweep", "recover", "minilm"), default=None,
                    help="one part (tiny = sweep + recover); parts can run in parallel, each writes its own file")
    args = ap.parse_args(argv)
    q = args.quick
    args.fractions = (0.3,) if q else FRACTIONS
    args.recover_fractions = (0.3,) if q else RECOVER_FRACTIONS
    args.minilm_fractions = (0.3,) if q else MINILM_FRACTIONS
    args.train_chars = 200_000 if q else 1_500_000
    args.score_batches = 1 if q else 4
    args.recover_steps, args.steps, args.eval_every = (2, 3, 2) if q else (30, 100, 25)
    args.batch, args.lr, args.eval_chars = 8, 5e-4, 8_000
    args.sentences, args.rounds = (40, 2) if q else (200, 5)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report = {"environment": environment(args.threads, argv)}
    stamp = report["environment"]["date"][:16].replace(":", "")
    part = f"-{args.only}" if args.only else ""
    out = Path(__file__).resolve().parents[1] / "tutx" / "results" / f"compress_prune{part}-{args.tag}-{stamp}.json"

    def save():
        report["environment"]["load_average_end"] = os.getloadavg()[0]
        if not q:
            out.write_text(json.dumps(report, indent=1) + "\n")

    if args.only != "minilm":
        tiny_experiments(args, report, save)
    if args.only in (None, "minilm"):
        minilm_experiments(args, report, save)
    print(("(quick: nothing written)" if q else f"wrote {out}"), flush=True)
    return report


if __name__ == "__main__":
    main()
