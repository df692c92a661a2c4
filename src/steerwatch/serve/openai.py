"""OpenAI's wire shapes: the error body, the chat and completion objects, their streamed chunks and
the usage block, with steerwatch's ``steerwatch`` extension (steering, scores, flags, events)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from pydantic import ValidationError

    from .requests import GenRequest, GenResult


class ApiError(Exception):
    """A request that fails with an HTTP status and OpenAI's error body."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """A schema error as one line naming the fields, and the first field (OpenAI's ``param``)."""
    errs = exc.errors()
    parts = []
    for e in errs[:5]:
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}" if loc else e["msg"])
    param = ".".join(str(x) for x in errs[0]["loc"]) if errs else None
    return "invalid request: " + "; ".join(parts), param


def usage(res: GenResult) -> dict[str, int]:
    return {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
            "total_tokens": res.prompt_tokens + res.completion_tokens}


def completion_id(gen: GenRequest, *, chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + gen.request_id[4:]


def response(gen: GenRequest, res: GenResult, *, chat: bool, model: str, extension: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` / ``text_completion`` object."""
    choice: dict[str, Any] = ({"index": 0, "message": {"role": "assistant", "content": res.text}} if chat
                              else {"index": 0, "text": res.text})
    choice.update(finish_reason=res.finish_reason, logprobs=None)
    return {"id": completion_id(gen, chat=chat), "object": "chat.completion" if chat else "text_completion",
            "created": int(gen.created), "model": model, "choices": [choice], "usage": usage(res),
            "steerwatch": extension}


class Chunks:
    """The streamed chunks of one response, as server-sent events."""

    def __init__(self, gen: GenRequest, *, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id, self.created = completion_id(gen, chat=chat), int(gen.created)
        self.object = "chat.completion.chunk" if chat else "text_completion"

    @staticmethod
    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    def chunk(self, delta: Any, finish: str | None, extra: dict[str, Any] | None = None) -> str:
        choice = ({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None} if self.chat
                  else {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None})
        out = {"id": self.id, "object": self.object, "created": self.created, "model": self.model, "choices": [choice]}
        if extra:
            out.update(extra)
        return self.sse(out)

    def opening(self) -> str | None:
        """Chat streams open with the assistant role."""
        return self.chunk({"role": "assistant", "content": ""}, None) if self.chat else None

    def delta(self, text: str) -> str:
        return self.chunk({"content": text} if self.chat else text, None)

    def final(self, res: GenResult, extension: dict[str, Any]) -> str:
        return self.chunk({} if self.chat else "", res.finish_reason, {"steerwatch": extension})

    def usage(self, res: GenResult) -> str:
        return self.sse({"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                         "choices": [], "usage": usage(res)})

    def error(self, message: str, code: str = "generation_failed") -> str:
        return self.sse({"error": {"message": message, "type": "server_error", "param": None, "code": code}})

    DONE = "data: [DONE]\n\n"
