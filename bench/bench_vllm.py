"""The vLLM engine against the Hugging Face engine, unsteered / steered / watched, side by side in one run.

    .vllm-venv/bin/python bench/bench_vllm.py [--model default] [--concurrency 1,8,32] [--tokens 32]
                                             [--rounds 2] [--kv-cache-gib 2]

Runs in the vLLM environment (scripts/vllm_venv.sh), where both engines live in one process. For each
concurrency c, c different prompts (long-answer requests, so most run the full ``--tokens``) go into one
``generate`` call of each engine, in these settings:

* **plain**: no steering, no detectors;
* **steered**: every row steered, each its own vector (random unit directions at layer 12, strength
  0.05 x the layer's norm: random directions cost what real ones cost), so batches are heterogeneous;
* **watched**: no steering, two detectors (layers 8 and 16), live scores;
* **steered+watched**: both; the detector at layer 16 reads downstream of the steering, so it is
  rescored (one more unsteered pass per call, on either engine).

Printed per engine, setting and concurrency: generated tokens/s (median over rounds), the call's wall
time (every row of a call is returned when the call returns) and, for vLLM, p50/p95 of when each row
finished generating inside the call. Ratios: each setting over plain on the same engine (target: steering
and watching cost <= 5 % on vLLM) and vLLM over HF (target >= 2x at 32 concurrent).
"""
from __future__ import annotations

import argparse
import statistics
import time

TOPICS = ["the history of bridges", "how compilers work", "a day at the sea", "why the sky is blue",
          "the rules of chess", "growing tomatoes", "how vaccines work", "the water cycle", "a trip to Rome",
          "sorting algorithms", "how bees communicate", "the first computers", "baking bread", "volcanoes",
          "the moon landing", "how to learn a language"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--kv-cache-gib", type=int, default=2)
    ap.add_argument("--engines", default="hf,vllm")
    args = ap.parse_args()

    import torch

    from _common import random_vector
    from steerwatch.models import load_model
    from steerwatch.runtime import GenerationOptions, HFEngine
    from steerwatch.steer import SteerSpec
    from steerwatch.watch.detector import Detector

    lm = load_model(args.model, progress=False)
    conc = [int(x) for x in args.concurrency.split(",")]
    n_max = max(conc)
    prompts = [f"Write a long, detailed essay about {TOPICS[i % len(TOPICS)]} (part {i // len(TOPICS) + 1})."
               for i in range(n_max)]
    gen = torch.Generator().manual_seed(0)
    layer, up, down = (min(x, lm.n_layers - 1) for x in (12, 8, 16))
    vecs = [random_vector(lm, i, layer, gen) for i in range(n_max)]
    dets = [Detector(vector=random_vector(lm, 100, up, gen), layer=up, name="upstream"),
            Detector(vector=random_vector(lm, 101, down, gen), layer=down, name="downstream")]
    opts = GenerationOptions(max_new_tokens=args.tokens, batch_size=n_max)
    engines: dict[str, object] = {}
    if "hf" in args.engines:
        engines["hf"] = HFEngine(lm)
    if "vllm" in args.engines:
        from steerwatch.runtime.vllm_engine import VLLMEngine

        engines["vllm"] = VLLMEngine(lm, kv_cache_gib=args.kv_cache_gib)
    settings = ["plain", "steered", "watched", "steered+watched"]
    print(f"model {lm.name}, {args.tokens} tokens, torch threads {torch.get_num_threads()}, rounds {args.rounds}")
    res: dict[tuple[str, str, int], dict[str, float]] = {}
    for c in conc:
        for name, eng in engines.items():
            eng.generate(prompts[:c], GenerationOptions(max_new_tokens=4, batch_size=n_max))  # warm-up
            for setting in settings:
                rows = [[SteerSpec(vecs[i], strength=0.05)] for i in range(c)] if "steered" in setting else None
                watch = dets if "watched" in setting else []
                tps, walls, p50, p95 = [], [], [], []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    gens = eng.generate(prompts[:c], opts, rows=rows, watch=watch)  # type: ignore[attr-defined]
                    wall = time.perf_counter() - t
                    tps.append(sum(len(g.new_ids) for g in gens) / wall)
                    walls.append(wall)
                    fin = sorted(getattr(eng, "finish_times", []) or [wall] * c)
                    p50.append(fin[len(fin) // 2])
                    p95.append(fin[min(len(fin) - 1, round(0.95 * (len(fin) - 1)))])
                res[(name, setting, c)] = {"tps": statistics.median(tps), "wall": statistics.median(walls),
                                           "p50": statistics.median(p50), "p95": statistics.median(p95)}
                r = res[(name, setting, c)]
                print(f"{name:5s} c={c:3d} {setting:16s} {r['tps']:8.1f} tok/s  call {r['wall']:6.2f} s  "
                      f"rows finish p50 {r['p50']:6.2f} s p95 {r['p95']:6.2f} s", flush=True)
    print("\nratios (same engine, setting / plain tokens/s):")
    for name in engines:
        for c in conc:
            base = res[(name, "plain", c)]["tps"]
            print(f"  {name:5s} c={c:3d} " + "  ".join(
                f"{s} {res[(name, s, c)]['tps'] / base:.3f}" for s in settings[1:]))
    if len(engines) == 2:
        print("\nvLLM / HF tokens/s:")
        for c in conc:
            print(f"  c={c:3d} " + "  ".join(
                f"{s} {res[('vllm', s, c)]['tps'] / res[('hf', s, c)]['tps']:.2f}x" for s in settings))
    close = getattr(engines.get("vllm"), "close", None)
    if close is not None:
        close()


if __name__ == "__main__":
    main()
