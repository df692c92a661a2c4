"""Sweep throughput: batched vs. one item at a time, side by side.

    python bench/bench_sweep.py [--model default] [--vector PATH] [--ab CAA_AB.json]
                                [--strengths 0,0.05,0.1] [--limit 16] [--batch 8] [--rounds 3]

A sweep spends its time in four teacher-forced parts, each run at every strength (as
``steerwatch.evals.sweep.sweep`` does): the A/B behaviour probabilities, the next-token KL on
neutral prompts (steered strengths only: KL at strength 0 needs no forward pass), the perplexity
of the neutral reference text and the capability multiple choice. Each round times every part
with ``batch_size=--batch`` and with ``batch_size=1`` back to back (order alternated per round),
on the same items, so the machine's noise hits both alike. Printed: median items/s per part and
for the whole sweep (all items / summed median times), and the ratio batched / one at a time.

The vector is ``--vector`` (checked against the model) or, by default, a random unit direction
at the middle layer (the cost of a hook does not depend on the direction).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

CAA_SYCOPHANCY = Path(__file__).resolve().parents[2] / "shared/data/CAA/datasets/test/sycophancy/test_dataset_ab.json"
PARTS = ("ab", "kl", "ppl", "mc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vector", type=Path, default=None, help="a vector file built on --model (default: random)")
    ap.add_argument("--ab", type=Path, default=CAA_SYCOPHANCY, help="CAA-format A/B file")
    ap.add_argument("--strengths", default="0,0.05,0.1")
    ap.add_argument("--limit", type=int, default=16, help="items per set (A/B, prompts, texts, capability)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        ap.error(f"--parts: unknown {bad}; valid: {', '.join(PARTS)}")
    if args.limit < 1 or args.batch < 2 or args.rounds < 1:
        ap.error("--limit and --rounds must be >= 1 and --batch >= 2 (it is compared with batch 1)")
    strengths = [float(s) for s in args.strengths.split(",") if s.strip()]
    if not args.ab.is_file():
        ap.error(f"--ab: {args.ab} not found; give a CAA-format A/B JSON file")

    import torch

    from _common import random_vector
    from steerwatch.data.reference import load_mc, load_prompts, load_reference_text
    from steerwatch.evals.metrics import ab_behaviour_probs, mc_correct, next_token_kl, text_nll
    from steerwatch.io import read_json
    from steerwatch.models import load_model
    from steerwatch.steer import SteerSpec
    from steerwatch.vector import load_vector

    lm = load_model(args.model, device=args.device, progress=False)
    if args.vector:
        vec = load_vector(args.vector)
        vec.check_model(lm)
    else:
        layer = lm.n_layers // 2
        vec = random_vector(lm, 0, layer, torch.Generator().manual_seed(0))
    ab = read_json(args.ab)[: args.limit]
    prompts = load_prompts()[: args.limit]
    texts = load_reference_text()[: args.limit]
    mc = load_mc()[: args.limit]

    def specs(s: float):
        return [SteerSpec(vec, strength=s)] if s else None

    def run(part: str, batch: int) -> tuple[int, float]:
        """(items, seconds) for one part over every strength."""
        n = 0
        t = time.perf_counter()
        for s in strengths:
            if part == "ab":
                n += len(ab_behaviour_probs(lm, ab, steer=specs(s), batch_size=batch))
            elif part == "kl" and s != 0:
                n += len(next_token_kl(lm, prompts, steer=specs(s), batch_size=batch))
            elif part == "ppl":
                n += len(text_nll(lm, texts, steer=specs(s), batch_size=batch))
            elif part == "mc":
                n += len(mc_correct(lm, mc, steer=specs(s), batch_size=batch))
        return n, time.perf_counter() - t

    ab_behaviour_probs(lm, ab[:1], steer=specs(max(strengths, key=abs)))  # warm-up: first-call allocations
    secs: dict[tuple[str, int], list[float]] = {(p, b): [] for p in parts for b in (args.batch, 1)}
    items: dict[str, int] = {}
    for r in range(args.rounds):
        for part in parts:
            for b in ((args.batch, 1) if r % 2 == 0 else (1, args.batch)):
                n, dt = run(part, b)
                items[part] = n
                secs[(part, b)].append(dt)

    print(f"model {lm.name} on {args.device} · vector {args.vector or 'random'} · strengths {strengths} · "
          f"{len(ab)} A/B, {len(prompts)} prompts, {len(texts)} texts, {len(mc)} MC items · "
          f"batch {args.batch} vs 1 · {args.rounds} rounds · torch threads {torch.get_num_threads()}")
    print(f"{'part':>6} {'items':>6} {f'batch {args.batch}':>14} {'batch 1':>14}   ratio")
    tot_n, tot_b, tot_1 = 0, 0.0, 0.0
    for part in parts:
        tb, t1 = statistics.median(secs[(part, args.batch)]), statistics.median(secs[(part, 1)])
        n = items[part]
        tot_n, tot_b, tot_1 = tot_n + n, tot_b + tb, tot_1 + t1
        print(f"{part:>6} {n:>6} {n / tb:>10.3g} it/s {n / t1:>10.3g} it/s   {t1 / tb:.2f}x")
    print(f"{'sweep':>6} {tot_n:>6} {tot_n / tot_b:>10.3g} it/s {tot_n / tot_1:>10.3g} it/s   {tot_1 / tot_b:.2f}x "
          "(batched vs one at a time)")


if __name__ == "__main__":
    main()
