"""Issue 17 item 2 for conscientiousness, judged on the lab (item 5): an optimised (BiPO or
few-shot) vector trained on the model's *own* dev answers, then steered against special-casing
by ``scripts/lab_figures.py dev-steer --onpolicy``.

Preference pairs come from a lab episodes file (dev split, single turn): on each impossible task,
the answer of ``--special`` (a setting whose answer special-cased the tests) against the answer of
each ``--general`` setting that did not, when both saw the same prompt (same instruction,
demonstrations and system prompt; the steering differs, the text the model read does not). The
special-cased answer is the pair's positive side (concept ``cheating``: the vector points to
special-casing, so the lab steers with negative strengths). The last ``--val-problems`` problems'
pairs are the validation split (early stopping); no test-split episode is read.

    python scripts/lab_optimised.py out/lab/dev-prone.jsonl --special cheat+0.04-pressure \
        --general cheat+0.04-pressure.cons_lda+0.04,cheat+0.04-pressure.cons+0.04 \
        --method bipo -o out/lab/onpolicy-bipo.sv
    python scripts/lab_optimised.py ... --pairs-only      # count the pairs, load no model

The model is frozen; only the vector is trained (``steerwatch.extract.optimise.optimise_vector``),
at the layers the lab steers (10-15), resumable from ``<out>.ckpt``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

LAYERS = tuple(range(10, 16))


def preference_pairs(episodes, special: str, general: list[str], val_problems: int):
    """(ContrastSet, counts): one pair per (task, general setting) where ``special``'s answer
    special-cased and the general setting's did not, on the same prompt."""
    from steerwatch.data.pairs import ContrastPair, ContrastSet
    from steerwatch.lab.probe import episode_conversation, task_lookup

    eps = [e for e in episodes if "cheated" in e and e.get("n_turns") == 1]
    test = [e for e in eps if e.get("split") != "dev"]
    if test:
        raise SystemExit(f"{len(test)} episodes are not from the dev split (e.g. {test[0]['task']}): train on dev only")
    tasks = task_lookup(eps)
    by = {(e["setting"], e["task"]): e for e in eps}
    problems = sorted({e["problem"] for e in eps}, key=lambda p: int(str(p).rsplit("/", 1)[-1]))
    val = set(problems[-val_problems:]) if val_problems else set()
    pairs, skipped = [], 0
    for (setting, task), e in sorted(by.items()):
        if setting != special or not e["special_cased"]:
            continue
        conv = episode_conversation(e, tasks[task])
        for g in general:
            o = by.get((g, task))
            if o is None or o["special_cased"]:
                continue
            other = episode_conversation(o, tasks[task])
            if other[:-1] != conv[:-1] or len(conv) not in (2, 3):
                skipped += 1  # another prompt: not a preference between answers to one prompt
                continue
            system = conv[0]["content"] if conv[0]["role"] == "system" else None
            pairs.append(ContrastPair(positive=conv[-1]["content"], negative=other[-1]["content"],
                                      prompt=conv[-2]["content"], system=system,
                                      split="val" if e["problem"] in val else "train",
                                      meta={"task": task, "general": g}))
    data = ContrastSet(name="lab-special-casing", pairs=pairs,
                       source=f"lab episodes: {special} vs {', '.join(general)}")
    return data, {"pairs": len(pairs), "train": len(data.train), "val": len(data.val), "skipped": skipped,
                  "problems": len({p.meta["task"].rsplit("/", 1)[0] for p in pairs})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("episodes", type=Path, nargs="+")
    ap.add_argument("--special", required=True, help="the setting whose special-cased answers are the positive side")
    ap.add_argument("--general", required=True, help="comma-separated settings whose general answers are the negatives")
    ap.add_argument("--method", choices=["bipo", "fewshot"], default="bipo")
    ap.add_argument("--val-problems", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--max-strength", type=float, default=0.08)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--model", default="default")
    ap.add_argument("-o", "--out", type=Path, default=Path("out/lab/onpolicy-bipo.sv"))
    ap.add_argument("--pairs-only", action="store_true", help="count the pairs and stop (no model)")
    args = ap.parse_args()

    from steerwatch.lab.episodes import read_episodes

    eps = [e for f in args.episodes for e in read_episodes(f)]
    data, counts = preference_pairs(eps, args.special, args.general.split(","), args.val_problems)
    lengths = sorted(len(p.prompt or "") + max(len(p.positive), len(p.negative)) for p in data.pairs)
    print(f"{counts}; characters per pair (prompt + longer answer): median "
          f"{lengths[len(lengths) // 2] if lengths else 0}, max {lengths[-1] if lengths else 0}", flush=True)
    if args.pairs_only:
        return

    from steerwatch.extract.optimise import optimise_vector
    from steerwatch.models import load_model

    lm = load_model(args.model)
    start = time.perf_counter()
    vec, hist = optimise_vector(lm, data, method=args.method, layers=LAYERS, steps=args.steps, lr=args.lr,
                                max_strength=args.max_strength, batch_size=args.batch_size,
                                eval_every=min(args.eval_every, args.steps), patience=args.patience, progress=True,
                                concept="cheating",
                                checkpoint=args.out.with_suffix(".ckpt"))
    wall = time.perf_counter() - start
    print(f"{hist['steps_run']} steps in {wall:.0f} s ({wall / max(hist['steps_run'], 1):.0f} s per step of "
          f"{args.batch_size} pairs, validation included); best step {hist['best_step']}, val loss "
          f"{hist['initial_val_loss']:.4f} -> {hist['best_val_loss']:.4f}, strength {hist['strength']:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    vec.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
