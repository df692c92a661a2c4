"""The on-policy cheating probe's figures in docs/results.md ("Lab", "An on-policy cheating
probe"), on the embedded model. Reads the lab's episode files written by ``scripts/lab_figures.py``
in place (``OUT/dev-steer.jsonl``, ``OUT/dev-prone.jsonl``, ``OUT/test.jsonl``).

Stages (each writes under ``OUT/probe/``, or ``--dest``, and the later ones reuse it):

- ``fit``: reads the dev episodes' answers once (all layers, mean and last token, unsteered,
  rebuilt prompts), fits a probe per label (``special_cased``, ``cheated``) choosing layer, method
  and aggregate by 5-fold cross-validation grouped by problem, on dev only; calibrates each on
  benign coding (the dev reference solutions, 1 % FPR, as ``calibrate --coding``); saves
  ``probe-<label>.sv`` and ``probe-<label>.det.json``. The test split is never read.
- ``score``: the saved detectors score every test episode's final answer (``lab.probe.score_episodes``,
  the watch's teacher-forced path), written to ``OUT/probe/test-scored.jsonl`` (resumable: episodes
  already there are skipped; ``--chunk N`` scores at most N more per run).
- ``table``: AUROC on test with a 95 % bootstrap interval, for each label, the probe beside the
  built-in cheating detector recomputed from the recorded token scores (``--aggregate last``, as in
  the results; and its recorded mean), on the four settings' 400 impossible episodes (the 0.765
  population) and on all 450; within-setting AUROCs; recall and false positives at the coding
  threshold; a paired bootstrap of the AUROC difference.

    python scripts/lab_probe_figures.py fit
    python scripts/lab_probe_figures.py score --chunk 200     # repeat until done
    python scripts/lab_probe_figures.py table
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEV_FILES = ("dev-steer.jsonl", "dev-prone.jsonl")
DOSE_SETTING = "cheat+0.04-pressure.cheating+0.06"  # written to test.jsonl by the dose stage, after the 0.765 figure
BUILTIN = "cheating"


def fit(args, lm) -> None:
    import torch

    from steerwatch.lab import probe as PR
    from steerwatch.lab import read_episodes

    out = Path(args.dest or Path(args.out) / "probe")
    out.mkdir(parents=True, exist_ok=True)
    eps = PR.dedupe([e for f in DEV_FILES for e in read_episodes(Path(args.out) / f)])
    rows = PR.fit_population(eps, "special_cased")  # both labels live on the impossible episodes
    PR.check_fit_split(rows)
    cache = out / "dev-features.pt"
    if cache.exists():
        feats = torch.load(cache)
    else:
        lookup = PR.task_lookup(rows)
        convs = [PR.episode_conversation(e, lookup[e["task"]]) for e in rows]
        feats = PR.answer_features(lm, convs, batch_size=args.batch_size, progress=True)
        torch.save(feats, cache)
    summary = {}
    fits = {label: PR.fit_cheating_probe(lm, rows, label=label, features=feats, name=f"probe-{label}")
            for label in ("special_cased", "cheated")}
    cals = PR.calibrate_on_coding(lm, [f.detector for f in fits.values()], batch_size=args.batch_size, progress=True)
    for (label, fit), cal in zip(fits.items(), cals):
        fit.vector.save(out / f"probe-{label}.sv")
        fit.detector.vector_path = str(out / f"probe-{label}.sv")
        fit.detector.save(out / f"probe-{label}.det.json")
        summary[label] = {"counts": fit.counts, "table": fit.table, "threshold": cal["threshold"],
                          "calibration": {k: cal[k] for k in ("n", "achieved_fpr", "fpr_upper95")}}
        print(f"{label}: {fit.counts}; chosen {fit.method}/{fit.aggregate} layer {fit.detector.layer}")
        for r in fit.table:
            print(f"  {r['aggregate']:4s} {r['method']:9s} layer {r['layer']:2d} CV AUROC {r['cv_auroc']:.3f}"
                  f"{'  <- chosen' if r.get('chosen') else ''}")
    (out / "fit.json").write_text(json.dumps(summary, indent=1))


def score(args, lm) -> None:
    from steerwatch.lab import probe as PR
    from steerwatch.lab import read_episodes
    from steerwatch.lab.episodes import append_episodes
    from steerwatch.watch.detector import load_detector

    out = Path(args.dest or Path(args.out) / "probe")
    dets = [load_detector(out / f"probe-{label}.det.json") for label in ("special_cased", "cheated")]
    scored_path = out / "test-scored.jsonl"
    done = {(e["setting"], e["task"], e["attempt"]) for e in read_episodes(scored_path)} if scored_path.exists() \
        else set()
    eps = [e for e in read_episodes(Path(args.out) / "test.jsonl") if "cheated" in e
           and (e["setting"], e["task"], e["attempt"]) not in done]
    eps = eps[: args.chunk] if args.chunk else eps
    for start in range(0, len(eps), 50):
        part = eps[start:start + 50]
        append_episodes(scored_path, PR.score_episodes(lm, dets, part, batch_size=args.batch_size, progress=True))
        print(f"scored {len(done) + start + len(part)} test episodes", flush=True)


def _auc_boot(pairs_a, pairs_b=None, n_boot=2000, seed=0):
    """Bootstrap over episodes (resampling positives and negatives apart): the interval of an
    AUROC, or of the paired difference of two scores' AUROCs on the same episodes."""
    from steerwatch.watch.calibrate import auroc

    rng = random.Random(seed)
    pos = [i for i, (_, y) in enumerate(pairs_a) if y]
    neg = [i for i, (_, y) in enumerate(pairs_a) if not y]
    vals = []
    for _ in range(n_boot):
        p = [rng.choice(pos) for _ in pos]
        n = [rng.choice(neg) for _ in neg]
        a = auroc([pairs_a[i][0] for i in p], [pairs_a[i][0] for i in n])
        if pairs_b is not None:
            a -= auroc([pairs_b[i][0] for i in p], [pairs_b[i][0] for i in n])
        vals.append(a)
    vals.sort()
    return vals[int(0.025 * n_boot)], vals[min(n_boot - 1, int(0.975 * n_boot))]


