"""Chapter 6's inference engine: continuous batching over a paged KV cache (after vLLM / nano-vllm).

One concept per module:

- :mod:`~tutx.engine.sampling` — ``SamplingParams`` (per request) and the ``Sampler``;
- :mod:`~tutx.engine.sequence` — ``Sequence``: a request's tokens, status and block table;
- :mod:`~tutx.engine.block_manager` — ``BlockManager``: free list, reference counts, prefix caching;
- :mod:`~tutx.engine.scheduler` — ``Scheduler``: iteration-level batching, preemption by recompute;
- :mod:`~tutx.engine.paged_attention` — the paged-decode Triton kernel, its reference, prefill attention;
- :mod:`~tutx.engine.model_runner` — ``ModelRunner``: a Hugging Face Llama with our paged attention;
- :mod:`~tutx.engine.llm_engine` — ``LLMEngine``: ``add_request`` / ``step`` / ``abort`` / ``generate``.

Usage::

    engine = LLMEngine(*load_tiny(), EngineConfig(max_num_seqs=8))
    outs = engine.generate(["ROMEO:", "JULIET:"], SamplingParams(temperature=0, max_tokens=32))
"""
from tutx.engine.batcher import BatcherStats, DynamicBatcher, QueueFull, greedy_generate, pad_batch
from tutx.engine.block_manager import BlockManager
from tutx.engine.llm_engine import EngineConfig, LLMEngine, RequestOutput
from tutx.engine.model_runner import ModelRunner
from tutx.engine.paged_attention import paged_decode_attention, paged_decode_attention_ref
from tutx.engine.sampling import Sampler, SamplingParams
from tutx.engine.scheduler import Scheduler
from tutx.engine.sequence import Sequence, SequenceStatus

__all__ = ["DynamicBatcher", "QueueFull", "BatcherStats", "pad_batch", "greedy_generate", "LLMEngine", "EngineConfig", "RequestOutput", "SamplingParams", "Sampler", "Sequence",
           "SequenceStatus", "BlockManager", "Scheduler", "ModelRunner", "paged_decode_attention",
           "paged_decode_attention_ref"]
