"""Reading with lda, steering with mean_diff: how the extraction methods separate and steer cheating and
conscientiousness.

The figures behind docs/results.md, "The lda method reaches the target for both" and "Reading with
lda, steering with mean_diff", on the embedded model:

1. *Separation* (``--part auroc``). Each concept's 160 pairs are recorded once (mean over the
   completion tokens, every layer, as ``steerwatch extract`` records them); per layer a direction is
   fit on the train pairs with mean_diff, lda at shrinkage 0.1/0.3/0.5/0.7/0.9 (0.5 is the library's
   fixed default) and the logistic probe, and scored on the val pairs (AUROC, paired accuracy).
   Prints the best layer of each method, lda's AUROC at mean_diff's best layer, and the cosine
   between the lda and mean_diff directions at layers 9-16.
2. *Steering* (``--part steer``). Each vector at its own default layers (mean_diff: the built-in
   vector's; lda: the window ``--layers auto`` would choose from the lda validation AUROCs) and
   strength: on the 50 ``eval/cheating_code`` tasks, the per-token log-likelihood margin of the
   genuine solution over the test-special-casing one (``completion_nll``), steered minus unsteered,
   and how many pairs moved toward the genuine one; and the mean next-token KL on the first 40
   neutral prompts (``next_token_kl``).
3. *Detection* (``--part detect``). Each direction read at its best validation layer over the
   labelled coding answers (``eval/cheating_code``, 50/50; mean over the answer's tokens, detector
   sign by concept: cheating +1, conscientiousness -1), AUROC.

    python scripts/lda_vs_mean_diff.py                      # all three parts
    python scripts/lda_vs_mean_diff.py --part auroc         # only the separation table

Slow: all parts took 62 minutes on 2 CPU cores shared with another job running the embedded tests
(2026-12-05), most of it recording the 160 pairs of each concept, here and, on a first run, again
to build the built-in cheating and conscientiousness vectors (cached after that). Run one part at
a time when short of time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

CONCEPTS = ("cheating", "conscientiousness")
SHRINKAGES = (0.1, 0.3, 0.5, 0.7, 0.9)
STRENGTHS = {"cheating": (-0.02, -0.04), "conscientiousness": (0.02, 0.04)}  # toward genuine / careful


def separation_table(lm, concept: str) -> dict:
    """Per-layer val AUROC of each method on the concept's own train/val split."""
    from steerwatch.chat import encode_example
    from steerwatch.data import load_concept
    from steerwatch.extract.methods import extract_direction, lda
    from steerwatch.extract.metrics import separation
    from steerwatch.record import record

    data = load_concept(concept)
    train, val = data.train, data.val
    examples = []
    for p in train + val:  # pos, neg interleaved, as build_vector records them
        examples.append(encode_example(lm.tokenizer, prompt=p.prompt, completion=p.positive, system=p.system))
        examples.append(encode_example(lm.tokenizer, prompt=p.prompt, completion=p.negative, system=p.system))
    layers = list(range(lm.n_layers))
    feats = record(lm, examples, layers=layers, read="completion_mean", batch_size=8)
    pos, neg = feats[0::2], feats[1::2]
    nt = len(train)
    fits = {"mean_diff": lambda p, n: extract_direction("mean_diff", p, n),
            "logistic": lambda p, n: extract_direction("logistic", p, n)}
    for s in SHRINKAGES:
        fits[f"lda{s:g}"] = lambda p, n, s=s: lda(p.float(), n.float(), shrinkage=s)
    per_layer: dict[str, list[dict]] = {m: [] for m in fits}
    dirs: dict[str, dict[int, object]] = {m: {} for m in fits}
    for layer in layers:
        for m, fit in fits.items():
            d = fit(pos[:nt, layer], neg[:nt, layer])
            dirs[m][layer] = d
            sep = separation(pos[nt:, layer] @ d, neg[nt:, layer] @ d)
            per_layer[m].append({"layer": layer, "auroc": sep["auroc"], "paired_acc": sep["paired_acc"]})
    best = {m: max(rows, key=lambda r: (round(r["auroc"], 3), r["layer"])) for m, rows in per_layer.items()}
    md_layer = best["mean_diff"]["layer"]
    cos = [float(dirs["lda0.5"][la] @ dirs["mean_diff"][la]) for la in range(9, 17)]
    return {"concept": concept, "n_train": nt, "n_val": len(val), "best": best,
            "lda_at_mean_diff_layer": per_layer["lda0.5"][md_layer],
            "cosine_lda_mean_diff_9_16": [min(cos), max(cos)], "per_layer": per_layer}


def lda_steering_vector(vec):
    """The built-in vector with its lda read directions as steering directions, at the layer window
    ``--layers auto`` picks from their validation AUROCs (what ``extract --method lda`` would build)."""
    from steerwatch.extract.build import LayerRow, choose_layers, default_window

    rows = [LayerRow(layer=la, auroc=r["auroc"], paired_acc=r.get("paired_acc", 0.0),
                     cohens_d=r.get("cohens_d", 0.0), norm=vec.norm(la))
            for la, r in sorted(vec.read_validation.items())]
    total = vec.n_model_layers or len(vec.layers)
    window = choose_layers(rows, total, k=default_window(total))
    return dataclasses.replace(vec, directions=dict(vec.read_directions), method="lda", default_layers=window,
                               validation=dict(vec.read_validation), read_directions={}, read_method=None,
                               read_validation={})


