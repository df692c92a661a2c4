"""One admitted request as the serving engine sees it (:class:`GenRequest`: token ids, sampling,
steering, stop strings, where to send the answer), what it gets back (:class:`GenResult`), and how
a validated HTTP request becomes prompt token ids."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..steer import SteerSpec
    from .schemas import ChatRequest, CompletionRequest

BLOCKED_TEXT = "[withheld by the deployment policy]"


@dataclass
class GenRequest:
    prompt_ids: list[int]
    prompt_record: Any  # messages or prompt text, for the store
    endpoint: str = "chat"  # chat | completion
    max_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    steering: list[SteerSpec] = field(default_factory=list)
    key_name: str | None = None
    stream: bool = False
    request_id: str = field(default_factory=lambda: "req-" + uuid.uuid4().hex[:24])
    created: float = field(default_factory=time.time)
    # called from the worker thread with ("delta", str), ("done", GenResult) or ("error", request id)
    sink: Callable[[tuple[str, Any]], None] | None = None
    streamed: bool = False  # part of the text was sent (a failed batch cannot retry this row)
    answered: bool = False  # "done" or "error" was sent
    cancelled: bool = False  # its client hung up: dropped if queued, stopped (and stored) if generating

    def batch_key(self) -> tuple:
        if self.seed is not None:
            return ("seed", self.request_id)
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", float(self.temperature), self.top_p)


@dataclass
class GenResult:
    request_id: str
    text: str
    finish_reason: str  # stop | length | content_filter
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    scores: dict[str, float | None]  # detector -> response score
    token_scores: dict[str, list[float]]
    thresholds: dict[str, float | None]
    flags: list[str]
    events: list[dict[str, Any]]
    steering: list[dict[str, Any]]
    batch_size: int = 1
    stored_id: int | None = None
    store_error: str | None = None  # the event could not be stored (never the exception's text)

    def extension(self, *, token_scores: bool = False, tokens: list[str] | None = None) -> dict[str, Any]:
        out = {"request_id": self.request_id, "steering": self.steering, "scores": self.scores,
               "thresholds": self.thresholds, "flags": self.flags, "events": self.events,
               "batch_size": self.batch_size, "stored_id": self.stored_id}
        if self.store_error is not None:
            out["store_error"] = self.store_error
        if token_scores:
            out["token_scores"] = self.token_scores
            out["tokens"] = tokens or []
        return out


def describe_specs(specs: list[SteerSpec]) -> list[dict[str, Any]]:
    return [{"vector": s.vector.concept, "op": s.op, "strength": s.strength, "layers": s.resolved_layers,
             "positions": s.positions} for s in specs]


def chat_messages(req: ChatRequest, system: str | None) -> list[dict[str, Any]]:
    """A chat request's messages as steerwatch renders them (``developer`` is ``system``), with the
    policy's system prompt first when the request has none of its own."""
    msgs = []
    for m in req.messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for k in ("name", "tool_calls", "tool_call_id"):
            v = getattr(m, k)
            if v is not None:
                d[k] = v
        msgs.append(d)
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def chat_prompt(req: ChatRequest, tokenizer: Any, system: str | None) -> tuple[list[int], list[dict[str, Any]]]:
    """(prompt token ids, the messages to store) of a chat request. ValueError: not renderable."""
    from ..chat import encode_prompt, render_messages

    try:
        msgs = chat_messages(req, system)
        return encode_prompt(tokenizer, render_messages(tokenizer, msgs)), msgs
    except (ValueError, TypeError) as exc:
        raise ValueError(f"messages could not be rendered: {exc}") from None
    except Exception as exc:  # chat templates raise their own error types (jinja)
        raise ValueError(f"messages could not be rendered with the model's chat template: {exc}") from None


def completion_prompt(req: CompletionRequest, tokenizer: Any, vocab_size: int) -> tuple[list[int], Any]:
    """(prompt token ids, the prompt to store) of a completion request: text, or token ids checked
    against the vocabulary. ValueError: empty or out-of-vocabulary."""
    p = req.prompt
    if isinstance(p, list) and not p:
        raise ValueError("prompt must not be empty")
    if isinstance(p, list) and isinstance(p[0], int):
        if any(not isinstance(t, int) or t < 0 or t >= vocab_size for t in p):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab_size})")
        return [int(t) for t in p], list(p)
    text = p[0] if isinstance(p, list) else p
    if not isinstance(text, str) or not text:
        raise ValueError("prompt must not be empty")
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        raise ValueError("prompt must not be empty")
    return ids, text
