"""Calibration time: the old path (batches in the file's order, no cache) vs. batches sorted by
length vs. a new detector on a warm cache of benign reads, side by side in one run.

    python bench/bench_calibrate.py [--model default] [--n 40] [--layer 13] [--batch 4]

``--n`` benign conversations are taken evenly from the built-in control set (400: chat, coding and
agent work), so short and long ones mix as in a full calibration. Three calibrations at a 1 % target
of random-direction detectors reading ``--layer`` (the cost does not depend on the direction):

1. old: ``score_conversations(sort_by_length=False)``, then ``calibrate(scored=...)``;
2. new, sorted: ``calibrate(cache=ReadCache(tmp))`` on a cold cache: sorted batches, and the reads
   at the layer stored on the way (the write is included in the time);
3. new, warm: ``calibrate`` of another detector at the same layer on that cache: no forward pass.

Printed: seconds, padded tokens per pass, ratios to the old path, the cache's size on disk, and
the threshold difference for one detector between the old path and the warm cache (float32
batch-shape rounding). Sorted batches were already steerwatch's path before the cache (since the
runtime refactor); "old" is the unsorted baseline, so path 2 vs. 1 is what sorting buys and path 3
vs. 2 what the cache buys. One unsorted and one sorted pass: 4 to 8 min for the default --n 40 on
2 CPU cores shared with other jobs (load average 5 to 7, 2026-12-07).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=40, help="benign conversations (evenly from the built-in 400)")
    ap.add_argument("--layer", type=int, default=13)
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()

    import torch

    from _common import random_vector
    from steerwatch.batch import length_batches
    from steerwatch.data.reference import load_benign
    from steerwatch.models import load_model
    from steerwatch.watch.calibrate import calibrate
    from steerwatch.watch.detector import Detector
    from steerwatch.watch.readcache import ReadCache
    from steerwatch.watch.render import render_conversation
    from steerwatch.watch.score import score_conversations

    lm = load_model(args.model, progress=False)
    allc = load_benign()
    step = max(1, len(allc) // args.n)
    convs = allc[::step][:args.n]
    lengths = [len(render_conversation(lm.tokenizer, c.messages).ids) for c in convs]

    def padded(sort: bool) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in length_batches(lengths, args.batch, sort=sort))

    g = torch.Generator().manual_seed(0)
    dets = [Detector(vector=random_vector(lm, i, args.layer, g), layer=args.layer) for i in range(3)]
    print(f"{args.model}: {len(convs)} benign conversations, {sum(lengths)} tokens "
          f"(shortest {min(lengths)}, longest {max(lengths)}), layer {args.layer}, batch {args.batch}, "
          f"{torch.get_num_threads()} torch threads", flush=True)

    score_conversations(lm, convs[:2], [dets[0]])  # warm-up: the first pass pays one-off costs
    t0 = time.perf_counter()
    scored = score_conversations(lm, convs, [dets[0], dets[2]], batch_size=args.batch, sort_by_length=False)
    old_rows = calibrate(lm, [dets[0]], convs, fpr=0.01, scored=scored)
    t_old = time.perf_counter() - t0
    print(f"  old (file order, no cache)     {t_old:8.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = ReadCache(Path(tmp))
        t0 = time.perf_counter()
        new_rows = calibrate(lm, [dets[1]], convs, fpr=0.01, batch_size=args.batch, cache=cache)
        t_new = time.perf_counter() - t0
        print(f"  new (sorted, cold cache)       {t_new:8.1f} s", flush=True)
        t0 = time.perf_counter()
        warm_rows = calibrate(lm, [dets[2]], convs, fpr=0.01, batch_size=args.batch, cache=cache)
        t_warm = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in Path(tmp).glob("*.npy"))
    # the same detector's threshold by the old path and from the cache
    check = calibrate(lm, [Detector(vector=dets[2].vector, layer=args.layer)], convs, fpr=0.01, scored=scored)
    diff = abs(check[0]["threshold"] - warm_rows[0]["threshold"])
    del old_rows, new_rows
    print(f"  new (warm cache, new detector) {t_warm:8.1f} s")
    print()
    print(f"{'path':32s} {'seconds':>9s} {'padded tokens':>14s} {'speed-up':>9s}")
    print(f"{'old: file order, no cache':32s} {t_old:9.1f} {padded(False):14d} {1.0:8.2f}x")
    print(f"{'new: sorted, cold cache':32s} {t_new:9.1f} {padded(True):14d} {t_old / t_new:8.2f}x")
    print(f"{'new: sorted, warm cache':32s} {t_warm:9.1f} {0:14d} {t_old / t_warm:8.2f}x")
    print(f"cache on disk: {size / 1e6:.1f} MB for {sum(lengths)} tokens "
          f"({size / sum(lengths) / 1e3:.2f} kB per token and layer); "
          f"threshold |old - warm| for one detector: {diff:.2e}")


if __name__ == "__main__":
    main()
