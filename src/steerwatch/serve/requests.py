"""One admitted request as the serving engine sees it (:class:`GenRequest`: token ids, sampling,
steering, stop strings, where to send the answer) and what it gets back (:class:`GenResult`)."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ..steer import SteerSpec

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
    # called from the worker thread with ("delta", str), ("done", GenResult) or ("error", Exception)
    sink: Callable[[tuple[str, Any]], None] | None = None

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

    def extension(self, *, token_scores: bool = False, tokens: list[str] | None = None) -> dict[str, Any]:
        out = {"request_id": self.request_id, "steering": self.steering, "scores": self.scores,
               "thresholds": self.thresholds, "flags": self.flags, "events": self.events,
               "batch_size": self.batch_size, "stored_id": self.stored_id}
        if token_scores:
            out["token_scores"] = self.token_scores
            out["tokens"] = tokens or []
        return out


def describe_specs(specs: list[SteerSpec]) -> list[dict[str, Any]]:
    return [{"vector": s.vector.concept, "op": s.op, "strength": s.strength, "layers": s.resolved_layers,
             "positions": s.positions} for s in specs]
