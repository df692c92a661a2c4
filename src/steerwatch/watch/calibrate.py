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
    from .readcache import ReadCache
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


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed exactly in log space (no overflow for large n)."""
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 1.0 if k >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(x - top) for x in logs))


def fpr_upper_bound(k: int, n: int, *, confidence: float = 0.95) -> float:
    """Exact (Clopper-Pearson) one-sided upper confidence bound on a rate after ``k`` events in
    ``n`` trials: the p at which seeing at most ``k`` has probability ``1 - confidence``. For
    ``k = 0`` it is ``1 - (1 - confidence) ** (1 / n)``; for ``k = n``, 1. Found by bisection on the
    binomial CDF (which falls as p rises) to float precision."""
    if n < 1 or not 0 <= k <= n:
        raise SteerwatchError(f"an FPR bound needs 0 <= k <= n and n >= 1, got k={k}, n={n}")
    if not 0 < confidence < 1:
        raise SteerwatchError(f"confidence must be between 0 and 1, got {confidence}")
    if k == n:
        return 1.0
    alpha = 1.0 - confidence
    lo, hi = k / n, 1.0
    for _ in range(64):  # halves [k/n, 1] 64 times: down to float64's spacing
        mid = (lo + hi) / 2
        if _binom_cdf(k, n, mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


SMALL_SET_FACTOR = 3.0  # warn when the 95 % upper bound on the achieved FPR exceeds this times the target


def small_set_warning(calibration: dict[str, Any]) -> str | None:
    """One line when the control set is too small for the target FPR to mean much: the exact 95 %
    upper bound on the FPR the threshold achieves is above ``SMALL_SET_FACTOR`` (3) times the target.
    The rule, measured: at a 1 % target, 400 conversations (4 allowed above) bound it at 2.3 %
    (no warning), 200 at 3.1 % and 40 (none allowed above) at 7.2 % (warnings); twice the target
    would warn on the built-in 400-conversation set, where 1 % is as precise as 400 samples allow.
    None when it is fine or the calibration has no bound (older detector files)."""
    upper, target, n = calibration.get("fpr_upper95"), calibration.get("fpr_target"), calibration.get("n")
    if upper is None or target is None or not n or upper <= SMALL_SET_FACTOR * target:
        return None
    need = enough_controls(target)
    more = f" (at least {need} keep it within {SMALL_SET_FACTOR:g}x the target)" if need else ""
    return (f"calibrated on only {n} control conversations: the false-positive rate could be as high as "
            f"{upper:.1%} (95 % upper bound) for a target of {target:.2%}; calibrate on more conversations"
            f"{more}, or choose a larger --fpr")


def enough_controls(target: float) -> int | None:
    """The smallest control-set size from which every larger size (checked over one full step of
    ``floor(target * n)``; the bound saw-tooths as n grows) keeps the 95 % bound within
    ``SMALL_SET_FACTOR`` times ``target``; None below a 0.1 % target (too long to search)."""
    if target < 1e-3:
        return None
    cycle, start, run = math.ceil(1 / target) + 1, None, 0
    for m in range(1, 100 * cycle):
        if fpr_upper_bound(math.floor(target * m + 1e-9), m) <= SMALL_SET_FACTOR * target:
            start, run = (m if run == 0 else start), run + 1
            if run >= cycle:
                return start
        else:
            run = 0
    return None  # pragma: no cover - the bound shrinks to the target as n grows


def _scores(values: Any) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.float64).reshape(-1)


def auroc(pos: Any, neg: Any) -> float:
    """P(a random positive scores above a random negative), ties counting one half: scikit-learn's
    ``roc_auc_score`` (the area under the ROC curve equals that Mann-Whitney form exactly, up to
    float64 rounding). ``pos``, ``neg``: sequences of floats or 1-d tensors / arrays. The one AUROC
    in steerwatch (validation, detection quality, the lab, the deception report)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    p, n = _scores(pos), _scores(neg)
    if p.size == 0 or n.size == 0:
        raise SteerwatchError("AUROC needs at least one positive and one negative example")
    if not (np.isfinite(p).all() and np.isfinite(n).all()):
        raise SteerwatchError(f"AUROC needs finite scores; got {int((~np.isfinite(p)).sum())} positive and "
                              f"{int((~np.isfinite(n)).sum())} negative scores that are NaN or infinite "
                              "(check the model's dtype: a float16 overflow gives inf)")
    return float(roc_auc_score(np.r_[np.ones(p.size), np.zeros(n.size)], np.r_[p, n]))


def auroc_resampled(pos: Any, neg: Any) -> list[float]:
    """The AUROC of each row pair at once: ``pos`` (resamples, n_pos), ``neg`` (resamples, n_neg),
    for bootstrap intervals. scipy's Mann-Whitney U / (n_pos * n_neg), vectorised over the rows: the
    same value as :func:`auroc` on each row (a test checks it), hundreds of times faster than one
    ``roc_auc_score`` call per resample, whose input checks dominate on small sets
    (bench/bench_methods.py)."""
    import numpy as np
    from scipy.stats import mannwhitneyu

    p, n = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    if p.ndim != 2 or n.ndim != 2 or len(p) != len(n) or p.shape[1] == 0 or n.shape[1] == 0:
        raise SteerwatchError(f"resampled AUROC needs (k, n_pos) and (k, n_neg) arrays, got {p.shape} and {n.shape}")
    u = mannwhitneyu(p, n, axis=1, method="asymptotic", use_continuity=False).statistic
    return [float(v) for v in np.asarray(u) / (p.shape[1] * n.shape[1])]


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
              scored: Sequence[ScoredConversation] | None = None,
              cache: ReadCache | None = None) -> list[dict[str, Any]]:
    """Set each detector's threshold so that at most ``fpr`` of the control conversations'
    response scores lie above it. Updates the detectors in place and returns one row each.

    Each calibration records ``fpr_upper95``: the exact (Clopper-Pearson) one-sided 95 % upper
    bound on the false-positive rate the threshold achieves, from ``n_above`` of ``n`` control
    responses above it (:func:`small_set_warning` says when it is too loose). ``cache``: reuse the
    control set's reads at each detector's layer (:class:`~steerwatch.watch.readcache.ReadCache`)."""
    from ..data.conversations import conversations_sha256
    from .score import score_conversations

    if scored is None:
        scored = score_conversations(loaded, control, detectors, batch_size=batch_size, progress=progress,
                                     cache=cache)
    sha = conversations_sha256(list(control))
    rows = []
    for det in detectors:
        vals = [v for s in scored if (v := s.response_score(det.name, det.aggregate)) is not None]
        thr, achieved = threshold_for_fpr(vals, fpr)
        det.threshold = thr
        mean = sum(vals) / len(vals)
        above = sum(v > thr for v in vals)
        det.calibration = {"fpr_target": fpr, "achieved_fpr": achieved, "n": len(vals), "n_above": above,
                           "fpr_upper95": fpr_upper_bound(above, len(vals)), "sha256": sha,
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
