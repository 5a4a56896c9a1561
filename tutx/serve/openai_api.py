"""From an OpenAI request body to engine sequences, and from engine outputs back to OpenAI bodies.

:func:`plan_completion` / :func:`plan_chat` check what the Pydantic models cannot (the model
name, the context length, ``n`` against the server's limit, ``stop``), tokenize, and build one
:class:`Plan`: the ``(prompt ids, SamplingParams)`` of every choice and the canonical cache key.
The ``*_body`` / ``*_chunk`` functions format responses and stream chunks in the OpenAI format.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from tutx.engine import SamplingParams
from tutx.serve.cache import canonical_key, is_deterministic
from tutx.serve.logprobs import chat_logprobs, completion_logprobs
from tutx.serve.protocol import (TURN_END, APIError, ChatCompletionRequest, CompletionRequest,
                                 apply_chat_template)

MAX_STOP = 4
MAX_LOGPROBS = 20


@dataclass
class Plan:
    """Everything a handler needs to run one request; choice ``i * n + j`` is prompt ``i``, sample ``j``."""

    kind: str  # "completion" or "chat"
    model: str
    prompts: list[list[int]]
    prompt_texts: list[str]
    n: int
    params: list[SamplingParams]
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    cache_key: str | None = None
    score_only: bool = False  # max_tokens=0 with echo: the prompt comes back, nothing is generated
    logprobs: int | None = None  # top-N alternatives per token (None: no logprobs)
    created: int = field(default_factory=lambda: int(time.time()))

    def sequences(self) -> list[tuple[list[int], SamplingParams]]:
        return [(ids, self.params[j]) for ids in self.prompts for j in range(self.n)]

    @property
    def num_choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def num_prompt_tokens(self) -> int:
        return sum(map(len, self.prompts))


def _check_model(model: str, served: str) -> None:
    if model != served:
        raise APIError(400, f"model: the model {model!r} does not exist; this server serves {served!r}",
                       "model", code="model_not_found")


def _check_stop(stop) -> tuple[str, ...]:
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if len(stops) > MAX_STOP or not all(stops):
        raise APIError(400, f"stop: expected a non-empty string or a list of up to {MAX_STOP} non-empty strings, "
                            f"got {stop!r:.100}", "stop")
    return stops


def _tokenize_prompts(prompt, tokenizer, vocab_size: int) -> tuple[list[list[int]], list[str]]:
    if isinstance(prompt, str) or (prompt and all(isinstance(t, int) for t in prompt)):
        prompt = [prompt]
    if not prompt:
        raise APIError(400, "prompt: expected a non-empty prompt", "prompt")
    ids_list, texts = [], []
    for p in prompt:
        ids = list(tokenizer.encode(p)) if isinstance(p, str) else list(p)
        if not ids:
            raise APIError(400, "prompt: expected at least one token, got an empty prompt", "prompt")
        if not all(0 <= t < vocab_size for t in ids):
            raise APIError(400, f"prompt: token ids must lie in [0, {vocab_size})", "prompt")
        ids_list.append(ids)
        texts.append(p if isinstance(p, str) else tokenizer.decode(ids))
    return ids_list, texts


def _sampling(req, prompts, max_model_len: int, max_tokens: int | None, default_max: int,
              stop: tuple[str, ...], param: str, logprobs: int | None = None,
              prompt_logprobs: int | None = None) -> list[SamplingParams]:
    longest = max(map(len, prompts))
    if longest >= max_model_len:
        raise APIError(400, f"{param}: this model's maximum context length is {max_model_len} tokens, "
                            f"the prompt has {longest}; shorten it", param, code="context_length_exceeded")
    room = max_model_len - longest
    if max_tokens is None:
        max_tokens = min(default_max, room)
    elif max_tokens > room:
        raise APIError(400, f"max_tokens: this model's maximum context length is {max_model_len} tokens; "
                            f"you requested {longest + max_tokens} ({longest} in the prompt, {max_tokens} in the "
                            f"completion)", "max_tokens", code="context_length_exceeded")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name):
            raise APIError(400, f"{name}: only 0 is supported by this server, got {getattr(req, name)}", name)
    top_k = None if req.top_k in (None, -1, 0) else req.top_k
    seeds = [None if req.seed is None else req.seed + j for j in range(req.n)]
    if max_tokens == 0 and prompt_logprobs is None:
        max_tokens = 1  # a score-only echo without logprobs never reaches the engine
    return [SamplingParams(temperature=req.temperature, top_p=req.top_p, top_k=top_k, seed=s,
                           max_tokens=max_tokens, stop=stop, ignore_eos=req.ignore_eos, logprobs=logprobs,
                           prompt_logprobs=prompt_logprobs) for s in seeds]


def _key(kind, req, served, prompts, params, extra) -> str | None:
    if not is_deterministic(req.temperature, req.seed):
        return None
    p = params[0]
    return canonical_key({"endpoint": kind, "model": served, "prompt": prompts, "max_tokens": p.max_tokens,
                          "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k, "seed": req.seed,
                          "stop": list(p.stop), "n": req.n, "ignore_eos": p.ignore_eos, **extra})


def _common(req, max_n: int) -> None:
    if req.n > max_n:
        raise APIError(400, f"n: expected at most {max_n} choices per request, got {req.n}", "n")


def plan_completion(req: CompletionRequest, engine, served: str, max_n: int, default_max: int) -> Plan:
    _check_model(req.model, served)
    _common(req, max_n)
    stop = _check_stop(req.stop)
    if req.logprobs is not None and req.logprobs > MAX_LOGPROBS:
        raise APIError(400, f"logprobs: expected at most {MAX_LOGPROBS} alternatives, got {req.logprobs}", "logprobs")
    if req.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens: expected an int >= 1 (0 only with echo=true, to score the prompt)",
                       "max_tokens")
    prompts, texts = _tokenize_prompts(req.prompt, engine.tokenizer, engine.vocab_size)
    prompt_lp = req.logprobs if req.echo else None
    params = _sampling(req, prompts, engine.config.max_model_len, req.max_tokens, default_max, stop, "prompt",
                       req.logprobs, prompt_lp)
    key = _key("completion", req, served, prompts, params,
               {"echo": req.echo, "logprobs": req.logprobs, "max_tokens": req.max_tokens})
    return Plan("completion", served, prompts, texts, req.n, params, req.echo, req.stream,
                bool(req.stream_options and req.stream_options.include_usage), key,
                req.max_tokens == 0 and req.logprobs is None, req.logprobs)


def plan_chat(req: ChatCompletionRequest, engine, served: str, max_n: int, default_max: int) -> Plan:
    _check_model(req.model, served)
    _common(req, max_n)
    stop = _check_stop(req.stop)
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs: needs logprobs=true", "top_logprobs")
    if (req.top_logprobs or 0) > MAX_LOGPROBS:
        raise APIError(400, f"top_logprobs: expected at most {MAX_LOGPROBS}, got {req.top_logprobs}", "top_logprobs")
    top_n = (req.top_logprobs or 0) if req.logprobs else None
    text = apply_chat_template(req.messages)
    prompts = [list(engine.tokenizer.encode(text))]
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    params = _sampling(req, prompts, engine.config.max_model_len, max_tokens, default_max,
                       stop + (TURN_END,) if TURN_END not in stop else stop, "messages", top_n)
    key = _key("chat", req, served, prompts, params, {"logprobs": top_n})
    return Plan("chat", served, prompts, [text], req.n, params, False, req.stream,
                bool(req.stream_options and req.stream_options.include_usage), key, False, top_n)


# -- responses ----------------------------------------------------------------------------------
def usage(plan: Plan, completion_tokens: int) -> dict:
    return {"prompt_tokens": plan.num_prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": plan.num_prompt_tokens + completion_tokens}


def choice_logprobs(plan: Plan, tokenizer, index: int, c: dict, token_ids=None, entries=None,
                    with_prompt: bool = True) -> dict | None:
    """The ``logprobs`` of choice ``index`` (``token_ids``/``entries``: a stream chunk's new tokens)."""
    if plan.logprobs is None:
        return None
    ids = c["token_ids"] if token_ids is None else token_ids
    entries = c["logprobs"] if entries is None else entries
    if plan.kind == "chat":
        return chat_logprobs(tokenizer, ids, entries, plan.logprobs)
    if plan.echo and with_prompt:
        return completion_logprobs(tokenizer, ids, entries, 0, plan.prompts[index // plan.n], c["prompt_logprobs"])
    start = len(plan.prompt_texts[index // plan.n]) if plan.echo else 0
    return completion_logprobs(tokenizer, ids, entries, start)


def final_body(plan: Plan, rid: str, choices: list[dict], tokenizer=None) -> dict:
    """The non-streaming body; ``choices[i]``: ``{"text", "num_tokens", "finish_reason"}`` (and, with
    logprobs, ``"token_ids"``, ``"logprobs"``, ``"prompt_logprobs"``)."""
    tokens = sum(c["num_tokens"] for c in choices)
    lps = [choice_logprobs(plan, tokenizer, i, c) for i, c in enumerate(choices)]
    if plan.kind == "chat":
        out = [{"index": i, "message": {"role": "assistant", "content": c["text"]}, "logprobs": lps[i],
                "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)]
        return {"id": f"chatcmpl-{rid}", "object": "chat.completion", "created": plan.created, "model": plan.model,
                "choices": out, "usage": usage(plan, tokens)}
    out = [{"index": i, "text": (plan.prompt_texts[i // plan.n] if plan.echo else "") + c["text"],
            "logprobs": lps[i], "finish_reason": c["finish_reason"]} for i, c in enumerate(choices)]
    return {"id": f"cmpl-{rid}", "object": "text_completion", "created": plan.created, "model": plan.model,
            "choices": out, "usage": usage(plan, tokens)}


def chunk(plan: Plan, rid: str, index: int, text: str | None, finish_reason: str | None = None,
          first: bool = False, logprobs: dict | None = None) -> dict:
    """One streamed chunk for choice ``index`` (chat: a ``delta``; the first one carries the role)."""
    if plan.kind == "chat":
        delta = {"role": "assistant", "content": text or ""} if first else ({} if text is None else {"content": text})
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        return {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": plan.created,
                "model": plan.model, "choices": [choice]}
    choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
    return {"id": f"cmpl-{rid}", "object": "text_completion", "created": plan.created, "model": plan.model,
            "choices": [choice]}


def usage_chunk(plan: Plan, rid: str, completion_tokens: int) -> dict:
    prefix, obj = ("chatcmpl", "chat.completion.chunk") if plan.kind == "chat" else ("cmpl", "text_completion")
    return {"id": f"{prefix}-{rid}", "object": obj, "created": plan.created, "model": plan.model, "choices": [],
            "usage": usage(plan, completion_tokens)}


__all__ = ["Plan", "plan_completion", "plan_chat", "final_body", "chunk", "usage_chunk", "usage", "choice_logprobs"]
