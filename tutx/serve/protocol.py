"""The OpenAI wire format: request bodies (Pydantic), the error body, and the tiny LM's chat template.

Field bounds live in the models, so FastAPI's OpenAPI schema states them (schemathesis tests
against that schema) and a bad value becomes a 400 naming the field. Rules that need the model
(context length, known model name, ``max_n``) are checked by the handlers.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

TokenIds = list[int]


class APIError(Exception):
    """An error the server answers with ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str = "invalid_request_error", code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """Fields shared by completions and chat (OpenAI names; ``top_k``/``ignore_eos`` as in vLLM's extra body)."""

    model_config = ConfigDict(extra="allow")

    model: str
    n: int = Field(1, ge=1, le=128)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=-1, description="-1 or None: all tokens")
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0 is supported")
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="only 0 is supported")


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is text, token ids, or a list of either (one choice set each)."""

    prompt: Union[str, list[str], TokenIds, list[TokenIds]]
    max_tokens: int | None = Field(16, ge=0, description="0 with echo=true scores the prompt")
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=20)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[dict], None] = None
    name: str | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)


class TokenizeRequest(BaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: TokenIds


# -- the chat template ----------------------------------------------------------------------------
SPEAKERS = {"user": "HORATIO", "assistant": "HAMLET"}
TURN_END = "\n\n"


def message_text(content) -> str:
    """A message's text: a string, or OpenAI content parts of type ``text`` joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for i, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise APIError(400, f"messages: content part {i} is not a text part ({part.get('type')!r}); "
                                "the tiny LM reads text only", "messages")
        parts.append(part["text"])
    return "".join(parts)


def apply_chat_template(messages: list[ChatMessage], add_generation_prompt: bool = True) -> str:
    """The tiny LM saw plays, so a chat is rendered as one: a speaker line, the speech, a blank line.

    ``system``/``developer`` messages become stage directions ``[...]``; ``user`` speaks as
    HORATIO and ``assistant`` as HAMLET (a message's ``name``, upper-cased, replaces the speaker).
    The reply is prompted with ``HAMLET:`` and ends at the next blank line (``TURN_END``).
    """
    lines = []
    for m in messages:
        text = message_text(m.content).strip()
        if m.role in ("system", "developer"):
            lines.append(f"[{text}]{TURN_END}")
        else:
            speaker = (m.name or SPEAKERS[m.role]).upper()
            lines.append(f"{speaker}:\n{text}{TURN_END}")
    if add_generation_prompt:
        lines.append(f"{SPEAKERS['assistant']}:\n")
    return "".join(lines)


__all__ = ["APIError", "error_body", "CompletionRequest", "ChatCompletionRequest", "ChatMessage",
           "StreamOptions", "TokenizeRequest", "DetokenizeRequest", "apply_chat_template", "SPEAKERS",
           "TURN_END"]
