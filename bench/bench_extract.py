"""Recording a contrast set for extraction: one example at a time vs. batched vs. batched with the
prompt-prefix KV cache, side by side in one run.

    python bench/bench_extract.py [--model default] [--concepts honesty,cheating] [--pairs 48]
                                  [--batch 8] [--rounds 3] [--layers all]

For each built-in concept, the first ``--pairs`` pairs (both sides, prompt + completion, as
``steerwatch extract`` records them) go through ``steerwatch.record.record`` three ways:

1. ``one``: ``batch_size=1, prefix_cache=False`` (one example per forward pass);
2. ``batched``: ``batch_size=--batch, prefix_cache=False`` (length-sorted, right-padded batches);
3. ``cached``: ``batch_size=--batch`` with the prefix cache (the default): the opening every prompt
   shares (the chat template's system turn) runs once for the set, a pair's shared prompt once, and
   each batch is one pass whose rows hold a prompt and its completions under a tree attention mask;
4. ``two-pass``: the same cache, each batch as two passes (the prompts, then the completions over
   copies of their cache), as models whose attention takes no custom mask run it.

Each round runs the four back to back, the order rotated per round; the ratio of median times is
printed, with the real tokens each way runs (what the cache saves is visible there) and the
largest difference between the features of ``cached`` and ``batched`` relative to their scale
(float32 rounding: ~1e-7). ``--layers all`` reads every block, as extraction does (the pass runs
through the last block); a number reads blocks 0..N only.
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--concepts", default="honesty,cheating")
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--layers", default="all")
    ap.add_argument("--padding-only", action="store_true",
                    help="print only the share of padding in the one-pass tree rows, packed-length order vs. the "
                         "two-pass path's longest-completion order (token counts, no timing)")
    args = ap.parse_args()

    import torch

    from steerwatch import batch as batch_mod
    from steerwatch.chat import encode_example
    from steerwatch.data import load_concept
    from steerwatch.models import load_model
    from steerwatch.record import NormStats, record, tokens_run

    torch.manual_seed(0)
    lm = load_model(args.model, progress=False)
    last = lm.n_layers - 1 if args.layers == "all" else int(args.layers)
    layers = list(range(last + 1))
    modes = {"one": dict(batch_size=1, prefix_cache=False),
             "batched": dict(batch_size=args.batch, prefix_cache=False),
             "cached": dict(batch_size=args.batch, prefix_cache=True),
             "two-pass": dict(batch_size=args.batch, prefix_cache=True)}
    tree_kind = batch_mod.tree_mask_kind
    print(f"model {lm.name}: {lm.n_layers} blocks, reading {len(layers)}; batch {args.batch}; "
          f"{args.rounds} rounds; torch threads {torch.get_num_threads()}")
    for concept in args.concepts.split(","):
        data = load_concept(concept)
        pairs = (data.train + data.val)[:args.pairs]
        examples = []
        for p in pairs:
            for side in (p.positive, p.negative):
                examples.append(encode_example(lm.tokenizer, prompt=p.prompt, completion=side, system=p.system))
        if args.padding_only:
            print(f"{concept}: {len(pairs)} pairs; " + tree_padding(examples, args.batch))
            continue
        record(lm, examples[:args.batch], layers=layers, read="completion_mean", batch_size=args.batch)  # warm-up
        times: dict[str, list[float]] = {m: [] for m in modes}
        feats: dict[str, torch.Tensor] = {}
        names = list(modes)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for m in order:
                batch_mod.tree_mask_kind = (lambda _lm: None) if m == "two-pass" else tree_kind  # type: ignore[assignment]
                t = time.perf_counter()
                feats[m] = record(lm, examples, layers=layers, read="completion_mean", norms=NormStats(), **modes[m])
                times[m].append(time.perf_counter() - t)
        batch_mod.tree_mask_kind = tree_kind
        med = {m: statistics.median(v) for m, v in times.items()}
        prompt = sum(e.last_prompt + 1 for e in examples) / len(examples)
        comp = sum(len(e.ids) - e.last_prompt - 1 for e in examples) / len(examples)
        print(f"\n{concept}: {len(pairs)} pairs, {len(examples)} examples; mean prompt {prompt:.1f} tokens, "
              f"completion {comp:.1f}")
        for m in names:
            tok = tokens_run(examples, batch_size=modes[m]["batch_size"], prefix_cache=modes[m]["prefix_cache"])
            print(f"  {m:8s} {med[m]:7.2f} s (rounds: {', '.join(f'{x:.1f}' for x in times[m])}), "
                  f"{tok} real tokens, {len(examples) / med[m]:.1f} examples/s")
        scale = feats["batched"].abs().max()
        diff = float((feats["cached"] - feats["batched"]).abs().max() / scale)
        print(f"  batched / one at a time: {med['one'] / med['batched']:.2f}x; "
              f"cached / batched: {med['batched'] / med['cached']:.2f}x; "
              f"cached / one at a time: {med['one'] / med['cached']:.2f}x; "
              f"cached / two-pass: {med['two-pass'] / med['cached']:.2f}x")
        saved = (tokens_run(examples, batch_size=args.batch, prefix_cache=False)
                 / tokens_run(examples, batch_size=args.batch))
        print(f"  tokens run, batched / cached: {saved:.2f}x; "
              f"features cached vs batched: max |diff| / scale {diff:.1e}")


def tree_padding(examples, batch: int) -> str:
    """The share of padding in the tree rows (a row: a prompt's rest and all its completions; the
    batch as wide as its widest row) under both group orders of ``steerwatch.record._group_batches``."""
    from steerwatch.record import _cacheable, _group_batches, _opening, _prompt_len

    cached = [i for i, e in enumerate(examples) if _cacheable(e)]
    opening = _opening(examples, cached)
    parts = []
    for packed in (True, False):
        real = grid = 0
        for groups in _group_batches(examples, cached, batch, packed=packed):
            widths = [_prompt_len(examples[g[0]]) - opening
                      + sum(len(examples[i].ids) - _prompt_len(examples[i]) for i in g) for g in groups]
            real += sum(widths)
            grid += max(widths) * len(widths)
        parts.append(f"{'packed-length' if packed else 'longest-completion'} order: {100 * (grid - real) / grid:.1f} % "
                     f"padding ({grid - real} of {grid})")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
