"""Named floating-point tolerances. Every comparison of computed floats in the suite is either exact
or uses one of these, and the reason for each size is written here once.

Float32 keeps a 24-bit significand: one rounding is off by at most 2**-24 (6e-8) relative, and a sum
of n terms computed in another order differs by up to about n * 6e-8 relative to the sum of the
magnitudes. Float64 (Python floats) keeps 53 bits: 1.1e-16 per rounding. A real defect (a wrong
layer, a missed row, a wrong sign, an off-by-one position) moves values by 1e-3 or more, so each
tolerance below sits orders of magnitude under any bug it must catch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Tol:
    rel: float
    abs: float
    why: str

    def approx(self, expected: Any) -> Any:
        """``pytest.approx`` with this tolerance (works on numbers, lists and dicts of numbers)."""
        return pytest.approx(expected, rel=self.rel, abs=self.abs)

    def assert_close(self, actual: Any, expected: Any) -> None:
        import torch

        torch.testing.assert_close(actual, expected, rtol=self.rel, atol=self.abs)

    def allclose(self, a: Any, b: Any) -> bool:
        import torch

        return torch.allclose(a, b, rtol=self.rel, atol=self.abs)


DOUBLE = Tol(rel=1e-12, abs=1e-12, why=(
    "the same float64 (Python float) arithmetic in another order, or a float64 value that went through "
    "JSON, which round-trips floats exactly: a few ulps of 1.1e-16, so 1e-12 leaves four orders of room"))

FP32_STORED = Tol(rel=1e-6, abs=1e-6, why=(
    "a value that was stored in float32 (vector directions, norms) and is compared with the float64 value "
    "it came from: one rounding, 6e-8 relative, on quantities of order 1"))

FP32_ROUTE = Tol(rel=1e-5, abs=1e-5, why=(
    "the same float32 computation by another route (a manual forward pass or einsum against the library's "
    "hooks; mean vs. sum/n): reductions over d <= 896 terms reorder, measured up to ~1e-6 relative on the "
    "tiny models; 1e-5 leaves 10x room and is still 100x below any real defect"))

FP32_BATCH = Tol(rel=1e-5, abs=1e-6, why=(
    "a batched vs. an unbatched float32 forward pass (or two batches of different shape): the BLAS picks "
    "another blocking for another shape, so every matmul reduces in another order. Measured 3e-9 absolute "
    "on a probability of 0.5 (tiny Qwen2, transformers 5.25), i.e. ~6e-9 relative; deeper models "
    "accumulate more, ~1e-6 relative, hence rel 1e-5 (abs 1e-6 for values near 0)"))

FP32_CANCEL = Tol(rel=1e-3, abs=1e-4, why=(
    "a difference of two nearly equal float32 quantities: a mean-difference direction (difference of "
    "two class means), or a std from running sums (E[x^2] - mean^2). The rounding of each term is "
    "amplified by |terms| / |difference|, 10-100x for residual-stream norms and class means"))

FP32_DEEP = Tol(rel=1e-4, abs=1e-4, why=(
    "the same tokens through every block by two different paths: read live during generation (a KV "
    "cache, one token per forward call, attention over a padded batch) vs. one teacher-forced pass, or "
    "a rescoring after all 24 blocks of the embedded model. Each block adds its batch-shape and "
    "cache-layout rounding; projections are of order 1-10, so 1e-4 is 1e-5 to 1e-4 relative"))

GUARD_REPORT = Tol(rel=0.0, abs=1e-6, why=(
    "the policy guard reports pushes rounded to 6 decimal places (cosines to 4; the test vectors have "
    "cosines such as 0.6 that the rounding keeps, to float32's 3e-8)"))

OPTIMISER = Tol(rel=0.0, abs=1e-4, why=(
    "two L-BFGS runs on the same strictly convex objective (an L2-regularised logistic regression) that "
    "stop at different distances from its one optimum: the old torch fit at a largest gradient component "
    "of 2e-6 to 1.3e-5, scikit-learn's below 1e-8. Unit-direction components and standardised weights "
    "differ by the old fit's remaining error, measured 6e-6 to 5.6e-5 (synthetic d = 3..896, and the "
    "embedded model's cheating activations at all 24 layers); a regularisation off by 2x moves them by "
    "1.8e-2 or more, skipping the standardisation by 0.1"))

CHANGED = 1e-4
"""A steered tensor must differ from the unsteered one by more than this (max abs difference): every
rounding effect above stays below 1e-5 on the tiny models, every push the tests apply is >= 1e-2."""


def changed(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` differ by more than rounding could explain (see ``CHANGED``)."""
    return float((a - b).abs().max()) > CHANGED

PRINTED_7 = Tol(rel=0.0, abs=5e-8, why=(
    "a reference value written down to 7 decimal places (e.g. a Wilson interval from a statistics table): "
    "it is exact to half a unit in the last place"))

BISECTED = Tol(rel=1e-10, abs=1e-14, why=(
    "a root found by 64 bisection steps on a float64 function (the Clopper-Pearson bound on the binomial "
    "CDF, summed in log space): bisection ends at float64 spacing, the CDF's log-space sum carries ~1e-15 "
    "relative rounding which the slope turns into ~1e-13 relative in the root; 1e-10 leaves room and is "
    "orders below any wrong k, n or confidence level (which moves the bound by > 1e-3)"))
