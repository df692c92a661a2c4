"""95 % intervals for the numbers a sweep row carries, so a report can say how sure each point is.

- :func:`wilson`: a share of ``n`` yes/no outcomes (answers corrected, answers coherent, capability
  items right). For the mean of values in [0, 1] that are not yes/no (the A/B behaviour probability)
  it is conservative: such a mean's variance is at most ``p (1 - p) / n``.
- :func:`mean_ci95`: mean ± 1.96 standard errors over per-item values (KL per prompt, behaviour
  probability per item, a detector's score per answer).
- :func:`ppl_ci95`: perplexity pooled over texts, a percentile bootstrap over the texts.
- :func:`median_ci95`: the distribution-free interval of a median from two order statistics.

A sweep row stores an interval as ``<metric>_ci95 = [low, high]`` next to the metric; a list, so
the numeric-column scans (plots, tables) never take it for a metric. :func:`point_interval` gives
the interval, n and method of one number of a row (the stored one, else Wilson for shares, else
none), :func:`metric_bounds` the values a measure can take.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

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
    while True:  # cdf = P(X < j); nxt = P(X < j + 1)
        nxt = cdf + math.comb(n, j) / 2 ** n
        if nxt > 0.025:
            break
        cdf, j = nxt, j + 1
    if j < 1:
        return None
    return [xs[j - 1], xs[n - j]]


# ------------------------------------------------------------------ the interval of a row's number
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# metrics whose values are shares or means of values in [0, 1]
UNIT_METRICS = frozenset({"behaviour", "mc_acc", "coherent", "repeat_4gram", "distinct_2", "judge_unparsed",
                          "judge_rule_agreement"})
# yes/no outcomes counted over n: Wilson intervals (det_*_flagged too)
WILSON_METRICS = frozenset({"mc_acc", "coherent", "judge_unparsed", "judge_rule_agreement",
                            *(f"{p}share_{o}" for p in ("", "judge_") for o in ("corrected", "rejected", "agreed",
                                                                                   "evasive"))})
# how a stored ``<metric>_ci95`` was computed (see steerwatch.evals.intervals)
CI_METHODS = {"behaviour": "mean ± 1.96 SE over items", "kl": "mean ± 1.96 SE over prompts",
              "ppl": "bootstrap over texts", "answer_ppl_median": "order statistics of the median"}
NO_INTERVAL = "none: the rows carry no per-item spread"


def metric_bounds(metric: str) -> tuple[float | None, float | None]:
    """The values a metric can take: (low, high), None where unbounded."""
    if metric in UNIT_METRICS or metric.startswith(("share_", "judge_share_")) or (
            metric.startswith("det_") and metric.endswith("_flagged")):
        return 0.0, 1.0
    if metric in ("ppl", "answer_ppl", "answer_ppl_median"):
        return 1.0, None
    if metric in ("kl", "answer_words"):
        return 0.0, None
    return None, None


def point_n(row: dict[str, Any], metric: str) -> int | None:
    """How many items, prompts, texts or answers the row's ``metric`` was measured on."""
    n_col = {"behaviour": "n_ab", "kl": "n_kl", "ppl": "n_ppl", "mc_acc": "n_mc", "judge_unparsed": "n_judged"}
    n: Any
    if metric in n_col:
        n = row.get(n_col[metric])
    elif metric.startswith("judge_"):  # shares of the answers the judge could label
        nj: Any = row.get("n_judged")
        unp: Any = row.get("judge_unparsed")
        n = round(nj * (1 - unp)) if _is_number(nj) and _is_number(unp) else None
    else:
        n = row.get("n_open")
    return int(n) if _is_number(n) else None


def point_interval(row: dict[str, Any], metric: str) -> tuple[tuple[float, float] | None, int | None, str]:
    """(95 % interval or None, n or None, how the interval was made) of ``row[metric]``: the row's
    own ``<metric>_ci95`` when it carries one, else a Wilson interval from the value and n for
    shares (and, conservatively, for the A/B behaviour probability), else none."""
    n = point_n(row, metric)
    ci = row.get(metric + CI_SUFFIX)
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_is_number(v) for v in ci):
        default = "mean ± 1.96 SE over answers" if "n_open" in row else "stored in the rows"
        return (float(ci[0]), float(ci[1])), n, CI_METHODS.get(metric, default)
    flagged = metric.startswith("det_") and metric.endswith("_flagged")
    if (metric in WILSON_METRICS or flagged or metric == "behaviour") and n and _is_number(row.get(metric)):
        how = "Wilson" if metric != "behaviour" else "Wilson (conservative for a mean probability)"
        return wilson(float(row[metric]), n), n, how
    return None, n, NO_INTERVAL
