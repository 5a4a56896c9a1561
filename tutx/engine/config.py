"""The engine's sizes: block size, pool size, batch limits, context length, attention backend."""
from __future__ import annotations

from dataclasses import dataclass, replace

from tutx._validate import check_bool, check_choice, check_optional_int, check_positive_int

BACKENDS = ("auto", "triton", "sdpa", "cpu")  # decode attention: choose, Triton kernel, PyTorch SDPA, C kernel


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class EngineConfig:
    """Engine sizes. ``None`` fields are derived from the model when the engine is built.

    - ``block_size``: token slots per KV-cache block.
    - ``num_blocks``: blocks in the pool (None: room for ``max_num_seqs`` sequences of ``max_model_len``).
    - ``max_num_seqs``: most sequences running at once.
    - ``max_num_batched_tokens``: most prompt tokens in one prefill step (None: ``max(3072, max_model_len)``;
      must be >= ``max_model_len`` so that any prompt fits a step). A larger budget means fewer,
      longer prefill steps in a burst of prompts: the running requests wait through fewer of them
      (time per output token down) while the first tokens come later. 3,072 was measured on the
      five workloads of ``scripts/bench_engines.py`` against 2,048 and 4,096 (PERF_NOTES.md, L35).
    - ``max_model_len``: context length (None: the model's ``max_position_embeddings``).
    - ``enable_prefix_caching``: share identical full prompt blocks between requests.
    - ``attention_backend``: "auto", "triton", "sdpa" or "cpu" (see :class:`~tutx.engine.ModelRunner`).
    - ``decode_group_size``: with SDPA decode, sort a step's rows by length and attend in groups
      of this many rows, each gathering only the blocks its longest row needs (None: one group).
    - ``enforce_eager``: False runs decode steps with static shapes (:mod:`tutx.engine.graphs`):
      captured as CUDA graphs on a GPU, compiled with ``torch.compile`` on a CPU, for the batch
      sizes ``graph_batch_sizes`` (None: 1, 2, 4, ... up to ``max_num_seqs``); a step of ``B``
      sequences is padded to the next of them. Falls back to eager, with a warning, where it
      cannot run.
    - ``mixed_batches``: vLLM's scheduling policy. Every step decodes all running sequences *and*
      fills the rest of ``max_num_batched_tokens`` with prompts, cutting the last one that does
      not fit into chunks computed over several steps, so a burst of prompts no longer stalls
      the running requests' next tokens (a request that wants prompt logprobs is admitted
      whole). False: a step is either a prefill of whole prompts or a decode (nano-vllm's policy).
    - ``mixed_prefill_budget``: with ``mixed_batches``, the most prompt tokens a step takes while
      some sequence decodes (None: the rest of ``max_num_batched_tokens``). Smaller keeps the
      running requests' time per output token down during a burst of prompts; a step with
      nothing to decode still takes a whole budget of prompts.
    - ``idle_prefill_budget``: the most prompt tokens of a prefill step taken while no sequence
      decodes — the first step of a burst (None: ``max_num_batched_tokens``; a first prompt
      longer than this still goes, alone). Smaller than ``max_num_batched_tokens``, it lets the
      first requests of a burst stream sooner, while the later, larger prefill steps interrupt the
      requests already decoding less often. Whole-prompt steps only (``mixed_batches=False``).
    - ``prepack_weights``: on a CPU, reorder every linear weight once for oneDNN
      (:mod:`tutx.engine.cpu_linear`); costs a second copy of those weights. Eager steps only.
    """

    block_size: int = 16
    num_blocks: int | None = None
    max_num_seqs: int = 16
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"
    decode_group_size: int | None = 16
    enforce_eager: bool = True
    graph_batch_sizes: tuple | None = None
    prepack_weights: bool = True
    mixed_batches: bool = False
    mixed_prefill_budget: int | None = None
    idle_prefill_budget: int | None = None

    def __post_init__(self):
        check_positive_int("block_size", self.block_size)
        check_positive_int("max_num_seqs", self.max_num_seqs)
        for name in ("num_blocks", "max_num_batched_tokens", "max_model_len", "decode_group_size",
                     "mixed_prefill_budget", "idle_prefill_budget"):
            check_optional_int(name, getattr(self, name), minimum=1)
        check_bool("enable_prefix_caching", self.enable_prefix_caching)
        check_choice("attention_backend", self.attention_backend, BACKENDS)
        check_bool("enforce_eager", self.enforce_eager)
        check_bool("prepack_weights", self.prepack_weights)
        check_bool("mixed_batches", self.mixed_batches)
        if self.graph_batch_sizes is not None:
            if not isinstance(self.graph_batch_sizes, tuple) or not self.graph_batch_sizes:
                raise TypeError(f"graph_batch_sizes: expected a non-empty tuple of ints or None, "
                                f"got {self.graph_batch_sizes!r}")
            for i, size in enumerate(self.graph_batch_sizes):
                check_positive_int(f"graph_batch_sizes[{i}]", size)
        if self.mixed_prefill_budget is not None and not self.mixed_batches:
            raise ValueError("mixed_prefill_budget: applies to mixed steps only; set mixed_batches=True too")
        if self.idle_prefill_budget is not None and self.mixed_batches:
            raise ValueError("idle_prefill_budget: applies to whole-prompt prefill steps; mixed steps "
                             "(mixed_batches=True) budget with mixed_prefill_budget")
        if None not in (self.idle_prefill_budget, self.max_num_batched_tokens) and \
                self.idle_prefill_budget > self.max_num_batched_tokens:
            raise ValueError(f"idle_prefill_budget: expected at most max_num_batched_tokens="
                             f"{self.max_num_batched_tokens}, got {self.idle_prefill_budget}")
        if self.max_num_batched_tokens is not None and self.max_model_len is not None \
                and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(f"max_num_batched_tokens: expected >= max_model_len={self.max_model_len} "
                             f"(a prompt must fit one step), got {self.max_num_batched_tokens}")

    def resolve(self, model) -> "EngineConfig":
        """A copy with every ``None`` filled in from ``model.config``."""
        model_len = getattr(model.config, "max_position_embeddings", None)
        max_len = self.max_model_len if self.max_model_len is not None else model_len
        if max_len is None:
            raise ValueError("max_model_len: the model's config has no max_position_embeddings; set it")
        if model_len is not None and max_len > model_len:
            raise ValueError(f"max_model_len: expected at most the model's max_position_embeddings={model_len}, "
                             f"got {max_len}")
        num_blocks = self.num_blocks or self.max_num_seqs * cdiv(max_len, self.block_size)
        budget = self.max_num_batched_tokens or max(3072, max_len)
        return replace(self, max_model_len=max_len, num_blocks=num_blocks, max_num_batched_tokens=budget)


__all__ = ["EngineConfig", "BACKENDS", "cdiv"]
