"""Capability scoring on the embedded model: lettered options vs. cloze scoring.

The figures behind docs/results.md, "Capability scoring" (why ``--capability-scoring`` defaults to
cloze): on the first ``--n`` items of the built-in capability set (``data/reference/capability_mc``,
four options each), unsteered,

- *letters*: the options shown as (A)-(D), the answer the most probable letter after "(" (as
  ``mc_correct(scoring="letters")``), with the mean probability of each letter and the share of
  keys at each letter;
- the same with an instruction line after the options ("Answer with the letter of the correct
  option."), with that line as a system prompt, and with the assistant's answer opened with
  "The answer is (" instead of "(";
- *cyclic orders*: the options asked in their four cyclic rotations; accuracy per rotation, and the
  accuracy of the option with the highest probability averaged over the rotations (which cancels a
  fixed letter preference);
- *cloze*: the option whose text is most likely as the reply (``mc_correct(scoring="cloze")``), on
  the first ``--n`` items and on the first ``--n-cloze`` items.

    python scripts/capability_scoring.py [--n 60] [--n-cloze 100]

About 6 minutes on 2 CPU cores (5.5 measured on 2026-12-05).
"""
from __future__ import annotations

import argparse
import json

INSTRUCTION = "Answer with the letter of the correct option."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="items for the letter variants and the first cloze figure")
    ap.add_argument("--n-cloze", type=int, default=100, help="items for the second cloze figure")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    import torch

    from steerwatch.chat import encode_example
    from steerwatch.data.reference import MCItem, load_mc
    from steerwatch.evals.metrics import letter_probs, mc_correct
    from steerwatch.models import load_model

    lm = load_model(args.model, progress=False)
    items = load_mc()[: args.n]
    out: dict = {"n": len(items), "key_share": {x: sum(it.letters[it.answer] == x for it in items) / len(items)
                                                  for x in "ABCD"}}

    def acc(probs, its) -> float:
        return sum(max(range(len(p)), key=p.__getitem__) == it.answer for p, it in zip(probs, its)) / len(its)

    probs = letter_probs(lm, [it.render() for it in items], [it.letters for it in items])
    out["letters"] = acc(probs, items)
    out["letters_mean_prob"] = {x: sum(p[i] for p in probs) / len(probs) for i, x in enumerate("ABCD")}
    out["letters_min_p_B"] = min(p[1] for p in probs)
    probs = letter_probs(lm, [f"{it.render()}\n\n{INSTRUCTION}" for it in items], [it.letters for it in items])
    out["letters_instruction_line"] = acc(probs, items)
    probs = letter_probs(lm, [it.render() for it in items], [it.letters for it in items], system=INSTRUCTION)
    out["letters_instruction_system"] = acc(probs, items)

    # "The answer is (" as the opening of the assistant's reply; the next token is the letter
    letter_ids = [lm.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in "ABCD"]
    prefixed = []
    with torch.inference_mode():
        for it in items:
            enc = encode_example(lm.tokenizer, prompt=it.render(), completion="The answer is (")
            logits = lm.model(input_ids=torch.tensor([enc.ids], device=lm.device)).logits[0, -1].float().cpu()
            prefixed.append(torch.softmax(logits[letter_ids[: len(it.choices)]].double(), -1).tolist())
    out["letters_answer_is_prefix"] = acc(prefixed, items)

    # the four cyclic orders of the options
    per_order, content_probs = [], [[0.0] * len(it.choices) for it in items]
    for k in range(4):
        rotated = []
        for it in items:
            n = len(it.choices)
            perm = [(j + k) % n for j in range(n)]  # position j shows original option perm[j]
            rotated.append((MCItem(id=it.id, question=it.question, choices=tuple(it.choices[i] for i in perm),
                                   answer=perm.index(it.answer)), perm))
        probs = letter_probs(lm, [r.render() for r, _ in rotated], [r.letters for r, _ in rotated])
        per_order.append(acc(probs, [r for r, _ in rotated]))
        for t, ((_, perm), p) in enumerate(zip(rotated, probs)):
            for j, orig in enumerate(perm):
                content_probs[t][orig] += p[j] / 4
    out["letters_cyclic_per_order"] = per_order
    out["letters_cyclic_mean_accuracy"] = sum(per_order) / len(per_order)
    out["letters_cyclic_averaged_probs"] = acc(content_probs, items)

    out["cloze"] = sum(mc_correct(lm, items, scoring="cloze")) / len(items)
    more = load_mc()[: args.n_cloze]
    out[f"cloze_first_{len(more)}"] = sum(mc_correct(lm, more, scoring="cloze")) / len(more)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
