"""Direction-finding methods (pure functions, no model). The statistics come from scikit-learn
(PCA, TruncatedSVD, LogisticRegression, the shrunk covariance of LinearDiscriminantAnalysis); this
module fixes the conventions around them: unit length, pointing from ``neg`` to ``pos``.

- ``mean_diff``: mean(pos) - mean(neg).
- ``pca_diff``: first principal component of the paired differences pos_i - neg_i (uncentred,
  as in RepE: the dominant direction of the differences; scikit-learn's ``TruncatedSVD``).
- ``pca_center``: first principal component of all activations (both sides) centred on their
  overall mean: the main axis of variation of the pooled data, which is the concept axis when
  the concept dominates the data's variance (scikit-learn's ``PCA``).
- ``logistic``: weight vector of an L2-regularised logistic-regression probe (pos = 1) fit on
  standardised features, mapped back to the raw activation space (scikit-learn's
  ``LogisticRegression``, ``C = 1 / (n * l2)``).
- ``lda``: the mean difference whitened by the shrunk within-class covariance,
  ``((1 - a) S + a (tr S / d) I)^-1 (mean(pos) - mean(neg))`` with ``S`` the pooled covariance of
  each side around its own mean and ``a`` = :data:`LDA_SHRINKAGE` (scikit-learn's
  ``shrunk_covariance``: the direction of ``LinearDiscriminantAnalysis(solver="lsqr",
  shrinkage=a)``). Variance that both sides share
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


def _top_pc(x: torch.Tensor, *, centre: bool) -> torch.Tensor:
    """(n, d) -> the first principal axis: scikit-learn's ``PCA`` (``centre``: around the column
    means) or ``TruncatedSVD`` (uncentred: the top right singular vector), both exact (full LAPACK
    SVD; ARPACK to machine precision). The sign is left to :func:`_unit_oriented`."""
    import numpy as np
    import torch
    from sklearn.decomposition import PCA, TruncatedSVD

    a = x.double().numpy()
    if centre:
        a = a - a.mean(0)
    if not bool(np.abs(a).max() > 0):  # an all-zero matrix has no principal direction (SVD would return a basis vector)
        return torch.zeros(x.shape[1])
    if x.shape[1] == 1:  # one feature: its own axis (ARPACK needs two)
        return torch.ones(1)
    if centre:
        pc = PCA(n_components=1, svd_solver="full").fit(a).components_[0]
    else:  # RepE's PCA of the differences is uncentred: centring would remove the mean difference itself
        pc = TruncatedSVD(n_components=1, algorithm="arpack", tol=0.0, random_state=0).fit(a).components_[0]
    return torch.from_numpy(np.ascontiguousarray(pc)).float()


def pca_diff(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    return _unit_oriented(_top_pc(pos - neg, centre=False), pos, neg)


def pca_center(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    import torch

    return _unit_oriented(_top_pc(torch.cat([pos, neg]), centre=True), pos, neg)


LOGISTIC_TOL = 1e-8
"""scikit-learn's L-BFGS stops when the largest gradient component of the (mean) loss is below this.
Its default, 1e-4, stops early enough to move the unit direction by 3e-4 to 8e-4 (measured at
d = 16..896); from 1e-8 on, a tighter tolerance moves it by less than 5e-8."""


def logistic(pos: torch.Tensor, neg: torch.Tensor, *, l2: float = 1e-2) -> torch.Tensor:
    """scikit-learn's ``LogisticRegression`` on standardised features, objective
    ``mean BCE + l2 / 2 * |w|^2`` (intercept unpenalised), i.e. ``C = 1 / (n * l2)``."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression

    x = torch.cat([pos, neg]).double()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    z = ((x - mu) / sd).numpy()
    clf = LogisticRegression(C=1.0 / (len(y) * l2), tol=LOGISTIC_TOL, max_iter=10_000).fit(z, y)
    w = torch.from_numpy(np.ascontiguousarray(clf.coef_[0]))
    # score = ((x - mu) / sd) . w  ==  x . (w / sd) + const  -> the raw-space direction is w / sd
    return _unit_oriented((w / sd).float(), pos, neg)


LDA_SHRINKAGE = 0.5


def lda(pos: torch.Tensor, neg: torch.Tensor, *, shrinkage: float = LDA_SHRINKAGE) -> torch.Tensor:
    """The covariance is scikit-learn's (``empirical_covariance`` of each side around its own mean,
    pooled, then ``shrunk_covariance``), the same matrix ``LinearDiscriminantAnalysis(solver="lsqr",
    shrinkage=a)`` builds; the direction ``S^-1 (mean(pos) - mean(neg))`` is then one Cholesky
    solve. ``LinearDiscriminantAnalysis.fit`` itself would give the same direction (a test checks it)
    but solves by least squares (an SVD): 5-10x slower at d = 896 (bench/bench_methods.py), and a
    deception probe fits 120 of them (24 layers x 5 fits)."""
    import numpy as np
    import torch
    from scipy.linalg import solve
    from sklearn.covariance import empirical_covariance, shrunk_covariance

    if not 0.0 < shrinkage <= 1.0:
        raise ExtractionError(f"LDA shrinkage must be in (0, 1], got {shrinkage}")
    if shrinkage == 1.0:
        return mean_diff(pos, neg)
    p, n = pos.double().numpy(), neg.double().numpy()
    centred = np.concatenate([p - p.mean(0), n - n.mean(0)])
    cov = empirical_covariance(centred, assume_centered=True)  # (d, d), the pooled within-class covariance
    if not np.trace(cov) > 0:  # no within-class variance at all: nothing to whiten against
        return mean_diff(pos, neg)
    w = solve(shrunk_covariance(cov, shrinkage), p.mean(0) - n.mean(0), assume_a="pos")
    return _unit_oriented(torch.from_numpy(w).float(), pos, neg)


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
