"""Per-token detector scores over existing conversations (teacher forcing: one forward pass per
batch), aggregated per message and per response.

Memory stays bounded: the hooks keep only the projections (tokens x detectors), never the
activations, and the forward pass stops after the deepest layer any detector reads.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..batch import forward, length_batches, pad_id
from ..errors import SteerwatchError
from ..types import AGGREGATES
from .detector import Detector, aggregate_scores
from .render import render_conversation

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..data.conversations import Conversation
    from ..models import LoadedModel

DEFAULT_MAX_TOKENS = 4096


@dataclass
class ScoredConversation:
    id: str
    label: int | None
    token_ids: list[int]
    msg_index: list[int]  # per token: message index or -1 (template glue)
    roles: list[str]  # per message
    scores: dict[str, list[float]]  # detector name -> per-token score
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: size and each detector's mean response score, never the token lists."""
        label = "" if self.label is None else f" label {self.label}"
        scores = [f"{name} {'-' if (v := self.response_score(name)) is None else f'{v:+.3f}'}"
                  for name in list(self.scores)[:4]]
        return (f"<ScoredConversation {self.id!r}{label}: {len(self.token_ids)} tokens, {len(self.roles)} messages"
                + "".join(f" · {s}" for s in scores) + (" · truncated" if self.truncated else "") + ">")

    def _repr_html_(self) -> str:
        import html

        return html.escape(repr(self))

    def _tokens_of(self, keep) -> list[int]:
        return [i for i, k in enumerate(self.msg_index) if k >= 0 and keep(k)]

    def message_scores(self, name: str) -> list[float | None]:
        """Mean token score of each message (None for a message with no scored tokens)."""
        s = self.scores[name]
        out: list[float | None] = []
        for k in range(len(self.roles)):
            idx = self._tokens_of(lambda m, k=k: m == k)
            out.append(sum(s[i] for i in idx) / len(idx) if idx else None)
        return out

    def turn_scores(self, name: str) -> list[tuple[int, float]]:
        """(message index, mean score) for each assistant message: where in a trajectory it rose."""
        return [(k, v) for k, v in enumerate(self.message_scores(name))
                if self.roles[k] == "assistant" and v is not None]

    def response_score(self, name: str, aggregate: str = "mean") -> float | None:
        """The assistant side's score: ``mean`` / ``max`` / ``last`` over all assistant tokens, or
        ``max_turn`` (highest per-message mean). None when the conversation has no assistant text."""
        if aggregate not in AGGREGATES:
            raise SteerwatchError(f"unknown aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
        s = self.scores[name]
        idx = self._tokens_of(lambda m: self.roles[m] == "assistant")
        if not idx:
            return None
        if aggregate == "max_turn":
            return max(v for _, v in self.turn_scores(name))
        return aggregate_scores([s[i] for i in idx], aggregate)

    def prompt_score(self, name: str) -> float | None:
        """Mean score over the non-assistant messages (system, user, tool)."""
        s = self.scores[name]
        idx = self._tokens_of(lambda m: self.roles[m] != "assistant")
        return sum(s[i] for i in idx) / len(idx) if idx else None


class ProjectionHooks:
    """:class:`~steerwatch.record.ReadHooks` that keep ``h_L @ U_L.T`` for every detector layer:
    (batch, seq, k_L) per layer and forward call. Used for teacher-forced scoring and, step by step,
    during generation."""

    def __init__(self, loaded: LoadedModel, detectors: Sequence[Detector]) -> None:
        import torch

        from ..record import ReadHooks

        self.detectors = list(detectors)
        n_blocks = loaded.n_layers
        param = next(loaded.model.parameters())
        self.by_layer: dict[int, list[int]] = {}
        for j, det in enumerate(self.detectors):
            if det.layer >= n_blocks:
                raise SteerwatchError(f"detector {det.name!r} reads layer {det.layer}, the model has {n_blocks}")
            self.by_layer.setdefault(det.layer, []).append(j)
        self.mats = {layer: torch.stack([self.detectors[j].unit().float() for j in idx]).to(param.device)
                     for layer, idx in self.by_layer.items()}  # (k_L, d)
        self.hooks = ReadHooks(loaded, list(self.by_layer), lambda layer, h: (h @ self.mats[layer].T).cpu())

    @property
    def chunks(self) -> list[dict[int, torch.Tensor]]:
        """One ``{layer: (batch, seq, k_L)}`` per forward call so far."""
        return self.hooks.calls

    @property
    def last(self) -> int:
        return self.hooks.last

    def remove(self) -> None:
        self.hooks.remove()

    def __enter__(self) -> ProjectionHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def take(self) -> torch.Tensor:
        """All recorded calls joined along the sequence, (batch, total_seq, n_detectors); clears them."""
        out = self.joined()
        self.hooks.take()
        return out

    def joined(self) -> torch.Tensor:
        """All recorded calls joined along the sequence: (batch, total_seq, n_detectors)."""
        import torch

        parts = []
        for chunk in self.chunks:
            b, s = next(iter(chunk.values())).shape[:2]
            full = torch.zeros(b, s, len(self.detectors))
            for layer, idx in self.by_layer.items():
                full[:, :, idx] = chunk[layer]
            parts.append(full)
        return torch.cat(parts, dim=1) if parts else torch.zeros(0, 0, len(self.detectors))


def _as_messages(item: Any) -> tuple[str, int | None, list[dict], dict]:
    from ..data.conversations import Conversation

    if isinstance(item, Conversation):
        return item.id, item.label, item.messages, item.meta
    if isinstance(item, (list, tuple)) and all(isinstance(m, dict) and "role" in m for m in item):
        return "", None, [{"role": m["role"], "content": m.get("content") or "", **{
            k: m[k] for k in ("tool_calls", "tool_call_id", "name") if k in m}} for m in item], {}
    raise SteerwatchError("score_conversations takes Conversation objects or lists of chat messages")


def score_conversations(loaded: LoadedModel, conversations: Sequence[Conversation | list[dict]],
                        detectors: Sequence[Detector], *, batch_size: int = 4,
                        max_tokens: int = DEFAULT_MAX_TOKENS, progress: bool = False,
                        force: bool = False) -> list[ScoredConversation]:
    """Teacher-forced per-token scores of every detector over every conversation.

    Conversations longer than ``max_tokens`` are cut to their first ``max_tokens`` tokens and
    marked ``truncated`` (reported, never silent)."""
    from tqdm.auto import tqdm

    if not detectors:
        raise SteerwatchError("give at least one detector")
    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        raise SteerwatchError(f"detector names must be unique, got {names}")
    for d in detectors:
        d.vector.check_model(loaded, force=force)
    rendered, info = [], []
    for i, item in enumerate(conversations):
        cid, label, msgs, meta = _as_messages(item)
        rendered.append(render_conversation(loaded.tokenizer, msgs, max_tokens=max_tokens))
        info.append((cid or f"#{i + 1}", label, meta))
    results: list[ScoredConversation | None] = [None] * len(rendered)
    hooks = ProjectionHooks(loaded, detectors)
    try:
        bar = tqdm(total=len(rendered), desc="scoring", disable=not progress, unit="conv")
        for idx in length_batches([len(r.ids) for r in rendered], batch_size):
            forward(loaded, [rendered[i].ids or [pad_id(loaded.tokenizer)] for i in idx], stop_after=hooks.last)
            proj = hooks.take()  # (batch, width, n_det)
            for r, i in enumerate(idx):
                rc, n = rendered[i], len(rendered[i].ids)
                cid, label, meta = info[i]
                results[i] = ScoredConversation(
                    id=cid, label=label, token_ids=rc.ids, msg_index=rc.msg_index, roles=rc.roles,
                    scores={d.name: proj[r, :n, j].tolist() for j, d in enumerate(detectors)},
                    truncated=rc.truncated, meta=meta)
            bar.update(len(idx))
        bar.close()
    finally:
        hooks.remove()
    return [r for r in results if r is not None]


def score_continuations(loaded: LoadedModel, seqs: Sequence[tuple[list[int], list[int]]],
                        detectors: Sequence[Detector], *, batch_size: int = 8) -> list[dict[str, list[float]]]:
    """Teacher-forced (unsteered unless the caller attached steering) scores of the continuation
    tokens of each ``(prompt_ids, continuation_ids)``: the same positions a live reading scores.
    The runtime rescores steered generations with it."""
    out: list[dict[str, list[float]]] = [{} for _ in seqs]
    hooks = ProjectionHooks(loaded, detectors)
    try:
        for start in range(0, len(seqs), batch_size):
            idx = list(range(start, min(start + batch_size, len(seqs))))
            forward(loaded, [list(seqs[i][0]) + list(seqs[i][1]) for i in idx], stop_after=hooks.last)
            proj = hooks.take()  # (batch, width, n_det)
            for r, i in enumerate(idx):
                p, c = len(seqs[i][0]), len(seqs[i][1])
                out[i] = {d.name: proj[r, p:p + c, j].tolist() for j, d in enumerate(detectors)}
    finally:
        hooks.remove()
    return out
