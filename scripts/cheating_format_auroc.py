"""Why does mean_diff read cheating poorly? Validation AUROC per text format.

The figure behind docs/results.md, "Concept library" ("on cheating's val split, per format at
layer 14, agentic reports separate at AUROC 0.94 ..."): the built-in cheating vector (160 pairs,
128 train / 32 val) on the embedded model; its val pairs recorded as ``steerwatch extract`` records
them (mean over the completion tokens) at one layer (default 14, mean_diff's best), projected on
the steering direction (mean_diff) and on the read direction (lda), and scored per
``meta.format`` (agentic, code, chat) and pooled: AUROC and paired accuracy. Val split only.

    python scripts/cheating_format_auroc.py [--concept cheating] [--layer 14]

Under a minute on 2 CPU cores once the built-in vector is cached (25 s measured; building it first takes
a few minutes more).
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concept", default="cheating")
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    from steerwatch.chat import encode_example
    from steerwatch.data import load_concept
    from steerwatch.extract.library import builtin_vector
    from steerwatch.extract.metrics import separation
    from steerwatch.models import load_model
    from steerwatch.record import record

    lm = load_model(args.model, progress=False)
    vec, _, _ = builtin_vector(lm, args.concept, log=print)
    val = load_concept(args.concept).val
    examples = []
    for p in val:
        examples.append(encode_example(lm.tokenizer, prompt=p.prompt, completion=p.positive, system=p.system))
        examples.append(encode_example(lm.tokenizer, prompt=p.prompt, completion=p.negative, system=p.system))
    feats = record(lm, examples, layers=[args.layer], read="completion_mean", batch_size=8)[:, 0]
    pos, neg = feats[0::2], feats[1::2]
    formats = sorted({p.meta.get("format", "?") for p in val})
    directions = {vec.method: vec.direction(args.layer)}
    if vec.read_method:
        directions[vec.read_method] = vec.read_direction(args.layer)
    rows = []
    for method, d in directions.items():
        for fmt in [*formats, "all"]:
            idx = [i for i, p in enumerate(val) if fmt == "all" or p.meta.get("format", "?") == fmt]
            sep = separation(pos[idx] @ d, neg[idx] @ d)
            rows.append({"direction": method, "format": fmt, "n_pairs": len(idx), "auroc": sep["auroc"],
                         "paired_acc": sep["paired_acc"]})
    print(f"{args.concept} val split, layer {args.layer}")
    print("| direction | format | pairs | AUROC | paired acc |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['direction']} | {r['format']} | {r['n_pairs']} | {r['auroc']:.2f} | {r['paired_acc']:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
