"""Server-sent events as the OpenAI API streams them: ``data: {json}`` lines, a blank line after
each event, and a final ``data: [DONE]``."""
from __future__ import annotations

import json

DONE = "[DONE]"


def format_event(data) -> str:
    """One event: ``data: <compact JSON>`` (or ``data: [DONE]``) and the blank line that ends it."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n"


def parse_sse(text: str) -> list:
    """The events of an SSE stream, in order: JSON payloads decoded, ``[DONE]`` kept as the string.

    Follows the SSE rules that matter here: events end at a blank line, several ``data:`` lines
    of one event are joined with newlines, one space after the colon is dropped, lines starting
    with ``:`` are comments, other fields (``event:``, ``id:``, ``retry:``) are ignored, and
    ``\\r\\n`` line ends are accepted. An unfinished last event (no blank line) is dropped.
    """
    events, data = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "":
            if data:
                payload = "\n".join(data)
                events.append(payload if payload == DONE else json.loads(payload))
            data = []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value[1:] if value.startswith(" ") else value)
    return events


__all__ = ["format_event", "parse_sse", "DONE"]
