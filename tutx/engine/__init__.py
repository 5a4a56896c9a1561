"""Chapter 6's inference engine: continuous batching over a paged KV cache (after vLLM / nano-vllm).

One concept per module:

- :mod:`~tutx.engine.config` — ``EngineConfig``: block size, pool, batch limits, backend;
- :mod:`~tutx.engine.sampling` — ``SamplingParams`` (per request) and the ``Sampler``;
- :mod:`~tutx.engine.sequence` — ``Sequence``: a request's tokens, status and block table;
- :mod:`~tutx.engine.block_manager` — ``BlockManager``: free list, reference counts, prefix caching;
- :mod:`~tutx.engine.scheduler` — ``Scheduler``: iteration-level batching, preemption by recompute,
  and ``postprocess`` (append, end, free);
- :mod:`~tutx.engine.attention` — prefill and CPU decode attention in PyTorch (the paged-decode
  Triton kernel is :mod:`tutx.kernels.paged_decode`);
- :mod:`~tutx.engine.model_runner` — ``ModelRunner``: a Hugging Face Llama with our paged attention;
- :mod:`~tutx.engine.output` — ``RequestOutput``; detokenization, stop strings, streaming hold-back;
- :mod:`~tutx.engine.stats` — ``StepStats``: what each step did, for timelines and metrics;
- :mod:`~tutx.engine.llm_engine` — ``LLMEngine``: ``add_request`` / ``step`` / ``abort`` / ``generate``;
- :mod:`~tutx.engine.timeline` — ``StepRecorder`` and the Chapter 6 plots drawn from its records;
- :mod:`~tutx.engine.batcher` — ``DynamicBatcher``: request-level batching for any batched function;
- :mod:`~tutx.engine.static_batching` — ``pad_batch`` and ``greedy_generate``: the static baseline;
- :mod:`~tutx.engine.load` — ``benchmark_requests`` (the chapter's workload), ``replay`` clients with ``poisson_arrivals`` against a dynamic batcher;
- :mod:`~tutx.engine.cpu_threads` — ``pick_cpu_threads``: one thread or the default, by a probe.

Usage::

    engine = LLMEngine(*load_tiny(), EngineConfig(max_num_seqs=8))
    outs = engine.generate(["ROMEO:", "JULIET:"], SamplingParams(temperature=0, max_tokens=32))
"""
from tutx.engine.batcher import BatcherStats, DynamicBatcher, QueueFull
from tutx.engine.block_manager import BlockManager
from tutx.engine.config import EngineConfig
from tutx.engine.llm_engine import LLMEngine
from tutx.engine.model_runner import ModelRunner
from tutx.engine.output import RequestOutput
from tutx.engine.sampling import Sampler, SamplingParams
from tutx.engine.scheduler import Scheduler
from tutx.engine.sequence import Sequence, SequenceStatus
from tutx.engine.static_batching import greedy_generate, pad_batch
from tutx.engine.stats import StepStats

__all__ = ["DynamicBatcher", "QueueFull", "BatcherStats", "pad_batch", "greedy_generate", "LLMEngine",
           "EngineConfig", "RequestOutput", "StepStats", "SamplingParams", "Sampler", "Sequence",
           "SequenceStatus", "BlockManager", "Scheduler", "ModelRunner"]
