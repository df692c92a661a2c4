"""Separation metrics for validation."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..watch.calibrate import auroc

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["auroc", "separation"]  # auroc: the one AUROC (scikit-learn), re-exported for extraction


def separation(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> dict[str, float]:
    """AUROC, paired accuracy (pos_i > neg_i) and Cohen's d of the projections."""
    p, n = pos_scores.double(), neg_scores.double()
    pooled = ((p.var(unbiased=False) + n.var(unbiased=False)) / 2).sqrt().clamp_min(1e-12)
    row = {"auroc": auroc(p, n), "cohens_d": float((p.mean() - n.mean()) / pooled)}
    if p.shape == n.shape:
        row["paired_acc"] = float((p > n).double().mean())
    return row
