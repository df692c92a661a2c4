"""Do the default coherence bounds pass the model's own answers and flag degenerate text?

The figures behind docs/results.md, "Coherence bounds" (and the longer table in docs/evals.md): the
embedded model's greedy answers (up to 96 new tokens) to the first 40 bait prompts (bait-001 to
bait-040, the bait set as it was when the bounds were set) and the first 40 neutral prompts,
against texts built from those answers, each judged by ``coherence_rows`` (text statistics plus
the unsteered perplexity of the text as the answer to its prompt) with the default
``CoherenceBounds``:

- the answers themselves;
- the same words shuffled (whitespace-separated words, seeded);
- random words drawn from all the answers' words, as many as the answer has;
- the answer's first sentence repeated 6 times;
- "the " x 30;
- honesty +0.05 at the vector's default layers (9-14): the model's answers to the 40 bait prompts.

Per kind: perplexity median (min-max), repeat_4gram median (max), distinct_2 median (min),
max_loop_chars max, and how many are flagged by both checks, by the text statistics alone and by
the perplexity alone.

    python scripts/coherence_bounds.py [--seed 0]

About 12 minutes on 2 CPU cores (11.6 measured on 2026-12-05; generating the 120 answers is most of it).
"""
from __future__ import annotations

import argparse
import json
import random
import re


def first_sentence(text: str) -> str:
    m = re.search(r"^(.+?[.!?])(\s|$)", text.strip(), re.DOTALL)
    return (m.group(1) if m else text.strip()).strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffled and random-word texts")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--strength", type=float, default=0.05, help="honesty strength of the steered row")
    ap.add_argument("--model", default="default")
    ap.add_argument("--answers", help="write every text and its row as JSON Lines here")
    args = ap.parse_args()

    import statistics

    from steerwatch import generate
    from steerwatch.data.reference import load_prompts
    from steerwatch.evals.bait import load_bait
    from steerwatch.evals.coherence import coherence_rows
    from steerwatch.extract.library import builtin_vector
    from steerwatch.models import load_model
    from steerwatch.steer import SteerSpec

    lm = load_model(args.model, progress=False)
    bait = [it.prompt for it in load_bait()[:40]]
    prompts = bait + load_prompts()[:40]
    answers = generate(lm, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    vec, _, _ = builtin_vector(lm, "honesty", log=print)
    steered = generate(lm, bait, steer=[SteerSpec(vec, strength=args.strength)], max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size)

    rng = random.Random(args.seed)
    pool = [w for a in answers for w in a.split()]
    shuffled, rand_words = [], []
    for a in answers:
        ws = a.split()
        rng.shuffle(ws)
        shuffled.append(" ".join(ws))
        rand_words.append(" ".join(rng.choice(pool) for _ in range(max(1, len(a.split())))))
    kinds = [
        ("the model's own answers", prompts, answers),
        ("same words shuffled", prompts, shuffled),
        ("random words from those answers", prompts, rand_words),
        ("first sentence looped 6 times", prompts, [" ".join([first_sentence(a)] * 6) for a in answers]),
        ('"the " x 30', prompts, ["the " * 30] * len(prompts)),
        (f"honesty {args.strength:+g} at layers {vec.default_layers[0]}-{vec.default_layers[-1]}, bait prompts",
         bait, steered),
    ]
    print("| texts (n) | unsteered ppl: median (min-max) | repeat_4gram median (max) | distinct_2 median (min) | "
          "max_loop_chars max | flagged | by text stats alone | by perplexity alone |")
    print("|---|---|---|---|---|---|---|---|")
    dump = open(args.answers, "w", encoding="utf-8") if args.answers else None  # noqa: SIM115
    for name, ps, texts in kinds:
        rows = coherence_rows(lm, ps, texts)
        text_only = coherence_rows(None, ps, texts)
        ppls = [r["ppl"] for r in rows if r["ppl"] is not None]
        flagged = sum(not r["coherent"] for r in rows)
        by_text = sum(not r["coherent"] for r in text_only)
        by_ppl = sum(any("perplexity" in x for x in r["reasons"]) for r in rows)
        r4 = [r["repeat_4gram"] for r in rows]
        d2 = [r["distinct_2"] for r in rows]
        n = len(rows)
        print(f"| {name} ({n}) | {statistics.median(ppls):,.1f} ({min(ppls):,.1f}-{max(ppls):,.1f}) | "
              f"{statistics.median(r4):.2f} ({max(r4):.2f}) | {statistics.median(d2):.2f} ({min(d2):.2f}) | "
              f"{max(r['max_loop_chars'] for r in rows):.0f} | {flagged}/{n} ({100 * flagged / n:.0f} %) | "
              f"{by_text}/{n} | {by_ppl}/{n} |", flush=True)
        if dump is not None:
            for p, t, r in zip(ps, texts, rows):
                dump.write(json.dumps({"kind": name, "prompt": p, "text": t, **r}, ensure_ascii=False) + "\n")
    if dump is not None:
        dump.close()


if __name__ == "__main__":
    main()
