"""Thresholds at a target false-positive rate, and detection quality on labelled data."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover
    from ..data.conversations import Conversation
    from ..models import LoadedModel
    from .detector import Detector
    from .score import ScoredConversation


def threshold_for_fpr(negatives: Sequence[float], fpr: float) -> tuple[float, float]:
    """The smallest threshold among the negatives' scores such that the share of negatives
    scoring strictly above it is at most ``fpr``. Returns (threshold, achieved FPR).

    A flag is ``score > threshold``. With n negatives, floor(fpr * n) of them may lie above."""
    if not 0 < fpr < 1:
        raise SteerwatchError(f"the target false-positive rate must be between 0 and 1, got {fpr}")
    vals = sorted(float(x) for x in negatives if x is not None and math.isfinite(x))
    if not vals:
        raise SteerwatchError("no calibration scores: the control data has no scored assistant text")
    n = len(vals)
    allowed = math.floor(fpr * n + 1e-9)
    thr = vals[n - 1 - allowed]  # exactly `allowed` values lie above it, unless there are ties
    achieved = sum(v > thr for v in vals) / n
    return thr, achieved


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float:
    if not pos or not neg:
        raise SteerwatchError("AUROC needs at least one positive and one negative example")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def detection_metrics(scores: Sequence[float], labels: Sequence[int], *, threshold: float | None = None,
                      fprs: Sequence[float] = (0.01, 0.05)) -> dict[str, Any]:
    """AUROC, recall at fixed FPRs (thresholds taken from this set's own negatives), and the
    confusion at ``threshold`` (a calibrated threshold) when given."""
    pos = [s for s, y in zip(scores, labels) if y == 1 and s is not None]
    neg = [s for s, y in zip(scores, labels) if y == 0 and s is not None]
    row: dict[str, Any] = {"n_pos": len(pos), "n_neg": len(neg), "auroc": auroc(pos, neg)}
    for f in fprs:
        thr, _ = threshold_for_fpr(neg, f)
        row[f"recall@{f:g}fpr"] = sum(p > thr for p in pos) / len(pos)
    if threshold is not None:
        tp = sum(p > threshold for p in pos)
        fp = sum(n > threshold for n in neg)
        row.update(threshold=threshold, tp=tp, fp=fp, fn=len(pos) - tp, tn=len(neg) - fp,
                   recall=tp / len(pos), fpr=fp / len(neg),
                   precision=tp / (tp + fp) if tp + fp else None)
    return row


TRIGGER_WINDOW = 8


def running_max_mean(vals: Sequence[float], window: int) -> float:
    """The highest mean over the last ``window`` values (shorter at the start), as the live trigger
    of conditional steering sees a response token by token."""
    best, acc = float("-inf"), []
    for v in vals:
        acc.append(v)
        w = acc[-window:]
        best = max(best, sum(w) / len(w))
    return best


def calibrate(loaded: LoadedModel, detectors: Sequence[Detector], control: Sequence[Conversation], *,
              fpr: float = 0.01, source: str = "", batch_size: int = 4, progress: bool = False,
              scored: Sequence[ScoredConversation] | None = None) -> list[dict[str, Any]]:
    """Set each detector's threshold so that at most ``fpr`` of the control conversations'
    response scores lie above it. Updates the detectors in place and returns one row each."""
    from ..data.conversations import conversations_sha256
    from .score import score_conversations

    if scored is None:
        scored = score_conversations(loaded, control, detectors, batch_size=batch_size, progress=progress)
    sha = conversations_sha256(list(control))
    rows = []
    for det in detectors:
        vals = [v for s in scored if (v := s.response_score(det.name, det.aggregate)) is not None]
        thr, achieved = threshold_for_fpr(vals, fpr)
        det.threshold = thr
        mean = sum(vals) / len(vals)
        det.calibration = {"fpr_target": fpr, "achieved_fpr": achieved, "n": len(vals), "sha256": sha,
                           "source": source, "aggregate": det.aggregate,
                           "score_mean": mean, "score_std": (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5}
        prompt_vals = [v for s in scored if (v := s.prompt_score(det.name)) is not None]
        if prompt_vals:
            det.calibration["prompt_threshold"] = threshold_for_fpr(prompt_vals, fpr)[0]
        trig = []
        for s in scored:
            toks = [v for v, k in zip(s.scores[det.name], s.msg_index) if k >= 0 and s.roles[k] == "assistant"]
            if toks:
                trig.append(running_max_mean(toks, TRIGGER_WINDOW))
        det.calibration["trigger_threshold"] = threshold_for_fpr(trig, fpr)[0]
        det.calibration["trigger_window"] = TRIGGER_WINDOW
        det.calibration["trigger_source"] = "reference"  # calibrate_trigger_on_generations: "generated"
        rows.append({"detector": det.name, "layer": det.layer, "sign": det.sign, "threshold": thr, **det.calibration})
    return rows


def control_prompts(control: Sequence[Conversation]) -> list[list[dict]]:
    """Each control conversation up to (not including) its first assistant message: the prompts a
    deployed model would have answered."""
    out = []
    for c in control:
        msgs = []
        for m in c.messages:
            if m["role"] == "assistant":
                break
            msgs.append({"role": m["role"], "content": m["content"]})
        if msgs:
            out.append(msgs)
    return out
