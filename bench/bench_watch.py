"""Generation throughput with 8 detectors watching vs. without, side by side.

    python bench/bench_watch.py [--model default] [--tokens 64] [--batch 1] [--rounds 5]

Each round runs both settings back to back (order alternated per round) with
``steerwatch.runtime.generate`` with ``watch=`` 8 detectors (hooks project every token on 8
directions at 8 layers) and without, on the same prompt, with a fixed number of new tokens. The ratio of
median tokens/s is printed. Target: watched >= 0.95 x unwatched. Directions are random unit
vectors (the cost does not depend on the direction).
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import torch

    from _common import random_vector
    from steerwatch.models import load_model
    from steerwatch.runtime import GenerationOptions, generate
    from steerwatch.watch.detector import Detector

    lm = load_model(args.model, progress=False)
    # fixed-length generations: no early end-of-turn token
    lm.model.generation_config.min_new_tokens = args.tokens
    g = torch.Generator().manual_seed(0)
    L = lm.n_layers
    dets = []
    for i in range(8):
        layer = 4 + 2 * i if L >= 20 else i % L
        dets.append(Detector(vector=random_vector(lm, i, layer, g), layer=layer))
    prompts = ["Write a short story about a lighthouse keeper."] * args.batch

    def run(watch: bool) -> float:
        t = time.perf_counter()
        out = generate(lm, prompts, GenerationOptions(max_new_tokens=args.tokens, batch_size=args.batch),
                       watch=dets if watch else ())
        n = sum(len(o.new_ids) for o in out)
        return n / (time.perf_counter() - t)

    run(False)  # warm-up
    rates: dict[str, list[float]] = {"unwatched": [], "8 detectors": []}
    for r in range(args.rounds):
        order = [False, True] if r % 2 == 0 else [True, False]
        for w in order:
            rates["8 detectors" if w else "unwatched"].append(run(w))
    base = statistics.median(rates["unwatched"])
    print(f"model {lm.name} · {args.tokens} new tokens · batch {args.batch} · {args.rounds} rounds · "
          f"torch threads {torch.get_num_threads()}")
    for name, vals in rates.items():
        med = statistics.median(vals)
        print(f"{name:>12}: {med:7.1f} tok/s (median)  ratio vs unwatched {med / base:.3f}")


if __name__ == "__main__":
    main()
