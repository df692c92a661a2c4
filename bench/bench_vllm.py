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

``--server``: the same through ``steerwatch serve`` on each engine instead: c concurrent clients
(threads with their own ``openai`` client), each sending ``--per-client`` requests back to back, each
request steered with its own vector (8 random ones, per-request ``steering``) and watched by one
detector reading upstream of them. Printed: tokens/s and the per-request latency p50 / p95 (each
request's own wall time, as its client saw it), and the vLLM / HF ratios. On the HF engine one batch
runs at a time; on vLLM the server's batch workers share one continuous batch.
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
    ap.add_argument("--server", action="store_true", help="measure through steerwatch serve (see above)")
    ap.add_argument("--per-client", type=int, default=2)
    args = ap.parse_args()
    if args.server:
        serve_bench(args)
        return

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


def serve_bench(args: argparse.Namespace) -> None:
    import tempfile
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    import openai
    import torch
    import yaml

    from _common import random_vector
    from steerwatch.io import file_sha256
    from steerwatch.models import load_model
    from steerwatch.policy.schema import hash_key
    from steerwatch.serve.server import RunningServer, build_engine
    from steerwatch.watch.detector import Detector

    lm = load_model(args.model, progress=False)
    conc = [int(x) for x in args.concurrency.split(",")]
    g = torch.Generator().manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-serve-"))
    layer = min(12, lm.n_layers - 1)
    entries = []
    for i in range(8):
        path = random_vector(lm, i, layer, g).save(tmp / f"v{i}.sv")
        entries.append({"name": f"v{i}", "path": str(path), "sha256": file_sha256(path), "max_abs_strength": 0.1})
    wl = min(8, lm.n_layers - 1)
    random_vector(lm, 99, wl, g).save(tmp / "w.sv")
    from steerwatch.vector import load_vector

    det = Detector(vector=load_vector(tmp / "w.sv"), layer=wl, name="watch", threshold=1e9,
                   vector_path=str(tmp / "w.sv"))
    dp = det.save(tmp / "watch.det.json")
    policy = {"vectors": entries, "detectors": [{"name": "watch", "path": str(dp), "sha256": file_sha256(dp)}],
              "keys": [{"name": "bench", "sha256": hash_key("bench"), "steer": True}],
              "limits": {"max_batch": max(conc), "batch_wait_ms": 50, "max_tokens": args.tokens,
                         "default_max_tokens": args.tokens, "max_queue": 4 * max(conc)},
              "degeneration": {"enabled": False}, "store": {"url": f"sqlite:///{tmp / 'events.db'}"}}
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    res: dict[tuple[str, int], dict[str, float]] = {}
    for name in [e for e in ("hf", "vllm") if e in args.engines]:
        opts = {"kv_cache_gib": args.kv_cache_gib} if name == "vllm" else {}
        engine = build_engine(tmp / "policy.yaml", loaded=lm, guard=False, backend=name, backend_options=opts)
        srv = RunningServer(engine)
        try:
            for c in conc:
                clients = [openai.OpenAI(base_url=srv.base_url, api_key="bench", max_retries=0, timeout=900)
                           for _ in range(c)]

                def one(k: int, c: int = c, clients: list = clients,
                        served: str = engine.dep.served_name) -> tuple[float, int]:
                    t = time.perf_counter()
                    r = clients[k % c].chat.completions.create(
                        model=served, max_tokens=args.tokens,
                        messages=[{"role": "user", "content": f"Write a long, detailed essay about "
                                                              f"{TOPICS[k % len(TOPICS)]}."}],
                        extra_body={"steering": [{"vector": f"v{k % 8}", "strength": 0.05}]})
                    return time.perf_counter() - t, r.usage.completion_tokens

                def client_loop(j: int, c: int = c, one=one) -> list[tuple[float, int]]:
                    return [one(j + c * m) for m in range(args.per_client)]

                one(0)  # warm-up
                t = time.perf_counter()
                with ThreadPoolExecutor(c) as ex:
                    got = [x for part in ex.map(client_loop, range(c)) for x in part]
                wall = time.perf_counter() - t
                lat = sorted(x for x, _ in got)
                res[(name, c)] = {"tps": sum(n for _, n in got) / wall, "p50": lat[len(lat) // 2],
                                  "p95": lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]}
                r = res[(name, c)]
                print(f"serve {name:5s} c={c:3d} {len(got)} requests  {r['tps']:7.1f} tok/s  latency p50 "
                      f"{r['p50']:6.2f} s  p95 {r['p95']:6.2f} s  (batches so far {engine.stats['batches']})",
                      flush=True)
        finally:
            srv.stop()
            engine.stop()
            close = getattr(engine.backend, "close", None)
            if close is not None:
                close()
    if all(("hf", c) in res and ("vllm", c) in res for c in conc):
        print("\nvLLM / HF through the server:")
        for c in conc:
            a, b = res[("vllm", c)], res[("hf", c)]
            print(f"  c={c:3d} tokens/s {a['tps'] / b['tps']:.2f}x  latency p50 {a['p50'] / b['p50']:.2f}x  "
                  f"p95 {a['p95'] / b['p95']:.2f}x")


if __name__ == "__main__":
    main()
