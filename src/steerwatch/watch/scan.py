"""Transcript scanning and detection evaluation: tidy rows out of scored conversations."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from .calibrate import detection_metrics
from .score import ScoredConversation, score_conversations

if TYPE_CHECKING:  # pragma: no cover
    from ..data.conversations import Conversation
    from ..models import LoadedModel
    from .detector import Detector


def scan_rows(scored: Sequence[ScoredConversation], detectors: Sequence[Detector]) -> list[dict[str, Any]]:
    """One row per conversation: each detector's response score, whether it is flagged (for
    calibrated detectors), the per-turn scores of assistant messages and the first turn that
    crossed the threshold (where an agent started to cheat or hide something)."""
    rows = []
    for sc in scored:
        row: dict[str, Any] = {"id": sc.id, "label": sc.label, "n_tokens": len(sc.token_ids),
                               "truncated": sc.truncated, "scores": {}, "flags": [], "turns": {}}
        for det in detectors:
            score = sc.response_score(det.name, det.aggregate)
            row["scores"][det.name] = score
            turns = sc.turn_scores(det.name)
            row["turns"][det.name] = [{"message": k, "score": v} for k, v in turns]
            if det.flagged(score):
                row["flags"].append(det.name)
            first = next((k for k, v in turns if det.flagged(v)), None)
            if first is not None:
                row.setdefault("first_flagged_message", {})[det.name] = first
        row["flagged"] = bool(row["flags"])
        rows.append(row)
    return rows


def scan(loaded: LoadedModel, conversations: Sequence[Conversation], detectors: Sequence[Detector], *,
         batch_size: int = 4, progress: bool = False) -> tuple[list[dict[str, Any]], list[ScoredConversation]]:
    """Score conversations with detectors; returns the rows and the scored conversations (for
    views)."""
    scored = score_conversations(loaded, conversations, detectors, batch_size=batch_size, progress=progress)
    return scan_rows(scored, detectors), scored


def detect_eval(loaded: LoadedModel, datasets: Mapping[str, Sequence[Conversation]],
                detectors: Sequence[Detector], *, batch_size: int = 4, progress: bool = False
                ) -> list[dict[str, Any]]:
    """Detection quality of every detector on every labelled set: the generalisation matrix as
    tidy rows (detector x data set): AUROC, recall at 1 % and 5 % FPR (thresholds from the set's
    own negatives) and, for calibrated detectors, the confusion at the calibrated threshold."""
    rows = []
    for name, convs in datasets.items():
        missing = [c.id for c in convs if c.label is None]
        if missing:
            raise SteerwatchError(f"data set {name!r}: {len(missing)} conversation(s) have no label (e.g. "
                                  f"{missing[0]}); detection evaluation needs \"label\": 0 or 1 on every line")
        labels = [c.label for c in convs if c.label is not None]  # every one (checked above)
        if len(set(labels)) < 2:
            raise SteerwatchError(f"data set {name!r} holds only label {labels[0]}; it needs both 0 and 1")
        scored = score_conversations(loaded, convs, detectors, batch_size=batch_size, progress=progress)
        for det in detectors:
            got = [s.response_score(det.name, det.aggregate) for s in scored]
            unscored = [s.id for s, v in zip(scored, got) if v is None]
            if unscored:
                raise SteerwatchError(f"data set {name!r}: {len(unscored)} conversation(s) have no assistant text to "
                                      f"score (e.g. {unscored[0]}); detection evaluation scores the assistant's side")
            scores = [v for v in got if v is not None]
            row = {"detector": det.name, "dataset": name, "layer": det.layer, "aggregate": det.aggregate}
            row.update(detection_metrics(scores, labels, threshold=det.threshold))
            rows.append(row)
    return rows
