"""The engine: requests in, streamed tokens out, continuous batching over a paged KV cache.

``LLMEngine.step()`` is one iteration, schedule → run → postprocess (as in nano-vllm): the
scheduler picks a prefill or decode batch, the model runner computes next-token logits, the
sampler picks tokens, and :meth:`Scheduler.postprocess` appends them, ends the sequences that are
done and frees their blocks; :mod:`tutx.engine.output` then turns them into text and outputs.
Each step is recorded as a :class:`~tutx.engine.stats.StepStats` (``engine.last_step_stats``,
and every hook added with :meth:`LLMEngine.add_step_hook`).
"""
from __future__ import annotations

import time
from typing import Callable

from tutx._validate import check_bool
from tutx.engine.block_manager import BlockManager
from tutx.engine.config import EngineConfig, cdiv
from tutx.engine.graphs import graph_batch_sizes
from tutx.engine.model_runner import ModelRunner, check_model
from tutx.engine.output import OutputProcessor, RequestOutput
from tutx.engine.sampling import Sampler, SamplingParams, top_logprobs
from tutx.engine.scheduler import Scheduler
from tutx.engine.sequence import Sequence
from tutx.engine.stats import StepStats


class LLMEngine:
    """Continuous batching with a paged KV cache for a Llama-style Hugging Face model.

    The public surface: :meth:`add_request`, :meth:`abort`, :meth:`step`, :meth:`has_unfinished`,
    :meth:`generate`; :meth:`add_step_hook` and ``last_step_stats`` for timelines and metrics;
    ``num_free_blocks`` / ``block_manager`` for the KV pool's occupancy.
    """

    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None):
        config = EngineConfig() if config is None else config
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config: expected an EngineConfig, got {type(config).__name__}")
        check_model(model)
        self.config = config = config.resolve(model)
        self.tokenizer = tokenizer
        eos = {getattr(tokenizer, "eos_token_id", None)}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        graph_sizes = None if config.enforce_eager else graph_batch_sizes(config.max_num_seqs,
                                                                           config.graph_batch_sizes)
        self.runner = ModelRunner(model, config.num_blocks, config.block_size, config.attention_backend,
                                  config.decode_group_size, graph_sizes, config.max_model_len,
                                  prepack_weights=config.prepack_weights)
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.max_model_len, frozenset(e for e in eos if e is not None),
                                   config.mixed_prefill_budget, config.idle_prefill_budget)
        self.sampler = Sampler()
        self.output_processor = OutputProcessor(tokenizer)
        self.vocab_size = model.config.vocab_size
        self.last_step_stats: StepStats | None = None
        self.num_steps = 0
        self._hooks: list[Callable[[StepStats], None]] = []
        self._requests: dict[str, Sequence] = {}
        self._prompts: dict[str, str | None] = {}
        self._counter = 0

    def __repr__(self) -> str:
        return (f"LLMEngine(unfinished={len(self._requests)}, {self.config!r}, {self.runner!r}, "
                f"{self.scheduler!r})")

    @property
    def eos_token_ids(self) -> frozenset:
        return self.scheduler.eos_token_ids

    @eos_token_ids.setter
    def eos_token_ids(self, ids) -> None:
        self.scheduler.eos_token_ids = frozenset(ids)

    @property
    def num_free_blocks(self) -> int:
        """Free blocks in the KV pool (of ``config.num_blocks``)."""
        return self.block_manager.num_free_blocks

    @property
    def num_waiting(self) -> int:
        """Requests queued for a prefill (new, or preempted)."""
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        """Requests holding KV-cache blocks."""
        return len(self.scheduler.running)

    def add_step_hook(self, fn: Callable[[StepStats], None]) -> None:
        """Call ``fn(stats)`` after every step that ran a batch (in the thread that runs ``step``)."""
        if not callable(fn):
            raise TypeError(f"fn: expected a callable taking a StepStats, got {fn!r}")
        self._hooks.append(fn)

    def remove_step_hook(self, fn) -> None:
        self._hooks.remove(fn)

    # -- requests ------------------------------------------------------------------------------
    def _prepare(self, prompt, params) -> tuple[list[int], SamplingParams]:
        """Validate and tokenize one request without touching the engine's state."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params: expected a SamplingParams, got {type(params).__name__}")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt: a string needs a tokenizer; pass token ids or build the engine with one")
            ids = list(self.tokenizer.encode(prompt))
        elif isinstance(prompt, (list, tuple)):
            ids = list(prompt)
            if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab_size for t in ids):
                raise ValueError(f"prompt: expected token ids in [0, vocab_size={self.vocab_size})")
        else:
            raise TypeError(f"prompt: expected a str or a list of token ids, got {type(prompt).__name__}")
        if not ids:
            raise ValueError("prompt: expected at least one token, got an empty prompt")
        max_len = self.config.max_model_len
        if len(ids) >= max_len:
            raise ValueError(f"prompt: {len(ids)} tokens, but the context holds max_model_len={max_len}: "
                             f"expected at most {max_len - 1} to leave room for a completion")
        if params.stop and self.tokenizer is None:
            raise ValueError("params.stop: stop strings need a tokenizer to detokenize the output")
        need = cdiv(min(len(ids) + params.max_tokens, max_len), self.config.block_size)
        if need > self.config.num_blocks:
            raise ValueError(f"prompt: this request may need {need} KV-cache blocks, the pool has "
                             f"num_blocks={self.config.num_blocks}; lower max_tokens or enlarge the pool")
        return ids, params

    def _check_request_id(self, request_id) -> None:
        if request_id is not None and not isinstance(request_id, str):
            raise TypeError(f"request_id: expected None or a str, got {type(request_id).__name__}")
        if request_id in self._requests:
            raise ValueError(f"request_id: {request_id!r} is already in use by an unfinished request")

    def _add(self, ids: list[int], params: SamplingParams, request_id: str | None, prompt) -> str:
        if request_id is None:
            request_id = f"req-{self._counter}"
            self._counter += 1
        seq = Sequence(ids, params, request_id)
        self.scheduler.add(seq)
        self._requests[request_id] = seq
        self._prompts[request_id] = prompt if isinstance(prompt, str) else None
        return request_id

    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a prompt (text or token ids); returns its request id. Bad input raises, the engine is untouched."""
        self._check_request_id(request_id)
        ids, params = self._prepare(prompt, params)
        return self._add(ids, params, request_id, prompt)

    def abort(self, request_id: str) -> None:
        """Cancel an unfinished request and free its blocks.

        Raises ``KeyError`` for an id that is unknown, already finished or already aborted (a
        server racing a client's disconnect against the request's end should catch it).
        """
        seq = self._requests.get(request_id)
        if seq is None:
            raise KeyError(f"request_id: no unfinished request {request_id!r} (unknown, finished or aborted); "
                           f"unfinished: {sorted(self._requests)[:10]}")
        self.scheduler.abort(seq)
        self._release(seq)

    def reset_prefix_cache(self) -> bool:
        """Drop every cached prompt block (vLLM's ``reset_prefix_cache``); False while requests run."""
        return self.block_manager.reset_prefix_cache()

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def _release(self, seq: Sequence) -> None:
        self.sampler.release(seq.seq_id)
        del self._requests[seq.request_id]
        self._prompts.pop(seq.request_id, None)

    # -- one iteration -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one prefill, decode or mixed batch; one output per sequence that got a new token (a
        chunked prompt not at its end yet gets none). ``[]`` also when nothing is left to run."""
        start, preempted = time.perf_counter(), self.scheduler.num_preemptions
        chunks = None
        if self.config.mixed_batches:
            decode, prefill, chunks = self.scheduler.schedule_mixed()
            seqs, is_prefill, num_decode = decode + prefill, bool(prefill), len(decode)
        else:
            seqs, is_prefill = self.scheduler.schedule()
            num_decode = 0 if is_prefill else len(seqs)
        if not seqs:
            return []
        tables = {s.request_id: tuple(s.block_table) for s in self.scheduler.running}
        if chunks is None:  # whole prompts
            chunks = [len(s) - s.num_computed_tokens for s in seqs[num_decode:]]
        computed = num_decode + sum(chunks)
        cached = sum(s.num_cached_tokens for s in seqs[num_decode:] if s.num_computed_tokens == s.num_cached_tokens)
        logits = self.runner.run(seqs, is_prefill, num_decode if is_prefill else 0, chunks if is_prefill else None)
        prompt_logits = None
        if isinstance(logits, tuple):
            logits, prompt_logits = logits
        partial = []  # chunked prompts not at their end yet: no token this step
        for seq, n in zip(seqs, [1] * num_decode + chunks):  # a decoding sequence computes its last token
            seq.num_computed_tokens += n
            if seq.num_computed_tokens < len(seq):
                partial.append(seq)
                self.block_manager.computed(seq, seq.num_computed_tokens)
        ran = seqs
        if partial:
            done = [i for i, s in enumerate(seqs) if s.num_computed_tokens == len(s)]
            seqs, logits = [seqs[i] for i in done], logits[done]
            prompt_logits = None if prompt_logits is None else [prompt_logits[i] for i in done]
        tokens = self.sampler(logits, [s.seq_id for s in seqs], [s.params for s in seqs]) if seqs else []
        self._record_logprobs(seqs, logits, tokens, prompt_logits)
        self.scheduler.postprocess(seqs, tokens)
        for seq in seqs:  # the new token's K/V is computed by the next step
            seq.num_computed_tokens = len(seq) - 1
        outputs, finished = [], {}
        for seq, token in zip(seqs, tokens):
            if self.output_processor.update_text(seq):  # a stop string ended it
                if not seq.is_finished:
                    self.scheduler.finish(seq, "stop")
                seq.finish_reason = "stop"
            prompt = self._prompts.get(seq.request_id)
            if seq.is_finished:
                finished[seq.request_id] = seq.finish_reason
                self._release(seq)
            new = [token] if seq.num_completion_tokens and seq.params.max_tokens else []
            outputs.append(self.output_processor.make_output(seq, new, prompt))
        self._record_step(ran, num_decode, computed, cached, tables, finished, preempted, start)
        return outputs

    def _record_logprobs(self, seqs, logits, tokens, prompt_logits) -> None:
        """Fill the log-probabilities the requests asked for (extra device syncs only then)."""
        rows = [i for i, s in enumerate(seqs) if s.params.logprobs is not None and s.params.max_tokens]
        if rows:
            lps = top_logprobs(logits[rows], [tokens[i] for i in rows], [seqs[i].params.logprobs for i in rows])
            for i, lp in zip(rows, lps):
                seqs[i].logprobs.append(lp)
        for seq, lg in zip(seqs, prompt_logits or ()):
            if lg is not None:  # row j predicts prompt token j + 1
                n = seq.num_prompt_tokens
                seq.prompt_logprobs = [None] + top_logprobs(lg[:n - 1], seq.token_ids[1:n],
                                                            [seq.params.prompt_logprobs] * (n - 1)) if n > 1 else [None]

    def _record_step(self, seqs, num_decode, computed, cached, tables, finished, preempted, start) -> None:
        bm, sched = self.block_manager, self.scheduler
        self.num_steps += 1
        prefilled = seqs[num_decode:]
        kind = "decode" if not prefilled else "prefill" if not num_decode else "mixed"
        stats = StepStats(
            step=self.num_steps - 1, kind=kind,
            request_ids=tuple(s.request_id for s in seqs), num_tokens=computed,
            num_cached_tokens=cached,
            prefill_request_ids=tuple(s.request_id for s in prefilled),
            block_tables=tables, num_blocks_used=bm.num_blocks - bm.num_free_blocks,
            num_blocks_free=bm.num_free_blocks, num_waiting=len(sched.waiting), num_running=len(sched.running),
            num_preemptions=sched.num_preemptions - preempted, finished=finished,
            duration_s=time.perf_counter() - start)
        self.last_step_stats = stats
        for hook in self._hooks:
            hook(stats)

    # -- offline batch generation --------------------------------------------------------------
    def generate(self, prompts, params=None, progress: bool = False) -> list[RequestOutput]:
        """Run ``prompts`` (texts or token-id lists) to completion; outputs in input order.

        ``params``: one SamplingParams for all, or a list with one per prompt. Every prompt is
        checked (and tokenized, once) before any is queued. Other requests already in the engine
        advance too, but their step outputs are not returned here. ``progress``: a tqdm bar.
        """
        check_bool("progress", progress)
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                        and all(isinstance(t, int) for t in prompts)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise ValueError(f"prompts: expected a non-empty list of prompts, got {prompts!r:.80}")
        if isinstance(params, (list, tuple)):
            if len(params) != len(prompts):
                raise ValueError(f"params: expected one SamplingParams per prompt ({len(prompts)}), got {len(params)}")
        else:
            params = [params] * len(prompts)
        prepared = []
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            try:
                prepared.append(self._prepare(prompt, p))
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"prompts[{i}]: {exc}") from exc
        ids = [self._add(toks, p, None, prompt) for prompt, (toks, p) in zip(prompts, prepared)]
        results: dict[str, RequestOutput] = {}
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(ids), desc="Generating", unit="req")
        pending = set(ids)
        while pending:
            steps = self.num_steps
            outputs = self.step()
            if self.num_steps == steps:
                raise RuntimeError(f"generate: the scheduler ran nothing with {len(pending)} requests pending")
            for out in outputs:
                if out.finished and out.request_id in pending:
                    results[out.request_id] = out
                    pending.discard(out.request_id)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        return [results[i] for i in ids]


__all__ = ["LLMEngine", "EngineConfig", "RequestOutput"]
