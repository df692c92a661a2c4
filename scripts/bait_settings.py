"""Honesty steering on the sycophancy bait: the settings tried on the dev split, and the longer-answer check.

The figures behind docs/results.md, "Sycophancy bait: honesty steering" (100 bait items, 50 dev /
50 test). Each setting answers every item of a split (greedy, ``run_bait``) and is compared with the
unsteered answers of the same run (``flip_rate``): of the items the model agreed with unsteered, how
many the setting turned into corrections / rejections / evasions / agreements, overall and among the
items whose fact the model states when asked the neutral question (``knowledge_check``, same number
of new tokens as the answers, as in ``steerwatch quickstart``).

Settings (``--settings``, comma-separated names; default: all of the dev table):

- ``+0.02`` ... ``+0.05``: the built-in honesty vector at its default layers (9-14), that strength;
- ``+0.03@8-13``, ``+0.03@10-15``, ``+0.03@11-14``: the same at other layer windows;
- ``fpfact+0.03``, ``fpfact+0.04``: a honesty vector built from the 52 false-premise and factual
  pairs of the honesty set only (its own train/val split, its own auto layers);
- ``+0.03/syc-0.01``, ``+0.03/syc-0.02``: honesty +0.03 together with the built-in sycophancy vector
  at its default layers (8-13), pushed down.

The dev settings table (about 15 minutes on 2 CPU cores, 3 of them building the honesty,
sycophancy and subset vectors; the built-in ones are cached after the first run):

    python scripts/bait_settings.py --split dev

The 64-new-token check of the chosen setting on both splits (about 10 minutes):

    python scripts/bait_settings.py --split dev,test --settings +0.03 --max-new-tokens 64

Choices were made on the dev split; the test split is only answered with the setting chosen there.
"""
from __future__ import annotations

import argparse
import json

DEV_SETTINGS = ("+0.02", "+0.025", "+0.03", "+0.035", "+0.04", "+0.05", "+0.03@8-13", "+0.03@10-15",
                "+0.03@11-14", "fpfact+0.03", "fpfact+0.04", "+0.03/syc-0.01", "+0.03/syc-0.02")


def parse_setting(name: str) -> tuple[str, float, tuple[int, ...] | None, float]:
    """``name`` -> (honesty vector kind, honesty strength, layers or None, sycophancy strength)."""
    kind = "honesty"
    rest = name
    if rest.startswith("fpfact"):
        kind, rest = "fpfact", rest[len("fpfact"):]
    syc = 0.0
    if "/syc" in rest:
        rest, syc_text = rest.split("/syc")
        syc = float(syc_text)
    layers = None
    if "@" in rest:
        rest, span = rest.split("@")
        lo, hi = (int(x) for x in span.split("-"))
        layers = tuple(range(lo, hi + 1))
    return kind, float(rest), layers, syc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", default="dev", help="bait split(s), comma-separated: dev, test")
    ap.add_argument("--settings", default=",".join(DEV_SETTINGS), help="comma-separated setting names (see above)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=50, help="prompts generated together (the quickstart's 50)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--answers", help="write every answer as JSON Lines here")
    args = ap.parse_args()

    from steerwatch.data import ContrastSet, load_concept
    from steerwatch.evals.bait import flip_rate, knowledge_check, load_bait, run_bait
    from steerwatch.extract.build import build_vector
    from steerwatch.extract.library import builtin_vector
    from steerwatch.models import load_model
    from steerwatch.steer import SteerSpec

    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    parsed = {n: parse_setting(n) for n in names}
    lm = load_model(args.model, progress=False)
    vectors = {"honesty": builtin_vector(lm, "honesty", log=print)[0]}
    if any(p[3] for p in parsed.values()):
        vectors["sycophancy"] = builtin_vector(lm, "sycophancy", log=print)[0]
    if any(p[0] == "fpfact" for p in parsed.values()):
        full = load_concept("honesty")
        subset = [p for p in full.pairs if p.meta.get("format") in ("false_premise", "factual")]
        data = ContrastSet(name="honesty-fpfact", pairs=subset, source="honesty: false_premise + factual pairs",
                           default_method=full.default_method)
        vectors["fpfact"], _ = build_vector(lm, data, progress=False)
        v = vectors["fpfact"]
        print(f"fpfact vector: {len(subset)} pairs ({len(data.train)} train / {len(data.val)} val), "
              f"default layers {v.default_layers[0]}-{v.default_layers[-1]}")
    print(f"honesty default layers {vectors['honesty'].default_layers}"
          + (f", sycophancy {vectors['sycophancy'].default_layers}" if "sycophancy" in vectors else ""))

    settings: list[tuple[str, list]] = [("unsteered", [])]
    for n in names:
        kind, strength, layers, syc = parsed[n]
        specs = [SteerSpec(vectors[kind], strength=strength, layers=layers)]
        if syc:
            specs.append(SteerSpec(vectors["sycophancy"], strength=syc))
        settings.append((n, specs))

    out = open(args.answers, "w", encoding="utf-8") if args.answers else None  # noqa: SIM115
    for split in [s.strip() for s in args.split.split(",") if s.strip()]:
        items = load_bait(split=split)
        rows = run_bait(lm, items, settings=settings, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size)
        know = knowledge_check(lm, items, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
        known = {k["id"] for k in know if k["knows"]}
        base = [r for r in rows if r["setting"] == "unsteered"]
        n_agreed = sum(r["outcome"] == "agreed" for r in base)
        n_agreed_known = sum(r["outcome"] == "agreed" and r["id"] in known for r in base)
        print(f"\n{split} split: {len(items)} items, {n_agreed} agreed unsteered, model knows {len(known)}/"
              f"{len(items)} facts, {n_agreed_known} of the agreements are on known facts "
              f"({args.max_new_tokens} new tokens, batch {args.batch_size})")
        print(f"| setting ({split}) | agreed → corrected | → rejected | → evasive | → agreed | known → corrected |")
        print("|---|---|---|---|---|---|")
        for name, specs in settings[1:]:
            f = flip_rate(rows, baseline="unsteered", setting=name, known=known)
            print(f"| {name} ({'; '.join(s.describe() for s in specs)}) | {f['to_corrected']}/{f['n_agreed_baseline']}"
                  f" | {f['to_rejected']} | {f['to_evasive']} | {f['to_agreed']} | "
                  f"{f['to_corrected_known']}/{f['n_agreed_known']} |")
        if out is not None:
            for r in rows:
                out.write(json.dumps({"split": split, **r}, ensure_ascii=False) + "\n")
            for k in know:
                out.write(json.dumps({"split": split, "setting": "knowledge", **k}, ensure_ascii=False) + "\n")
    if out is not None:
        out.close()


if __name__ == "__main__":
    main()
