"""From tokens to what a client sees: incremental detokenization, stop strings, streaming hold-back.

The engine step stays schedule → run → postprocess (as in nano-vllm); this module turns the
sequences a step touched into :class:`RequestOutput` s. Text is decoded incrementally (a few
tokens of context keep spaces right; an incomplete UTF-8 character waits for the next token),
a stop string cuts the text before itself and ends the request, and while a request runs, text
that could be the beginning of a stop string is held back from the stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from tutx.engine.sequence import Sequence


@dataclass
class RequestOutput:
    """What a step (or ``generate``) reports for one request.

    ``token_ids``/``text``: the completion so far; ``new_token_ids``/``new_text``: what this step
    added (for streaming; text that could be the start of a stop string is held back).
    ``finish_reason``: None while running, then "stop", "length" or "abort".
    ``logprobs``: when the request asked for them, one ``{token: logprob}`` per new token (the
    sampled token and the top-N alternatives); ``token_logprobs`` the same for all of
    ``token_ids``. ``prompt_logprobs``: one per prompt token (the first is None), once prefilled.
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
    logprobs: list[dict[int, float]] | None = None
    token_logprobs: list[dict[int, float]] | None = None
    prompt_logprobs: list[dict[int, float] | None] | None = None


class OutputProcessor:
    """Detokenizes sequences as they grow and matches their stop strings (needs a tokenizer for text)."""

    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer
        self._decode = None
        if tokenizer is not None:
            # A fast tokenizer's Rust backend decodes 3x faster than the Python wrapper around it; the
            # wrapper only adds something when it cleans up tokenization spaces.
            backend = getattr(tokenizer, "backend_tokenizer", None)
            if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
                self._decode = lambda ids: backend.decode(ids, skip_special_tokens=True)
            else:
                self._decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)

    def _detokenize(self, seq: Sequence, upto: int, final: bool) -> None:
        """Append the text of ``token_ids[read_offset:upto]`` to ``seq.output_text``."""
        if self.tokenizer is None:
            return
        ids, decode = seq.token_ids, self._decode
        prefix = decode(ids[seq.prefix_offset:seq.read_offset])
        text = decode(ids[seq.prefix_offset:upto])
        if len(text) > len(prefix) and (final or not text.endswith("\ufffd")):
            seq.output_text += text[len(prefix):]
            seq.prefix_offset, seq.read_offset = seq.read_offset, upto

    def update_text(self, seq: Sequence) -> bool:
        """Decode ``seq``'s newest token; True when a stop string now ends it (the text is cut there).

        A sequence the scheduler ended on a stop or eos token does not get that token's text.
        """
        n = len(seq)
        if seq.finish_reason == "stop":  # ended on a stop token / eos
            self._detokenize(seq, n - 1, final=True)
            return False
        old_len = len(seq.output_text)
        self._detokenize(seq, n, final=seq.is_finished)
        stop = seq.params.stop
        if not stop or seq.num_completion_tokens == 0:
            return False
        window = max(0, old_len - max(map(len, stop)) + 1)
        hits = [(i, s) for s in stop if (i := seq.output_text.find(s, window)) >= 0]
        if not hits:
            return False
        i, s = min(hits)
        seq.output_text, seq.stop_reason = seq.output_text[:i], s
        return True

    def make_output(self, seq: Sequence, new_token_ids: list[int], prompt: str | None) -> RequestOutput:
        """The output for ``seq`` after this step; advances its streamed-text mark."""
        text = seq.output_text
        upto = len(text)
        if not seq.is_finished and seq.params.stop:  # hold back what may begin a stop string
            upto = max(seq.num_emitted_chars, upto - max(map(len, seq.params.stop)) + 1)
        new_text, seq.num_emitted_chars = text[seq.num_emitted_chars:upto], upto
        lps = seq.logprobs
        return RequestOutput(seq.request_id, prompt, seq.prompt_token_ids, seq.completion_token_ids,
                             text[:upto], new_token_ids, new_text, seq.is_finished, seq.finish_reason,
                             seq.stop_reason, seq.num_cached_tokens,
                             lps[len(lps) - len(new_token_ids):] if lps is not None else None,
                             lps, seq.prompt_logprobs)


__all__ = ["RequestOutput", "OutputProcessor"]