def steering_table(lm, vectors: dict) -> list[dict]:
    from steerwatch.data.evalsets import load_eval_set
    from steerwatch.data.reference import load_prompts
    from steerwatch.evals.metrics import completion_nll, next_token_kl
    from steerwatch.steer import SteerSpec

    by_pair: dict[str, dict[int, object]] = {}
    for c in load_eval_set("cheating_code"):
        by_pair.setdefault(c.meta["pair"], {})[c.label] = c
    pairs = [by_pair[k] for k in sorted(by_pair)]
    prompts = [p[0].messages[0]["content"] for p in pairs]
    genuine = [p[0].messages[1]["content"] for p in pairs]
    hack = [p[1].messages[1]["content"] for p in pairs]
    neutral = load_prompts()[:40]

    def margins(steer):
        g = completion_nll(lm, prompts, genuine, steer=steer)
        h = completion_nll(lm, prompts, hack, steer=steer)
        return [(-a / n) - (-b / m) for (a, n), (b, m) in zip(g, h)]

    base = margins(None)
    rows = []
    for concept in CONCEPTS:
        for method in ("mean_diff", "lda"):
            vec = vectors[(concept, method)]
            for s in STRENGTHS[concept]:
                spec = [SteerSpec(vec, strength=s)]
                m = margins(spec)
                kl = next_token_kl(lm, neutral, steer=spec)
                rows.append({"vector": f"{concept} {method}", "layers": vec.default_layers, "strength": s,
                             "margin_shift": sum(a - b for a, b in zip(m, base)) / len(base),
                             "moved_toward_genuine": sum(a > b for a, b in zip(m, base)), "n_pairs": len(base),
                             "kl": sum(kl) / len(kl)})
                r = rows[-1]
                print(f"| {r['vector']} | {vec.default_layers[0]}-{vec.default_layers[-1]} | {s:+g} | "
                      f"{r['margin_shift']:+.3f} | {r['moved_toward_genuine']}/{len(base)} | {r['kl']:.3f} |",
                      flush=True)
    return rows


def detection_table(lm, builtin: dict) -> list[dict]:
    from steerwatch.data.evalsets import load_eval_set
    from steerwatch.watch.calibrate import auroc
    from steerwatch.watch.detector import Detector
    from steerwatch.watch.score import score_conversations

    convs = load_eval_set("cheating_code")
    dets = []
    for concept in CONCEPTS:
        vec = builtin[concept]
        plain = dataclasses.replace(vec, read_directions={}, read_method=None, read_validation={})
        dets.append(Detector.from_vector(vec, name=f"{concept} lda"))
        dets.append(Detector.from_vector(plain, name=f"{concept} mean_diff", layer=plain.best_layer()))
    scored = score_conversations(lm, convs, dets, batch_size=4)
    labels = [c.label for c in convs]
    rows = []
    for d in dets:
        pos = [s.response_score(d.name) for s, y in zip(scored, labels) if y == 1]
        neg = [s.response_score(d.name) for s, y in zip(scored, labels) if y == 0]
        rows.append({"detector": d.name, "layer": d.layer, "sign": d.sign, "auroc": auroc(pos, neg),
                     "n_pos": len(pos), "n_neg": len(neg)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=("all", "auroc", "steer", "detect"), default="all")
    ap.add_argument("--model", default="default")
    ap.add_argument("--json", help="also write every number (per-layer tables included) to this file")
    args = ap.parse_args()

    from steerwatch.extract.library import builtin_vector
    from steerwatch.models import load_model

    lm = load_model(args.model, progress=False)
    result: dict = {}
    if args.part in ("all", "auroc"):
        print("| concept | mean_diff | lda (0.5) | lda at mean_diff's layer | lda shrinkage "
              + " / ".join(f"{s:g}" for s in SHRINKAGES if s != 0.5) + " | logistic | lda paired acc | "
              "cos(lda, mean_diff) L9-16 |")
        print("|---|---|---|---|---|---|---|---|")
        result["auroc"] = []
        for concept in CONCEPTS:
            t = separation_table(lm, concept)
            result["auroc"].append(t)
            b = t["best"]
            others = " / ".join(f"{b[f'lda{s:g}']['auroc']:.3f}" for s in SHRINKAGES if s != 0.5)
            print(f"| {concept} ({t['n_train']}/{t['n_val']}) | {b['mean_diff']['auroc']:.3f} "
                  f"(L{b['mean_diff']['layer']}) | {b['lda0.5']['auroc']:.3f} (L{b['lda0.5']['layer']}) | "
                  f"{t['lda_at_mean_diff_layer']['auroc']:.3f} | {others} | {b['logistic']['auroc']:.3f} "
                  f"(L{b['logistic']['layer']}) | {b['lda0.5']['paired_acc']:.2f} | "
                  f"{t['cosine_lda_mean_diff_9_16'][0]:.2f}-{t['cosine_lda_mean_diff_9_16'][1]:.2f} |", flush=True)
    builtin = {}
    if args.part in ("all", "steer", "detect"):
        builtin = {c: builtin_vector(lm, c, log=print)[0] for c in CONCEPTS}
    if args.part in ("all", "steer"):
        vectors = {}
        for c in CONCEPTS:
            vectors[(c, "mean_diff")] = builtin[c]
            vectors[(c, "lda")] = lda_steering_vector(builtin[c])
        print("\n| vector | layers | strength | margin shift (nats/token) | pairs moved toward genuine | KL |")
        print("|---|---|---|---|---|---|")
        result["steer"] = steering_table(lm, vectors)
    if args.part in ("all", "detect"):
        result["detect"] = detection_table(lm, builtin)
        print("\n| detector (cheating_code, mean over answer tokens) | layer | sign | AUROC |")
        print("|---|---|---|---|")
        for r in result["detect"]:
            print(f"| {r['detector']} | {r['layer']} | {r['sign']:+d} | {r['auroc']:.3f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1, default=float)


if __name__ == "__main__":
    main()
