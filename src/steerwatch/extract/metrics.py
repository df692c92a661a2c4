"""Separation metrics for validation."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


def auroc(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> float:
    """P(score of a random positive > score of a random negative), ties count one half."""

    p = pos_scores.double().reshape(-1, 1)
    n = neg_scores.double().reshape(1, -1)
    if p.numel() == 0 or n.numel() == 0:
        raise ValueError("auroc needs at least one positive and one negative score")
    return float(((p > n).double() + 0.5 * (p == n).double()).mean())


def separation(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> dict[str, float]:
    """AUROC, paired accuracy (pos_i > neg_i) and Cohen's d of the projections."""
    p, n = pos_scores.double(), neg_scores.double()
    pooled = ((p.var(unbiased=False) + n.var(unbiased=False)) / 2).sqrt().clamp_min(1e-12)
    row = {"auroc": auroc(p, n), "cohens_d": float((p.mean() - n.mean()) / pooled)}
    if p.shape == n.shape:
        row["paired_acc"] = float((p > n).double().mean())
    return row
