"""steerwatch serve throughput and latency, measured side by side in one run.

    python bench/bench_serve.py [--model default] [--requests 16] [--tokens 32] [--clients 8] [--rounds 2]

A loopback server (uvicorn, 127.0.0.1) serves the model with a policy holding 8 random unit
vectors (random directions cost what real ones cost) and one watching detector. Each round:

* **concurrent**: ``--clients`` threads, each with its own ``openai`` client, send the
  ``--requests`` chat requests, each with its own steering (vector i, strength chosen per
  request), so batches are heterogeneous;
* **sequential**: the same requests, one at a time, through the same server;
* **in-process**: the same requests, one at a time, with ``steerwatch.runtime.generate`` and the same per-request
  steering directly (no HTTP, no engine, no detectors).

The detector reads two layers before (upstream of) the steered one, so its scores are live; with ``--rescored``
it reads the steered layer and every batch gets one more (unsteered) forward pass to rescore it.

Generations have a fixed length (``min_new_tokens`` = ``--tokens``). Printed: requests/s and
tokens/s of each, the ratio concurrent / sequential (target >= 2x), and the median per-request
latency of sequential-through-the-server over in-process (the server's overhead: HTTP, JSON,
queueing, watching and storing).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-wait-ms", type=float, default=50.0, help="the policy's limits.batch_wait_ms")
    ap.add_argument("--rescored", action="store_true", help="watch at the steered layer (rescoring pass)")
    args = ap.parse_args()

    from concurrent.futures import ThreadPoolExecutor

    import openai
    import torch
    import yaml

    from _common import random_vector
    from steerwatch.io import file_sha256
    from steerwatch.models import load_model
    from steerwatch.policy.schema import hash_key
    from steerwatch.runtime import GenerationOptions, generate
    from steerwatch.serve.server import RunningServer, build_engine
    from steerwatch.steer import SteerSpec
    from steerwatch.watch.detector import Detector

    lm = load_model(args.model, progress=False)
    lm.model.generation_config.min_new_tokens = args.tokens
    g = torch.Generator().manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    layer = lm.n_layers // 2
    vectors, entries = [], []
    for i in range(8):
        v = random_vector(lm, i, layer, g)
        p = v.save(tmp / f"v{i}.sv")
        vectors.append(v)
        entries.append({"name": f"v{i}", "path": str(p), "sha256": file_sha256(p), "max_abs_strength": 0.3})
    # the detector reads upstream of the steered layer (live scores); --rescored puts it at the steered
    # layer, which costs one extra unsteered forward pass per batch (scores of what was said, not the push)
    wl = layer if args.rescored else layer - 2
    wv = random_vector(lm, 99, wl, g)
    wv.save(tmp / "w.sv")
    det = Detector(vector=wv, layer=wl, name="watch", threshold=1e9, vector_path=str(tmp / "w.sv"))
    dp = det.save(tmp / "watch.det.json")
    policy = {"vectors": entries, "detectors": [{"name": "watch", "path": str(dp), "sha256": file_sha256(dp)}],
              "keys": [{"name": "bench", "sha256": hash_key("bench"), "steer": True}],
              "limits": {"max_batch": args.clients, "batch_wait_ms": args.batch_wait_ms, "max_tokens": args.tokens,
                         "default_max_tokens": args.tokens},
              "degeneration": {"enabled": False}, "store": {"url": f"sqlite:///{tmp / 'events.db'}"}}
    (tmp / "policy.yaml").write_text(yaml.safe_dump(policy))
    prompts = ["Explain what a hash map is.", "Write a haiku about rain.", "What is 17 * 23?",
               "Name three uses of copper.", "Why is the sky blue?", "Give me a tip for sleeping better.",
               "What does HTTP stand for?", "Summarise the plot of Hamlet."]
    reqs = [(prompts[i % len(prompts)], i % 8, [0.02, -0.02, 0.04, -0.04][i % 4]) for i in range(args.requests)]

    engine = build_engine(tmp / "policy.yaml", loaded=lm, guard=False)
    srv = RunningServer(engine)
    client = [openai.OpenAI(base_url=srv.base_url, api_key="bench", max_retries=0, timeout=600)
              for _ in range(args.clients)]

    def http_one(k: int) -> float:
        p, vi, s = reqs[k]
        t = time.perf_counter()
        r = client[k % args.clients].chat.completions.create(
            model=engine.dep.served_name, messages=[{"role": "user", "content": p}], max_tokens=args.tokens,
            extra_body={"steering": [{"vector": f"v{vi}", "strength": s}]})
        assert r.usage.completion_tokens == args.tokens, r.usage
        return time.perf_counter() - t

    def local_one(k: int) -> float:
        p, vi, s = reqs[k]
        t = time.perf_counter()
        generate(lm, [p], GenerationOptions(max_new_tokens=args.tokens),
                 steer=[SteerSpec(vector=vectors[vi], strength=s)])
        return time.perf_counter() - t

    http_one(0)  # warm up
    local_one(0)
    conc, seq, local, lat_http, lat_local = [], [], [], [], []
    try:
        for r in range(args.rounds):
            t = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as ex:
                list(ex.map(http_one, range(args.requests)))
            conc.append(time.perf_counter() - t)
            t = time.perf_counter()
            lat_http += [http_one(k) for k in range(args.requests)]
            seq.append(time.perf_counter() - t)
            t = time.perf_counter()
            lat_local += [local_one(k) for k in range(args.requests)]
            local.append(time.perf_counter() - t)
            print(f"round {r + 1}: concurrent {conc[-1]:.1f}s, sequential {seq[-1]:.1f}s, in-process {local[-1]:.1f}s")
    finally:
        srv.stop()
        engine.stop()
    n, tok = args.requests, args.requests * args.tokens
    c, s_, lo = statistics.median(conc), statistics.median(seq), statistics.median(local)
    print(f"model {lm.name}, {n} requests x {args.tokens} tokens, {args.clients} clients, 8 vectors, "
          f"detector at layer {wl} ({'rescored' if args.rescored else 'live'}), "
          f"batch wait {args.batch_wait_ms:g} ms, max batch seen {engine.stats['max_batch_seen']}, "
          f"{engine.stats['batches']} batches for {engine.stats['requests']} requests, "
          f"threads {torch.get_num_threads()}")
    print(f"concurrent : {n / c:6.2f} req/s  {tok / c:7.1f} tok/s")
    print(f"sequential : {n / s_:6.2f} req/s  {tok / s_:7.1f} tok/s")
    print(f"in-process : {n / lo:6.2f} req/s  {tok / lo:7.1f} tok/s")
    print(f"ratio concurrent / sequential throughput: {s_ / c:.2f}x  (target >= 2x)")
    mh, ml = statistics.median(lat_http), statistics.median(lat_local)
    print(f"per-request latency: server {mh * 1000:.0f} ms vs in-process {ml * 1000:.0f} ms "
          f"-> overhead {(mh - ml) * 1000:+.0f} ms ({mh / ml:.2f}x)")


if __name__ == "__main__":
    main()
