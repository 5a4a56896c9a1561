"""The engine: requests in, streamed tokens out, continuous batching over a paged KV cache.

``LLMEngine.step()`` is one iteration: the scheduler picks a prefill or decode batch, the model
runner computes next-token logits, the sampler picks tokens, and each sequence is checked for its
end (eos, stop token, stop string, ``max_tokens``, the context length). Finished sequences free
their blocks at once; the next step admits waiting ones. ``generate()`` drives ``step()`` to the
end for a list of prompts, with a progress bar.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from tqdm.auto import tqdm

from tutx.engine.block_manager import BlockManager
from tutx.engine.model_runner import BACKENDS, ModelRunner, check_model
from tutx.engine.sampling import Sampler, SamplingParams
from tutx.engine.scheduler import Scheduler
from tutx.engine.sequence import Sequence


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class EngineConfig:
    """Engine sizes. ``None`` fields are derived from the model when the engine is built.

    - ``block_size``: token slots per KV-cache block.
    - ``num_blocks``: blocks in the pool (None: room for ``max_num_seqs`` sequences of ``max_model_len``).
    - ``max_num_seqs``: most sequences running at once.
    - ``max_num_batched_tokens``: most prompt tokens in one prefill step (None: ``max(2048, max_model_len)``;
      must be >= ``max_model_len`` so that any prompt fits a step).
    - ``max_model_len``: context length (None: the model's ``max_position_embeddings``).
    - ``enable_prefix_caching``: share identical full prompt blocks between requests.
    - ``attention_backend``: "auto", "triton" or "torch" (see :class:`ModelRunner`).
    """

    block_size: int = 16
    num_blocks: int | None = None
    max_num_seqs: int = 16
    max_num_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    attention_backend: str = "auto"

    def __post_init__(self):
        for name in ("block_size", "max_num_seqs", "num_blocks", "max_num_batched_tokens", "max_model_len"):
            value = getattr(self, name)
            optional = name not in ("block_size", "max_num_seqs")
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected {'None or ' if optional else ''}an int >= 1, got {value!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise TypeError(f"enable_prefix_caching: expected a bool, got {self.enable_prefix_caching!r}")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend: expected one of {BACKENDS}, got {self.attention_backend!r}")
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
        num_blocks = self.num_blocks or self.max_num_seqs * _cdiv(max_len, self.block_size)
        budget = self.max_num_batched_tokens or max(2048, max_len)
        return replace(self, max_model_len=max_len, num_blocks=num_blocks, max_num_batched_tokens=budget)


@dataclass
class RequestOutput:
    """What a step (or ``generate``) reports for one request.

    ``token_ids``/``text``: the completion so far; ``new_token_ids``/``new_text``: what this step
    added (for streaming; text that could be the start of a stop string is held back).
    ``finish_reason``: None while running, then "stop", "length" or "abort".
    """

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    new_token_ids: list[int] = field(default_factory=list)
    new_text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at the last admission


class LLMEngine:
    """Continuous batching with a paged KV cache for a Llama-style Hugging Face model."""

    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None):
        config = EngineConfig() if config is None else config
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config: expected an EngineConfig, got {type(config).__name__}")
        check_model(model)
        self.config = config = config.resolve(model)
        self.tokenizer = tokenizer
        self.runner = ModelRunner(model, config.num_blocks, config.block_size, config.attention_backend)
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.sampler = Sampler()
        self.vocab_size = model.config.vocab_size
        eos = {getattr(tokenizer, "eos_token_id", None)}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos |= set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos}
        self.eos_token_ids = frozenset(e for e in eos if e is not None)
        self._requests: dict[str, Sequence] = {}
        self._prompts: dict[str, str | None] = {}
        self._counter = 0

    def __repr__(self) -> str:
        return (f"LLMEngine(unfinished={len(self._requests)}, {self.config!r}, {self.runner!r}, "
                f"{self.scheduler!r})")

    # -- requests ------------------------------------------------------------------------------
    def _prepare(self, prompt, params) -> tuple[list[int], SamplingParams]:
        """Validate one request without touching the engine's state."""
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
        need = _cdiv(min(len(ids) + params.max_tokens, max_len), self.config.block_size)
        if need > self.config.num_blocks:
            raise ValueError(f"prompt: this request may need {need} KV-cache blocks, the pool has "
                             f"num_blocks={self.config.num_blocks}; lower max_tokens or enlarge the pool")
        return ids, params

    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a prompt (text or token ids); returns its request id. Bad input raises, the engine is untouched."""
        if request_id is not None and not isinstance(request_id, str):
            raise TypeError(f"request_id: expected None or a str, got {type(request_id).__name__}")
        if request_id in self._requests:
            raise ValueError(f"request_id: {request_id!r} is already in use by an unfinished request")
        ids, params = self._prepare(prompt, params)
        if request_id is None:
            request_id = f"req-{self._counter}"
            self._counter += 1
        seq = Sequence(ids, params, request_id)
        self.scheduler.add(seq)
        self._requests[request_id] = seq
        self._prompts[request_id] = prompt if isinstance(prompt, str) else None
        return request_id

    def abort(self, request_id: str) -> None:
        """Cancel an unfinished request and free its blocks."""
        seq = self._requests.get(request_id)
        if seq is None:
            raise KeyError(f"request_id: no unfinished request {request_id!r} (unknown, finished or aborted); "
                           f"unfinished: {sorted(self._requests)[:10]}")
        self.scheduler.abort(seq)
        self._release(seq)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def _release(self, seq: Sequence) -> None:
        self.sampler.release(seq.seq_id)
        del self._requests[seq.request_id]
        self._prompts.pop(seq.request_id, None)

    # -- one iteration -------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one prefill or decode batch; one output per sequence that ran (with its new token)."""
        seqs, is_prefill = self.scheduler.schedule()
        if not seqs:
            return []
        logits = self.runner.run(seqs, is_prefill)  # [B, V]
        tokens = self.sampler(logits, [s.seq_id for s in seqs], [s.params for s in seqs])
        outputs = []
        for seq, token in zip(seqs, tokens):
            seq.append_token(token)
            reason = self._check_finish(seq)
            prompt = self._prompts.get(seq.request_id)
            if reason is not None:
                self.scheduler.finish(seq, reason)
                self._release(seq)
            outputs.append(self._emit(seq, token, prompt))
        return outputs

    def _detokenize(self, seq: Sequence, upto: int, final: bool) -> None:
        """Append the text of ``token_ids[read_offset:upto]`` (a few tokens of context make spaces right;
        an incomplete UTF-8 character at the end waits for the next token unless ``final``)."""
        if self.tokenizer is None:
            return
        ids, decode = seq.token_ids, self.tokenizer.decode
        prefix = decode(ids[seq.prefix_offset:seq.read_offset], skip_special_tokens=True)
        text = decode(ids[seq.prefix_offset:upto], skip_special_tokens=True)
        if len(text) > len(prefix) and (final or not text.endswith("\ufffd")):
            seq.output_text += text[len(prefix):]
            seq.prefix_offset, seq.read_offset = seq.read_offset, upto

    def _check_finish(self, seq: Sequence) -> str | None:
        """Update the text of ``seq`` with its newest token and say why it ends, if it does."""
        p, token, n = seq.params, seq.last_token, len(seq)
        if (not p.ignore_eos and token in self.eos_token_ids) or token in p.stop_token_ids:
            self._detokenize(seq, n - 1, final=True)  # the stop token's own text is not added
            seq.stop_reason = token if token in p.stop_token_ids else None
            return "stop"
        old_len = len(seq.output_text)
        ends = seq.num_completion_tokens >= p.max_tokens or n >= self.config.max_model_len
        self._detokenize(seq, n, final=ends)
        if p.stop:
            window = max(0, old_len - max(map(len, p.stop)) + 1)
            hits = [(i, s) for s in p.stop if (i := seq.output_text.find(s, window)) >= 0]
            if hits:
                i, s = min(hits)
                seq.output_text, seq.stop_reason = seq.output_text[:i], s
                return "stop"
        return "length" if ends else None

    def _emit(self, seq: Sequence, token: int, prompt: str | None) -> RequestOutput:
        text = seq.output_text
        upto = len(text)
        if not seq.is_finished and seq.params.stop:  # hold back what may begin a stop string
            upto = max(seq.num_emitted_chars, upto - max(map(len, seq.params.stop)) + 1)
        new_text, seq.num_emitted_chars = text[seq.num_emitted_chars:upto], upto
        return RequestOutput(seq.request_id, prompt, seq.prompt_token_ids, seq.completion_token_ids,
                             text[:upto], [token], new_text, seq.is_finished, seq.finish_reason,
                             seq.stop_reason, seq.num_cached_tokens)

    # -- offline batch generation --------------------------------------------------------------
    def generate(self, prompts, params=None, progress: bool = True) -> list[RequestOutput]:
        """Run ``prompts`` (texts or token-id lists) to completion; outputs in input order.

        ``params``: one SamplingParams for all, or a list with one per prompt. Every prompt is
        checked before any is queued. Other requests already in the engine advance too, but
        their step outputs are not returned here.
        """
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
        for i, (prompt, p) in enumerate(zip(prompts, params)):
            try:
                self._prepare(prompt, p)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"prompts[{i}]: {exc}") from exc
        ids = [self.add_request(prompt, p) for prompt, p in zip(prompts, params)]
        results: dict[str, RequestOutput] = {}
        with tqdm(total=len(ids), desc="Generating", unit="req", disable=not progress) as bar:
            pending, generated = set(ids), 0
            while pending:
                outputs = self.step()
                if not outputs:
                    raise RuntimeError(f"generate: the scheduler ran nothing with {len(pending)} requests pending")
                for out in outputs:
                    generated += out.request_id in pending
                    if out.finished and out.request_id in pending:
                        results[out.request_id] = out
                        pending.discard(out.request_id)
                        bar.update(1)
                bar.set_postfix(tokens=generated, refresh=False)
        return [results[i] for i in ids]


__all__ = ["LLMEngine", "EngineConfig", "RequestOutput"]
