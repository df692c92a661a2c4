"""Lab throughput: episodes per minute, batched generation + parallel sandboxes vs. one at a time.

    python bench/bench_lab.py [--model default] [--tasks 16] [--tokens 96] [--batch 16] [--workers 2]

Runs the same single-turn episodes (the first ``--tasks`` dev impossible tasks, greedy, unsteered,
watched by no detector) twice, one way after the other on the same loaded model:

- *one at a time*: each episode's answer generated alone (batch 1) and its code run in one sandbox;
- *batched*: answers generated ``--batch`` at a time and the sandboxes run ``--workers`` at a time.

It prints episodes/minute for both and their ratio, plus the sandbox stage alone (the same programs,
1 worker vs. ``--workers``), and checks that both ways gave the same labels (greedy decoding in a
batch can differ from alone only by floating-point ties; the count of differing answers is printed).
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    from steerwatch.lab import ModelResponder, Setting, humaneval_tasks, run_episodes, select
    from steerwatch.lab.sandbox import run_many
    from steerwatch.lab.tasks import program_for
    from steerwatch.models import load_model

    lm = load_model(args.model, progress=False)
    tasks = select(humaneval_tasks(), split="dev", variants=["oneoff", "conflicting"])[: args.tasks]
    setting = Setting("bench", max_new_tokens=args.tokens)

    def timed(batch: int, workers: int, chunk: int):
        t = time.perf_counter()
        eps = run_episodes(tasks, setting, ModelResponder(lm, batch_size=batch), workers=workers, chunk=chunk)
        return eps, time.perf_counter() - t

    one, t_one = timed(1, 1, 1)
    many, t_many = timed(args.batch, args.workers, max(args.batch, 32))
    n = len(tasks)
    print(f"{n} episodes, {args.tokens} new tokens, model {lm.name}")
    print(f"one at a time: {t_one:7.1f} s  {60 * n / t_one:6.2f} episodes/min")
    print(f"batched:       {t_many:7.1f} s  {60 * n / t_many:6.2f} episodes/min  "
          f"(batch {args.batch}, {args.workers} sandbox workers)")
    print(f"speed-up: {t_one / t_many:.2f}x")
    differ = sum(a["turns"][0]["response"] != b["turns"][0]["response"] for a, b in zip(one, many))
    labels = sum(a["cheated"] != b["cheated"] for a, b in zip(one, many))
    print(f"answers that differ between the two ways: {differ}/{n}; cheat labels that differ: {labels}/{n}")

    jobs = [(program_for(t, e["turns"][0]["code"] or "pass"), t.runnable_tests()) for t, e in zip(tasks, many)]
    jobs = jobs * 4
    t = time.perf_counter()
    run_many(jobs, workers=1)
    s1 = time.perf_counter() - t
    t = time.perf_counter()
    run_many(jobs, workers=args.workers)
    s2 = time.perf_counter() - t
    print(f"sandbox alone ({len(jobs)} programs): 1 worker {s1:.1f} s, {args.workers} workers {s2:.1f} s, "
          f"speed-up {s1 / s2:.2f}x")


if __name__ == "__main__":
    main()
