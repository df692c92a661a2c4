"""Why two scikit-learn uses take a shortcut: timings side by side, on synthetic data of the
embedded model's width (no model loaded).

    python bench/bench_methods.py [--n 160] [--d 896] [--rounds 5] [--boot 1000]

1. Shrinkage LDA: ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.5).fit`` vs.
   ``steerwatch.extract.methods.lda`` (scikit-learn's shrunk covariance, then one Cholesky
   solve instead of LDA's least-squares SVD). Same direction (tests/test_sklearn_maths.py).
2. Bootstrap AUROC: one ``roc_auc_score`` call per resample vs. ``auroc_resampled`` (scipy's
   Mann-Whitney U over all resamples at once). Same values (same test file).

Each round runs both settings back to back (order alternated); the ratio of median times is
printed.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=160, help="pairs (LDA) and scores per class (AUROC: n / 4)")
    ap.add_argument("--d", type=int, default=896)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()

    import numpy as np
    import torch
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.metrics import roc_auc_score

    from steerwatch.extract.methods import LDA_SHRINKAGE, lda
    from steerwatch.watch.calibrate import auroc_resampled

    g = torch.Generator().manual_seed(0)
    pos = torch.randn(args.n, args.d, generator=g) + 0.3
    neg = torch.randn(args.n, args.d, generator=g)
    x = torch.cat([pos, neg]).double().numpy()
    y = np.r_[np.ones(args.n), np.zeros(args.n)]
    k = max(args.n // 4, 2)
    rng = np.random.default_rng(0)
    bp, bn = rng.normal(0.5, 1, (args.boot, k)).round(2), rng.normal(0, 1, (args.boot, k)).round(2)
    yk = np.r_[np.ones(k), np.zeros(k)]

    pairs = {
        "LDA": {"LinearDiscriminantAnalysis.fit": lambda: LinearDiscriminantAnalysis(
                    solver="lsqr", shrinkage=LDA_SHRINKAGE).fit(x, y),
                "methods.lda": lambda: lda(pos, neg)},
        f"bootstrap AUROC ({args.boot} x {k}+{k})": {
                "roc_auc_score per resample": lambda: [roc_auc_score(yk, np.r_[p, n]) for p, n in zip(bp, bn)],
                "auroc_resampled": lambda: auroc_resampled(bp, bn)},
    }
    print(f"n {args.n} · d {args.d} · {args.rounds} rounds · torch threads {torch.get_num_threads()}")
    for title, fns in pairs.items():
        for f in fns.values():
            f()  # warm-up (imports, caches)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for r in range(args.rounds):
            for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t = time.perf_counter()
                fns[name]()
                times[name].append(time.perf_counter() - t)
        (a, ta), (b, tb) = ((name, statistics.median(v)) for name, v in times.items())
        print(f"{title}: {a} {ta * 1e3:.1f} ms · {b} {tb * 1e3:.1f} ms · ratio {ta / tb:.1f}x")


if __name__ == "__main__":
    main()
