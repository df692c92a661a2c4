"""95 % intervals for the numbers a sweep row carries, so a report can say how sure each point is.

- :func:`wilson`: a share of ``n`` yes/no outcomes (answers corrected, answers coherent, capability
  items right). For the mean of values in [0, 1] that are not yes/no (the A/B behaviour probability)
  it is conservative: such a mean's variance is at most ``p (1 - p) / n``.
- :func:`mean_ci95`: mean ± 1.96 standard errors over per-item values (KL per prompt, behaviour
  probability per item, a detector's score per answer).
- :func:`ppl_ci95`: perplexity pooled over texts, a percentile bootstrap over the texts.
- :func:`median_ci95`: the distribution-free interval of a median from two order statistics.

A sweep row stores an interval as ``<metric>_ci95 = [low, high]`` next to the metric; a list, so
the numeric-column scans (plots, tables) never take it for a metric.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
CI_SUFFIX = "_ci95"
BOOTSTRAP_RESAMPLES = 2000


def wilson(p: float, n: int) -> tuple[float, float] | None:
    """The Wilson score interval of a share ``p`` of ``n`` outcomes; None when ``n`` < 1."""
    if n < 1:
        return None
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 / (1 + z2 / n) * math.sqrt(max(p * (1 - p), 0.0) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_ci95(values: Sequence[float]) -> list[float] | None:
    """[mean - 1.96 SE, mean + 1.96 SE] over ``values`` (SE from the sample standard deviation);
    None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return [m - half, m + half]


def ppl_ci95(nlls: Sequence[tuple[float, int]], *, resamples: int = BOOTSTRAP_RESAMPLES,
             seed: int = 0) -> list[float] | None:
    """A 95 % percentile-bootstrap interval of ``exp(sum nll / sum tokens)``, resampling whole texts
    (``nlls``: (total nll, tokens) per text, as ``metrics.text_nll`` returns); None for < 2 texts."""
    import numpy as np

    if len(nlls) < 2:
        return None
    tot = np.array([x for x, _ in nlls], dtype=np.float64)
    cnt = np.array([c for _, c in nlls], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(nlls), size=(resamples, len(nlls)))
    ppl = np.exp(tot[idx].sum(1) / cnt[idx].sum(1))
    lo, hi = np.quantile(ppl, [0.025, 0.975])
    return [float(lo), float(hi)]


def median_ci95(values: Sequence[float]) -> list[float] | None:
    """[x_(j), x_(n+1-j)] (order statistics, 1-based) with the largest j for which
    P(Bin(n, 1/2) < j) <= 2.5 %: covers the median with at least 95 %; None when n < 6."""
    xs = sorted(values)
    n = len(xs)
    cdf, j = 0.0, 0
    while True:  # cdf = P(X < j + 1) after adding P(X = j)
        nxt = cdf + math.comb(n, j) / 2 ** n
        if nxt > 0.025:
            break
        cdf, j = nxt, j + 1
    if j < 1:
        return None
    return [xs[j - 1], xs[n - j]]
