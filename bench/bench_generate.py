"""Generation throughput: unsteered vs. steered with 1 and with 8 vectors, side by side.

    python bench/bench_generate.py [--model default] [--tokens 64] [--batch 1] [--rounds 5]

Each round runs the three settings back to back (order rotated per round) on the same prompt with
a fixed number of new tokens, so the machine's noise hits all settings alike; the ratios of
median tokens/s are printed. Target: steered >= 0.97 x unsteered.
The directions are random unit vectors (the cost of a hook does not depend on the direction);
8 vectors are spread over 8 different layers, the most hooks 8 vectors can need.
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
    from steerwatch.chat import encode_prompt, render_prompt
    from steerwatch.models import load_model
    from steerwatch.steer import SteerSpec, attach

    lm = load_model(args.model, progress=False)
    g = torch.Generator().manual_seed(0)
    L = lm.n_layers

    def rand_vec(i: int, layer: int):
        return random_vector(lm, i, layer, g)

    one = [SteerSpec(rand_vec(0, L // 2), strength=0.05)]
    eight = [SteerSpec(rand_vec(i, 4 + 2 * i), strength=0.02) for i in range(8)]
    story = render_prompt(lm.tokenizer, "Write a short story about a lighthouse keeper.")
    ids = torch.tensor([encode_prompt(lm.tokenizer, story)] * args.batch)
    att = torch.ones_like(ids)
    kw = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
              pad_token_id=lm.tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)

    def run(specs) -> float:
        handle = attach(lm, specs) if specs else None
        try:
            t = time.perf_counter()
            with torch.inference_mode():
                out = lm.model.generate(input_ids=ids, attention_mask=att, **kw)
            dt = time.perf_counter() - t
        finally:
            if handle:
                handle.remove()
        return (out.shape[1] - ids.shape[1]) * args.batch / dt

    settings = {"unsteered": [], "1 vector": one, "8 vectors": eight}
    run([])  # warm-up
    rates: dict[str, list[float]] = {k: [] for k in settings}
    names = list(settings)
    for r in range(args.rounds):
        for name in names[r % 3:] + names[: r % 3]:
            rates[name].append(run(settings[name]))
    base = statistics.median(rates["unsteered"])
    print(f"model {lm.name} · {args.tokens} new tokens · batch {args.batch} · {args.rounds} rounds · "
          f"torch threads {torch.get_num_threads()}")
    for name in names:
        med = statistics.median(rates[name])
        print(f"{name:>10}: {med:7.1f} tok/s (median)  ratio vs unsteered {med / base:.3f}")


if __name__ == "__main__":
    main()
