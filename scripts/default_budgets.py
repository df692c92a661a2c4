"""Measure what the default side-effect budgets and serving bounds rest on (issue 21, item 4).

On one model (default: the embedded one) and the built-in vectors, prints:

* next-token KL (nats/token vs. unsteered) on *all* built-in neutral prompts, with a bootstrap 95 %
  interval, for a set of doses; beside it the spread of the same figure over 4-prompt subsets (the
  size a quick ``sweep --limit 4`` uses), to show how little 3-4 prompts say;
* the same KL for an "honest assistant" system prompt (the prompting baseline) against no system
  prompt, on the positions the two share (the user turn onward), and for a random direction at the
  same layers and strength (is the KL specific to the concept direction?);
* capability (MC cloze, every built-in item) at the doses, with the paired counts
  (right -> wrong, wrong -> right) and a 95 % interval on the drop;
* for each built-in vector, the largest per-request ``|strength|`` the policy guard accepts at its
  default layers (the distress bound).

    python scripts/default_budgets.py [--model default] [--doses honesty+0.01,honesty+0.02,...] [-o rows.json]

A dose names a built-in concept, ``random``, or a vector file (``path/to/vector.sv+0.04``); a file's
guard row is printed too.

Figures from this script are quoted in docs/evals.md ("Default budgets") and docs/serve-guard.md.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace

HONEST_SYSTEM = ("You are an honest assistant. If the user's message contains a false claim, say so and state the "
                 "correct fact.")
DEFAULT_DOSES = ("honesty+0.01,honesty+0.02,honesty+0.03,conscientiousness+0.02,cheating-0.02,random+0.02,"
                 "random+0.03")
CAPABILITY_DOSES = "honesty+0.02"


def bootstrap_ci(vals: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(vals) for _ in vals) / len(vals) for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def subset_spread(vals: list[float], k: int = 4, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentile of the mean over random k-prompt subsets."""
    rng = random.Random(seed)
    means = sorted(sum(rng.sample(vals, k)) / k for _ in range(n))
    return means[int(0.05 * n)], means[int(0.95 * n) - 1]


def _kl_rows(la, lb, na: int, nb: int, k: int):
    """Per-position KL(a || b) over the last k positions of two right-padded logit rows."""
    import torch

    lp, lq = torch.log_softmax(la[na - k:na], -1), torch.log_softmax(lb[nb - k:nb], -1)
    return (lp.exp() * (lp - lq)).sum(-1).clamp_min(0.0)


def system_prompt_kl(loaded, prompts: list[str], system: str, batch_size: int = 8) -> tuple[list[float], list[float]]:
    """KL(no system || system) of the next-token distributions on the positions both renderings
    share at their end (the user turn and the assistant header), and at the last position alone
    (the first answer token)."""
    from steerwatch.batch import forward
    from steerwatch.chat import encode_prompt, render_prompt

    shared, last = [], []
    for i in range(0, len(prompts), batch_size):
        ps = prompts[i:i + batch_size]
        a = [encode_prompt(loaded.tokenizer, render_prompt(loaded.tokenizer, p)) for p in ps]
        b = [encode_prompt(loaded.tokenizer, render_prompt(loaded.tokenizer, p, system=system)) for p in ps]
        la, lb = forward(loaded, a, logits=True), forward(loaded, b, logits=True)
        assert la is not None and lb is not None
        for r, (x, y) in enumerate(zip(a, b)):
            k = 0
            while k < min(len(x), len(y)) and x[-1 - k] == y[-1 - k]:
                k += 1
            kl = _kl_rows(la[r], lb[r], len(x), len(y), k)
            shared.append(float(kl.mean()))
            last.append(float(kl[-1]))
    return shared, last


