"""Separation metrics for validation, and how far a small validation set can be trusted."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ..watch.calibrate import auroc as auroc  # the one AUROC (scikit-learn), re-exported for extraction

if TYPE_CHECKING:  # pragma: no cover
    import torch


def separation(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> dict[str, float]:
    """AUROC, paired accuracy (pos_i > neg_i) and Cohen's d of the projections."""
    p, n = pos_scores.double(), neg_scores.double()
    pooled = ((p.var(unbiased=False) + n.var(unbiased=False)) / 2).sqrt().clamp_min(1e-12)
    row = {"auroc": auroc(p, n), "cohens_d": float((p.mean() - n.mean()) / pooled)}
    if p.shape == n.shape:
        row["paired_acc"] = float((p > n).double().mean())
    return row


# Below this many validation pairs, `extract` warns that the per-layer AUROCs are unreliable and
# gives each one's 95 % interval: at 20 pairs a perfect 1.000 still has a lower bound of 0.84.
MIN_VAL_PAIRS = 20
Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal


def auroc_interval(value: float, n_pos: int, n_neg: int, *, z: float = Z95) -> tuple[float, float]:
    """A conservative 95 % interval for an AUROC measured on ``n_pos`` positive and ``n_neg``
    negative scores: the Wilson score interval for a proportion ``value`` observed on
    ``min(n_pos, n_neg)`` trials.

    Why this one: the Mann-Whitney estimate's variance is at most ``A (1 - A) / min(m, n)`` whatever
    the score distributions (Birnbaum & Klose 1957), the binomial variance on ``min(m, n)`` trials;
    the Wilson form of it stays inside [0, 1] and does not collapse at the boundary. Hanley-McNeil's
    interval does collapse: at AUROC 1.000 its standard error is 0, so 5 validation pairs would give
    "1.000-1.000" -- exactly the case that needs a warning. NaN in, (NaN, NaN) out."""
    n = min(n_pos, n_neg)
    if n <= 0:
        raise ValueError("auroc_interval needs at least one positive and one negative score")
    if math.isnan(value):
        return (math.nan, math.nan)
    p = min(1.0, max(0.0, float(value)))
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))
