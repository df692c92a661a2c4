"""Per-token detector scores over existing conversations (teacher forcing: one forward pass per
batch), aggregated per message and per response.

Memory stays bounded: the hooks keep only the projections (tokens x detectors), never the
activations, and the forward pass stops after the deepest layer any detector reads.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
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
    from .readcache import ReadCache

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
                        force: bool = False, sort_by_length: bool = True,
                        cache: ReadCache | None = None) -> list[ScoredConversation]:
    """Teacher-forced per-token scores of every detector over every conversation.

    Conversations are batched shortest first (``sort_by_length``; little padding) and returned in
    the caller's order. Conversations longer than ``max_tokens`` are cut to their first
    ``max_tokens`` tokens and marked ``truncated`` (reported, never silent). With ``cache`` (a
    :class:`~steerwatch.watch.readcache.ReadCache`), the residual stream at each detector layer is
    read from the cache when this model read these tokens before, else stored there, and the
    scores are projected from it: any later detector at that layer skips the forward pass."""
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
    ids = [r.ids for r in rendered]
    # the cache's lookups and reservations come before the bar, its messages never inside it
    plan = _CachePlan.make(loaded, ids, detectors, cache) if cache is not None else None
    bar = tqdm(total=len(rendered), desc="scoring", disable=not progress, unit="conv")
    try:
        if plan is not None:
            plan.fill(loaded, ids, batch_size=batch_size, sort=sort_by_length, bar=bar)
        else:
            proj = _projections(loaded, ids, detectors, batch_size=batch_size, sort=sort_by_length, bar=bar)
    except BaseException:
        if plan is not None:
            plan.discard()
        raise
    finally:
        bar.close()
    if plan is not None:
        proj = plan.project(ids, detectors)
    out = []
    for i, (rc, p) in enumerate(zip(rendered, proj)):
        cid, label, meta = info[i]
        out.append(ScoredConversation(
            id=cid, label=label, token_ids=rc.ids, msg_index=rc.msg_index, roles=rc.roles,
            scores={d.name: p[:, j].tolist() for j, d in enumerate(detectors)}, truncated=rc.truncated, meta=meta))
    return out


def _batches(loaded: LoadedModel, ids: list[list[int]], batch_size: int, sort: bool
             ) -> Iterator[tuple[list[int], list[list[int]]]]:
    """(indices, token ids) per forward batch; an empty conversation runs as one pad token."""
    for idx in length_batches([len(s) for s in ids], batch_size, sort=sort):
        yield idx, [ids[i] or [pad_id(loaded.tokenizer)] for i in idx]


def _projections(loaded: LoadedModel, ids: list[list[int]], detectors: Sequence[Detector], *,
                 batch_size: int, sort: bool, bar: Any) -> list[torch.Tensor]:
    """Per conversation (n_tokens, n_detectors), projected inside the hooks (no activation kept)."""
    out: list[Any] = [None] * len(ids)
    with ProjectionHooks(loaded, detectors) as hooks:
        for idx, seqs in _batches(loaded, ids, batch_size, sort):
            forward(loaded, seqs, stop_after=hooks.last)
            proj = hooks.take()  # (batch, width, n_det)
            for r, i in enumerate(idx):
                out[i] = proj[r, :len(ids[i])]
            bar.update(len(idx))
    return out


@dataclass
class _CachePlan:
    """What the cache has (``arrays``, memory-mapped) and what this pass must store (``fresh``,
    reserved on disk) for each detector layer."""

    cache: ReadCache
    by_layer: dict[int, list[int]]  # layer -> detector indices
    keys: dict[int, dict[str, Any]]
    arrays: dict[int, Any]
    fresh: dict[int, Any]
    starts: list[int]  # conversation i's rows: starts[i]:starts[i + 1]

    @classmethod
    def make(cls, loaded: LoadedModel, ids: list[list[int]], detectors: Sequence[Detector],
             cache: ReadCache) -> _CachePlan | None:
        """None when the cache cannot be written (the caller scores without it, and says so)."""
        import numpy as np

        by_layer: dict[int, list[int]] = {}
        for j, det in enumerate(detectors):
            if det.layer >= loaded.n_layers:
                raise SteerwatchError(f"detector {det.name!r} reads layer {det.layer}, the model has "
                                      f"{loaded.n_layers}")
            by_layer.setdefault(det.layer, []).append(j)
        keys = {layer: cache.key(loaded, ids, layer) for layer in by_layer}
        arrays = {layer: a for layer in by_layer if (a := cache.load(keys[layer])) is not None}
        plan = cls(cache, by_layer, keys, arrays, {}, np.cumsum([0] + [len(s) for s in ids]).tolist())
        try:
            for layer in sorted(set(by_layer) - set(arrays)):
                plan.fresh[layer] = cache.create(keys[layer])
        except OSError as exc:
            plan.discard()
            cache.say(f"cannot write the read cache ({exc}); scoring without it")
            return None
        return plan

    def fill(self, loaded: LoadedModel, ids: list[list[int]], *, batch_size: int, sort: bool, bar: Any) -> None:
        """Read the missing layers in one pass over every conversation and store them."""
        from ..record import ReadHooks

        if not self.fresh:
            bar.update(len(ids))
            return
        rows: list[int] = []  # the conversations of the batch being read

        def store(layer: int, h: torch.Tensor) -> None:  # h: (batch, width, d), copied out at once
            h = h.cpu()
            for r, i in enumerate(rows):
                self.fresh[layer][self.starts[i]:self.starts[i + 1]] = h[r, :len(ids[i])].numpy()

        with ReadHooks(loaded, list(self.fresh), store) as hooks:
            for idx, seqs in _batches(loaded, ids, batch_size, sort):
                rows[:] = idx
                forward(loaded, seqs, stop_after=hooks.last)
                hooks.take()
                bar.update(len(idx))

    def discard(self) -> None:
        while self.fresh:
            self.cache.discard(self.fresh.popitem()[1])

    def project(self, ids: list[list[int]], detectors: Sequence[Detector]) -> list[torch.Tensor]:
        """Per conversation (n_tokens, n_detectors) from the stored reads (committing the new ones)."""
        import numpy as np
        import torch

        for layer in sorted(self.fresh):
            self.arrays[layer] = self.cache.commit(self.keys[layer], self.fresh.pop(layer))
        units = [d.unit().float().cpu() for d in detectors]  # (d,) each
        out = []
        for i in range(len(ids)):
            full = torch.zeros(len(ids[i]), len(detectors))
            for layer, idx in self.by_layer.items():
                h = torch.from_numpy(np.array(self.arrays[layer][self.starts[i]:self.starts[i + 1]]))  # (n, d)
                for j in idx:  # one product per detector: its scores depend on nothing but h and its direction
                    full[:, j] = h @ units[j]
            out.append(full)
        return out


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