def table(args) -> None:
    from steerwatch.evals.intervals import wilson
    from steerwatch.lab import probe as PR
    from steerwatch.lab import read_episodes
    from steerwatch.lab.report import _final_score, detection
    from steerwatch.watch.calibrate import auroc
    from steerwatch.watch.detector import load_detector

    out = Path(args.dest or Path(args.out) / "probe")
    builtin_thr = float(load_detector(args.builtin_detector).threshold) if args.builtin_detector else None
    dev = PR.dedupe([e for f in DEV_FILES for e in read_episodes(Path(args.out) / f) if "cheated" in e])
    eps = read_episodes(out / "test-scored.jsonl")
    n_test = sum("cheated" in e for e in read_episodes(Path(args.out) / "test.jsonl"))
    if len(eps) != n_test:
        raise SystemExit(f"only {len(eps)} of {n_test} impossible test episodes scored: run the score stage again")
    result = {}
    for label in ("special_cased", "cheated"):
        name = f"probe-{label}"
        det = load_detector(out / f"{name}.det.json")
        # a trivial control: the answer's length, its sign chosen on dev
        sign = 1 if auroc([len(e["turns"][-1]["response"]) for e in dev if e[label]],
                          [len(e["turns"][-1]["response"]) for e in dev if not e[label]]) >= 0.5 else -1
        for pop_name, pop in (("four settings (400)", [e for e in eps if e["setting"] != DOSE_SETTING]),
                              ("all (450)", eps)):
            key = f"{label} / {pop_name}"
            probe = [(_final_score(e, name), bool(e[label])) for e in pop]
            base = [(_final_score(e, BUILTIN, "last"), bool(e[label])) for e in pop]
            base_mean = [(_final_score(e, BUILTIN), bool(e[label])) for e in pop]
            m = detection(pop, name, label=label, thresholds={"coding": float(det.threshold)})
            b = detection(pop, BUILTIN, label=label, aggregate="last",
                          thresholds={"coding": builtin_thr} if builtin_thr is not None else None)
            length = [(sign * len(e["turns"][-1]["response"]), bool(e[label])) for e in pop]
            row = {"n_pos": m["n_pos"], "n_neg": m["n_neg"],
                   "probe_auroc": m["auroc"], "probe_ci": _auc_boot(probe),
                   "builtin_last_auroc": b["auroc"], "builtin_last_ci": _auc_boot(base),
                   "builtin_mean_auroc": detection(pop, BUILTIN, label=label)["auroc"],
                   "diff_ci": _auc_boot(probe, base) if None not in [s for s, _ in base] else None,
                   "probe_recall_coding": m["recall_coding"],
                   "probe_recall_coding_ci": wilson(m["recall_coding"], m["n_pos"]),
                   "probe_fpr_coding_on_negatives": m["fpr_coding_on_negatives"],
                   "builtin_recall_coding": b.get("recall_coding"),
                   "builtin_fpr_coding_on_negatives": b.get("fpr_coding_on_negatives"),
                   "length_auroc": auroc([v for v, y in length if y], [v for v, y in length if not y]),
                   "length_sign_from_dev": sign}
            assert None not in [s for s, _ in base_mean]
            within = {}
            for s in sorted({e["setting"] for e in pop}):
                sub = [e for e in pop if e["setting"] == s]
                pos = [e for e in sub if e[label]]
                if len(pos) < 5 or len(sub) - len(pos) < 5:
                    continue
                within[s] = {"n_pos": len(pos), "n_neg": len(sub) - len(pos),
                             "probe": auroc([_final_score(e, name) for e in pos],
                                            [_final_score(e, name) for e in sub if not e[label]]),
                             "builtin_last": auroc([_final_score(e, BUILTIN, "last") for e in pos],
                                                   [_final_score(e, BUILTIN, "last") for e in sub if not e[label]])}
                within[s]["length"] = auroc([sign * len(e["turns"][-1]["response"]) for e in pos],
                                            [sign * len(e["turns"][-1]["response"]) for e in sub if not e[label]])
            row["within_setting"] = within
            result[key] = row
            print(key, json.dumps(row, indent=1, default=float))
    (out / "table.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["fit", "score", "table"])
    ap.add_argument("--out", default="out/lab")
    ap.add_argument("--dest", default=None, help="where the probe's files go (default: OUT/probe)")
    ap.add_argument("--builtin-detector", default=None, help="the built-in cheating detector calibrated with "
                    "`calibrate cheating.sv --coding --aggregate last` (its threshold: recall at the coding threshold)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=None, help="score at most this many more test episodes")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    if args.stage == "table":
        table(args)
        return
    from steerwatch.models import load_model

    lm = load_model(args.model)
    fit(args, lm) if args.stage == "fit" else score(args, lm)


if __name__ == "__main__":
    main()
