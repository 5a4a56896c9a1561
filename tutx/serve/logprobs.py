"""Log-probabilities in the two OpenAI formats, from the engine's ``{token_id: logprob}`` entries.

Completions (legacy): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`` — with
``echo`` the prompt's tokens come first (the very first has no logprob: nothing precedes it),
which is how lm-evaluation-harness scores a text (``echo`` + ``logprobs`` + ``max_tokens=0``).
Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}``.
"""
from __future__ import annotations


def _token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def completion_logprobs(tokenizer, token_ids: list[int], entries: list, start_offset: int = 0,
                        prompt_ids: list[int] | None = None, prompt_entries: list | None = None) -> dict:
    """The legacy ``logprobs`` object for ``token_ids`` (after the prompt's, when ``prompt_ids`` is given)."""
    ids = list(prompt_ids or []) + list(token_ids)
    all_entries = (list(prompt_entries) if prompt_ids else []) + list(entries or [])
    tokens, token_lps, tops, offsets = [], [], [], []
    offset = start_offset
    for tid, entry in zip(ids, all_entries):
        text = _token_text(tokenizer, tid)
        tokens.append(text)
        offsets.append(offset)
        offset += len(text)
        if entry is None:
            token_lps.append(None)
            tops.append(None)
            continue
        token_lps.append(entry[tid])
        top: dict[str, float] = {}
        for alt, lp in entry.items():  # several ids can share a text: keep the likelier
            key = _token_text(tokenizer, alt)
            top[key] = max(lp, top.get(key, float("-inf")))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}


def chat_logprobs(tokenizer, token_ids: list[int], entries: list, top_n: int) -> dict:
    """The chat ``logprobs`` object: one item per generated token, with its ``top_n`` alternatives."""
    content = []
    for tid, entry in zip(token_ids, entries or []):
        text = _token_text(tokenizer, tid)
        alts = sorted(entry.items(), key=lambda kv: -kv[1])[:top_n]
        content.append({"token": text, "logprob": entry[tid], "bytes": list(text.encode()),
                        "top_logprobs": [{"token": (t := _token_text(tokenizer, a)), "logprob": lp,
                                          "bytes": list(t.encode())} for a, lp in alts]})
    return {"content": content}


__all__ = ["completion_logprobs", "chat_logprobs"]
