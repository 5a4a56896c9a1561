"""Chapter 2's longer experiments: distillation vs training from scratch, and LayerDrop vs depth.

Writes ``tutx/results/compress-cpu<threads>t-<date>.json`` with the usual ``environment`` and areas:

- ``compress_distill``: one row per student (distilled, from scratch) with its learning curve
  (``curve``: loss per step; ``evals``: perplexity on a fixed held-out slice every ``--eval-every``
  steps), the held-out perplexity by the course protocol (``tutx.models.heldout_perplexity``),
  parameters, bytes (fp32) and the student ``config`` (so Chapter 8 can rebuild it); plus a
  ``teacher`` row;
- ``compress_layerdrop``: the tiny LM fine-tuned with and without LayerDrop (same data, steps,
  seed), perplexity (protocol) at every depth (layers kept spread over the stack, and every other
  layer), and at full depth with the seed's wrong ``1 - p`` output rescaling.

    python scripts/compress_distill.py                    # the committed run (minutes on 2 idle cores; the committed file says how long it took)
    python scripts/compress_distill.py --distill-steps 50 --layerdrop-steps 20   # a quick try
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tutx.compress import (DistillationTrainer, layerdrop_, layers_to_keep, make_student, prune_layers_,  # noqa: E402
                           remove_layerdrop_, seed_rescaled_layers)
from tutx.models import heldout_perplexity, heldout_text, load_tiny  # noqa: E402
from tutx.models.corpus import split_plays  # noqa: E402
from tutx.train import causal_lm_loss, random_windows, train  # noqa: E402
from tutx.bench.environment import cpu_name as _cpu_name

STUDENT = dict(num_layers=2, hidden_size=128, intermediate_size=320, num_attention_heads=4, num_key_value_heads=1)
EVAL_CHARS = 6000  # the cheap periodic evaluation: the first 6,000 held-out characters




def train_ids(tok, chars_per_play: int) -> torch.Tensor:
    """Token ids of the training plays (never the held-out ones), ``chars_per_play`` characters of each."""
    plays, _ = split_plays()
    text = "\n".join(plays[n][:chars_per_play] for n in sorted(plays))
    return tok(text, add_special_tokens=False, return_tensors="pt").input_ids[0]


def model_row(name: str, model, tok) -> dict:
    n = sum(p.numel() for p in model.parameters())
    return {"model": name, "params": n, "bytes_fp32": 4 * n, "heldout_ppl": round(heldout_perplexity(model, tok), 3),
            "config": {k: getattr(model.config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                                             "num_attention_heads", "num_key_value_heads", "vocab_size")}}


def run_distill(teacher, tok, ids, args) -> list[dict]:
    rows = [model_row("teacher (tiny LM)", teacher, tok)]
    batches = random_windows(ids, args.batch_size, args.seq_len, args.distill_steps, seed=args.seed)
    ev = heldout_text()[:EVAL_CHARS]
    for name, alpha in (("distilled student", args.alpha), ("student from scratch", 0.0)):
        student = make_student(teacher, seed=args.seed, **STUDENT)
        trainer = DistillationTrainer(student, teacher, tokenizer=tok, temperature=args.temperature, alpha=alpha,
                                      lr=args.lr, warmup_steps=args.warmup, seed=args.seed,
                                      eval_every=args.eval_every, eval_text=ev)
        t0 = time.perf_counter()
        hist = trainer.fit(batches, desc=name)
        row = model_row(name, student, tok)
        row.update(alpha=alpha, temperature=args.temperature, steps=args.distill_steps, lr=args.lr,
                   batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed,
                   train_seconds=round(time.perf_counter() - t0, 1),
                   curve=[round(r["loss"], 4) for r in hist["train"]],
                   evals=[{"step": r["step"], "ppl": round(r["perplexity"], 3)} for r in hist["eval"]])
        print(f"{name}: held-out perplexity {row['heldout_ppl']}", flush=True)
        rows.append(row)
    return rows


def run_layerdrop(tok, ids, args) -> list[dict]:
    rows = []
    batches = random_windows(ids, args.batch_size, args.seq_len, args.layerdrop_steps, seed=args.seed + 1)
    for name, p in (("fine-tuned with LayerDrop", args.p), ("fine-tuned without LayerDrop", 0.0)):
        model, _ = load_tiny()
        if p > 0:
            layerdrop_(model, p)
        t0 = time.perf_counter()
        losses = train(model, batches, causal_lm_loss, lr=args.ft_lr, warmup_steps=args.warmup, seed=args.seed,
                       desc=name)
        remove_layerdrop_(model)
        model.eval()
        n = model.config.num_hidden_layers
        depths = []
        for d in range(n, 0, -1):
            keep = layers_to_keep(n, "spread", d)
            pruned = prune_layers_(copy.deepcopy(model), layers=keep)
            depths.append({"depth": d, "layers": keep, "heldout_ppl": round(heldout_perplexity(pruned, tok), 3)})
            print(f"{name}: depth {d} {keep}: {depths[-1]['heldout_ppl']}", flush=True)
        keep = layers_to_keep(n, "every_other")
        same = [r["heldout_ppl"] for r in depths if r["layers"] == keep]
        every_other = same[0] if same else round(heldout_perplexity(prune_layers_(copy.deepcopy(model)), tok), 3)
        row = {"model": name, "p": p, "steps": args.layerdrop_steps, "lr": args.ft_lr, "seed": args.seed,
               "train_seconds": round(time.perf_counter() - t0, 1), "curve": [round(v, 4) for v in losses],
               "depths": depths, "every_other": {"layers": keep, "heldout_ppl": every_other}}
        if p > 0:
            with seed_rescaled_layers(model, p):
                row["full_depth_rescaled_ppl"] = round(heldout_perplexity(model, tok), 3)
        rows.append(row)
    return rows


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distill-steps", type=int, default=80)
    ap.add_argument("--layerdrop-steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3, help="students' peak learning rate")
    ap.add_argument("--ft-lr", type=float, default=5e-4, help="LayerDrop fine-tuning's peak learning rate")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--p", type=float, default=0.5, help="LayerDrop rate")
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--chars-per-play", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "tutx" / "results")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    env = {"device": f"{_cpu_name()} ({args.threads} threads)", "machine": platform.machine(), "threads": args.threads,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([Path(sys.argv[0]).name] + (sys.argv[1:] if argv is None else argv)),
           "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "load_average_start": os.getloadavg()[0]}
    teacher, tok = load_tiny()
    ids = train_ids(tok, args.chars_per_play)
    report = {"environment": env, "compress_distill": run_distill(teacher, tok, ids, args),
              "compress_layerdrop": run_layerdrop(tok, ids, args)}
    env["load_average_end"] = os.getloadavg()[0]  # other work on the machine only slows it; the numbers do not move
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"compress-cpu{args.threads}t-{env['date'][:16].replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