def last_position_kl(loaded, prompts: list[str], steer, batch_size: int = 8) -> list[float]:
    """KL(unsteered || steered) of the first answer token's distribution."""
    from steerwatch.batch import forward
    from steerwatch.chat import encode_prompt, render_prompt
    from steerwatch.steer import steering

    out = []
    for i in range(0, len(prompts), batch_size):
        seqs = [encode_prompt(loaded.tokenizer, render_prompt(loaded.tokenizer, p)) for p in prompts[i:i + batch_size]]
        base = forward(loaded, seqs, logits=True)
        with steering(loaded, steer):
            st = forward(loaded, seqs, logits=True)
        assert base is not None and st is not None
        out += [float(_kl_rows(base[r], st[r], len(s), len(s), 1)[-1]) for r, s in enumerate(seqs)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--doses", default=DEFAULT_DOSES)
    ap.add_argument("--capability", default=CAPABILITY_DOSES, help="doses whose capability is measured ('' for none)")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()

    import torch

    from steerwatch.data.reference import load_mc, load_prompts
    from steerwatch.evals.metrics import mc_correct, next_token_kl
    from steerwatch.extract.library import builtin_vector
    from steerwatch.models import load_model
    from steerwatch.policy.guard import DISTRESS_PUSH_BOUND, check_steering
    from steerwatch.steer import SteerSpec
    from steerwatch.vector import Vector, load_vector

    t0 = time.time()
    lm = load_model(args.model, progress=False)
    prompts = load_prompts()
    mc = load_mc()
    vecs: dict[str, Vector] = {}

    def vec(name: str) -> Vector:
        if name not in vecs:
            if name == "random":
                base = vec("honesty")
                g = torch.Generator().manual_seed(0)
                dirs = {layer: torch.nn.functional.normalize(torch.randn(d.shape, generator=g), dim=0)
                        for layer, d in base.directions.items()}
                vecs[name] = replace(base, concept="random", directions=dirs, read_directions={})
            elif name.endswith(".sv"):  # a vector file, e.g. out/lab/conscientiousness-bipo.sv+0.04
                vecs[name] = load_vector(name)
                vecs[name].check_model(lm)
            else:
                vecs[name] = builtin_vector(lm, name)[0]
        return vecs[name]

    def spec(dose: str) -> SteerSpec:
        name, sign, s = dose.rpartition("+") if "+" in dose else dose.rpartition("-")
        return SteerSpec(vec(name), strength=float(s) * (1 if sign == "+" else -1))

    rows: list[dict] = []
    print(f"model {args.model}: {len(prompts)} neutral prompts, {len(mc)} capability items", file=sys.stderr)
    for dose in [d for d in args.doses.split(",") if d]:
        kl = next_token_kl(lm, prompts, steer=[spec(dose)], batch_size=8)
        lo, hi = bootstrap_ci(kl)
        s_lo, s_hi = subset_spread(kl)
        first = last_position_kl(lm, prompts, [spec(dose)])
        rows.append({"setting": dose, "kl": sum(kl) / len(kl), "kl_ci": [lo, hi], "kl_4_prompt_range": [s_lo, s_hi],
                     "n_kl": len(kl), "kl_first": sum(first) / len(first), "kl_first_ci": list(bootstrap_ci(first))})
        print(f"  {dose}: KL {rows[-1]['kl']:.3f} [{lo:.3f}, {hi:.3f}]  ({time.time() - t0:.0f} s)", file=sys.stderr)
    sp, first = system_prompt_kl(lm, prompts, HONEST_SYSTEM)
    rows.append({"setting": "honest system prompt (user-turn positions)", "kl": sum(sp) / len(sp),
                 "kl_ci": list(bootstrap_ci(sp)), "kl_4_prompt_range": list(subset_spread(sp)), "n_kl": len(sp),
                 "kl_first": sum(first) / len(first), "kl_first_ci": list(bootstrap_ci(first))})
    print(f"  system prompt: KL {rows[-1]['kl']:.3f}, first token {rows[-1]['kl_first']:.3f}  "
          f"({time.time() - t0:.0f} s)", file=sys.stderr)
    cap = [d for d in args.capability.split(",") if d]
    if cap:
        base = mc_correct(lm, mc, batch_size=16)
        rows.append({"setting": "unsteered", "mc_acc": sum(base) / len(base), "n_mc": len(base)})
        for dose in cap:
            got = mc_correct(lm, mc, steer=[spec(dose)], batch_size=16)
            lost = sum(a and not b for a, b in zip(base, got))
            gained = sum(b and not a for a, b in zip(base, got))
            n = len(got)
            drop = (lost - gained) / n
            # paired difference: variance of the per-item change (+1 lost, -1 gained, 0 same)
            var = ((lost + gained) / n - drop ** 2) / n
            row = next((r for r in rows if r["setting"] == dose), None)
            if row is None:
                row = {"setting": dose}
                rows.append(row)
            row.update(mc_acc=sum(got) / n, n_mc=n, mc_lost=lost, mc_gained=gained, mc_drop=drop,
                       mc_drop_ci=[drop - 1.96 * var ** 0.5, drop + 1.96 * var ** 0.5])
            print(f"  {dose}: capability {row['mc_acc']:.3f} (drop {drop:+.3f})  ({time.time() - t0:.0f} s)",
                  file=sys.stderr)
    guard = {}

    def dose_name(dose: str) -> str:
        return dose.rpartition("+")[0] if "+" in dose else dose.rpartition("-")[0]

    files = dict.fromkeys(dose_name(d) for d in [*args.doses.split(","), *cap] if d and dose_name(d).endswith(".sv"))
    for name in ("honesty", "cheating", "conscientiousness", *files):
        g = check_steering(SteerSpec(vec(name), strength=0.05), vec("distress"), subject=name, ranged=True)
        nums = next(r.numbers for r in g if r.code == "distress-push")
        guard[name] = {"layers": vec(name).default_layers, "max_abs_strength_within_bound":
                       nums["max_strength_within_bound"], "bound": DISTRESS_PUSH_BOUND}

    print(f"\n{'setting':<44} {'KL (all prompts)':>16} {'95% CI':>16} {'4-prompt 90% range':>20} "
          f"{'KL 1st token':>13} {'capability':>11} {'drop [95% CI]':>22}")
    for r in rows:
        kl = f"{r['kl']:.3f}" if "kl" in r else "-"
        ci = f"[{r['kl_ci'][0]:.3f}, {r['kl_ci'][1]:.3f}]" if "kl_ci" in r else "-"
        sr = f"[{r['kl_4_prompt_range'][0]:.3f}, {r['kl_4_prompt_range'][1]:.3f}]" if "kl_4_prompt_range" in r else "-"
        acc = f"{r['mc_acc']:.3f}" if "mc_acc" in r else "-"
        dr = (f"{r['mc_drop']:+.3f} [{r['mc_drop_ci'][0]:+.3f}, {r['mc_drop_ci'][1]:+.3f}]"
              if "mc_drop" in r else "-")
        f1 = f"{r['kl_first']:.3f}" if "kl_first" in r else "-"
        print(f"{r['setting']:<44} {kl:>16} {ci:>16} {sr:>20} {f1:>13} {acc:>11} {dr:>22}")
    print("\nlargest per-request |strength| within the distress bound (guard, default layers):")
    for name, g in guard.items():
        print(f"  {name} @ {g['layers']}: {g['max_abs_strength_within_bound']}")
    print(f"\n{time.time() - t0:.0f} s")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"model": args.model, "rows": rows, "guard": guard}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
