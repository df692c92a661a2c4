"""Request bodies of the OpenAI-compatible endpoints, with steerwatch's extension fields.

Unknown OpenAI fields are accepted and ignored (clients send many); fields whose meaning the
server cannot honour (``n`` > 1, ``logprobs``, ``tools``, penalties, ``echo``, ``suffix``) are
refused with a 400 that says so, never silently ignored.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SteeringItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vector: str
    strength: float = Field(0.0, allow_inf_nan=False)
    layers: list[int] | None = Field(None, max_length=512)


class WatchOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token_scores: bool = False  # return per-token scores and tokens in the response extension


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for i, p in enumerate(self.content):
            if p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise ValueError(f"content part {i} has type {p.get('type')!r}; only text parts are supported")
            parts.append(p["text"])
        return "".join(parts)


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2 ** 63), lt=2 ** 64)  # what torch.manual_seed accepts
    user: str | None = None
    logprobs: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # steerwatch extensions
    steering: list[SteeringItem] | None = None  # replaces the policy's default steering
    watch: WatchOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if isinstance(v, list) and (len(v) > 4 or any(not isinstance(s, str) or not s for s in v)):
            raise ValueError("stop must be a string or a list of up to 4 non-empty strings")
        if isinstance(v, str) and not v:
            raise ValueError("stop must not be empty")
        return v

    def stops(self) -> list[str]:
        return [] if self.stop is None else ([self.stop] if isinstance(self.stop, str) else list(self.stop))

    def unsupported(self) -> str | None:
        if self.n != 1:
            return "n must be 1 (one choice per request)"
        if self.logprobs not in (None, False, 0):
            return "logprobs are not supported"
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty and frequency_penalty are not supported"
        if self.logit_bias:
            return "logit_bias is not supported"
        return None


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None

    def unsupported(self) -> str | None:
        if self.tools or self.functions:
            return "tools / functions are not supported by this server (tool messages in the history are)"
        return super().unsupported()

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int]

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, v: Any) -> Any:
        ok = (isinstance(v, str) or (isinstance(v, list) and v and (
            all(isinstance(x, str) for x in v) or all(isinstance(x, int) and not isinstance(x, bool) for x in v))))
        if not ok:
            raise ValueError("prompt must not be empty: give a string, a list of one string, or a non-empty list of "
                             "token ids")
        return v
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def unsupported(self) -> str | None:
        if self.echo:
            return "echo is not supported"
        if self.suffix:
            return "suffix is not supported"
        if self.best_of not in (None, 1):
            return "best_of must be 1"
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            return "give one prompt per request (a list of several prompts is not supported)"
        return super().unsupported()

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens
