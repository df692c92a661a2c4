"""Direction-finding methods (pure functions, no model).

- ``mean_diff``: mean(pos) - mean(neg).
- ``pca_diff``: first principal component of the paired differences pos_i - neg_i (uncentred,
  as in RepE: the dominant direction of the differences).
- ``pca_center``: first principal component of all activations (both sides) centred on their
  overall mean: the main axis of variation of the pooled data, which is the concept axis when
  the concept dominates the data's variance.
- ``logistic``: weight vector of an L2-regularised logistic-regression probe (pos = 1) fit on
  standardised features, mapped back to the raw activation space.
- ``lda``: the mean difference whitened by the shrunk within-class covariance,
  ``((1 - a) S + a (tr S / d) I)^-1 (mean(pos) - mean(neg))`` with ``S`` the pooled covariance of
  each side around its own mean and ``a`` = :data:`LDA_SHRINKAGE`. Variance that both sides share
  (topic, format, length: what changes *between* pairs) is discounted, so a concept that is a
  small, consistent shift on top of large nuisance variation still separates. ``a = 1`` gives
  ``mean_diff`` exactly.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ExtractionError

if TYPE_CHECKING:  # pragma: no cover
    import torch


def _unit_oriented(v: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    n = v.norm()
    if not bool(n > 0) or not bool(n.isfinite()):
        raise ExtractionError("the extracted direction is zero or not finite: the two sides are identical "
                              "at this layer (check that positive and negative texts differ where you read)")
    v = v / n
    if float((pos.mean(0) - neg.mean(0)) @ v) < 0:
        v = -v
    return v


def mean_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return _unit_oriented(pos.mean(0) - neg.mean(0), pos, neg)


def _top_pc(x: torch.Tensor) -> torch.Tensor:
    import torch

    # (n, d): right singular vector of the largest singular value
    _, s, vh = torch.linalg.svd(x.double(), full_matrices=False)
    if not bool(s[0] > 0):  # an all-zero matrix has no principal direction (SVD would return a basis vector)
        return torch.zeros(x.shape[1])
    return vh[0].float()


def pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return _unit_oriented(_top_pc(pos - neg), pos, neg)


def pca_center(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    import torch

    x = torch.cat([pos, neg])
    return _unit_oriented(_top_pc(x - x.mean(0)), pos, neg)


def logistic(pos: torch.Tensor, neg: torch.Tensor, *, l2: float = 1e-2, steps: int = 200) -> torch.Tensor:
    import torch

    x = torch.cat([pos, neg]).double()
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 * (w @ w) / 2
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    # score = ((x - mu) / sd) . w  ==  x . (w / sd) + const  -> the raw-space direction is w / sd
    return _unit_oriented((w.detach() / sd).float(), pos, neg)


LDA_SHRINKAGE = 0.5


def lda(pos: torch.Tensor, neg: torch.Tensor, *, shrinkage: float = LDA_SHRINKAGE) -> torch.Tensor:
    import torch

    if not 0.0 < shrinkage <= 1.0:
        raise ExtractionError(f"LDA shrinkage must be in (0, 1], got {shrinkage}")
    p, n = pos.double(), neg.double()
    diff = p.mean(0) - n.mean(0)
    if shrinkage == 1.0:
        return mean_diff(pos, neg)
    centred = torch.cat([p - p.mean(0), n - n.mean(0)])
    d = centred.shape[1]
    cov = centred.T @ centred / max(len(centred) - 2, 1)
    scale = float(torch.trace(cov)) / d
    if not scale > 0:  # no within-class variance at all: nothing to whiten against
        return mean_diff(pos, neg)
    reg = (1 - shrinkage) * cov + shrinkage * scale * torch.eye(d, dtype=torch.float64)
    return _unit_oriented(torch.linalg.solve(reg, diff).float(), pos, neg)


# the registry: exactly the names of steerwatch.types.Method (a test checks they agree)
METHODS: dict[str, Callable[..., torch.Tensor]] = {
    "mean_diff": mean_diff,
    "pca_diff": pca_diff,
    "pca_center": pca_center,
    "logistic": logistic,
    "lda": lda,
}


def check_method(name: str) -> str:
    if name not in METHODS:
        raise ExtractionError(f"unknown method {name!r}; valid: {', '.join(METHODS)}")
    return name


UNPAIRED_METHODS = ("mean_diff", "pca_center", "logistic", "lda")  # need no pos_i <-> neg_i pairing


def extract_direction(method: str, pos: torch.Tensor, neg: torch.Tensor, *, paired: bool = True) -> torch.Tensor:
    """The unit direction (pointing from ``neg`` to ``pos``) found by ``method``. ``paired=False``:
    two independent samples of possibly different sizes (e.g. deceptive vs honest answers);
    only the methods in :data:`UNPAIRED_METHODS` take them."""
    check_method(method)
    if not paired:
        if method not in UNPAIRED_METHODS:
            raise ExtractionError(f"method {method!r} needs paired examples; for unpaired ones use "
                                  f"{', '.join(UNPAIRED_METHODS)}")
        if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != neg.shape[1]:
            raise ExtractionError(f"pos and neg must both be (n, d) with the same d, got {tuple(pos.shape)} "
                                  f"and {tuple(neg.shape)}")
        if len(pos) < 2 or len(neg) < 2:
            raise ExtractionError(f"need at least 2 examples per side, got {len(pos)} and {len(neg)}")
        return METHODS[method](pos, neg)
    if pos.ndim != 2 or neg.shape != pos.shape:
        raise ExtractionError(f"pos and neg must both be (n, d) with the same shape, got {tuple(pos.shape)} "
                              f"and {tuple(neg.shape)}")
    if len(pos) < 2:
        raise ExtractionError(f"need at least 2 training pairs, got {len(pos)}")
    if bool((pos == neg).all()):  # a pooled PCA would still return a (meaningless) direction
        raise ExtractionError("the two sides are identical at this layer, there is no direction to extract "
                              "(check that positive and negative texts differ where you read)")
    return METHODS[method](pos.float(), neg.float())
