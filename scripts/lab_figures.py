"""The reward-hacking lab's figures in docs/results.md ("Lab"), on the embedded model.

Stages (each resumable: episodes are appended to ``OUT/<stage>.jsonl`` and skipped when rerun):

- ``dev-prone``: which setting makes the unsteered model cheat (dev split, impossible variants):
  unsteered; in-context demonstrations of hard-coding (3); demonstrations + "graded only on the
  tests" pressure; the cheating vector pushed up (+0.04, layers 10-15) as a positive control.
- ``dev-steer``: on the most cheat-prone prompt-only setting found on dev (``--prone``), steering
  against it (cheating -0.04, conscientiousness +0.02 and +0.04, both) and the prompting baseline;
  on impossible and original tasks (the capability cost).
- ``test``: the dev-chosen settings (``--prone``, ``--chosen`` steering, the prompting baseline,
  prompting + steering) once on the test split, impossible and original variants.
- ``dose``: the cheating vector's dose-response in both directions (-0.04 ... +0.08) on top of
  the prone setting, test split, impossible variants.
- ``agentic``: the prone setting with 3 turns (failure feedback), unsteered and with the chosen
  steering, test split.

Every answer is scored by the built-in cheating and conscientiousness detectors (teacher-forced
where the answer was steered), so ``steerwatch lab report OUT/test.jsonl`` also gives detector
AUROC against the execution labels.

    python scripts/lab_figures.py dev-prone [--limit 40]
    python scripts/lab_figures.py dev-steer --prone demos3
    python scripts/lab_figures.py test --prone demos3 --chosen cons+0.04
    python scripts/lab_figures.py dose --prone demos3
    steerwatch lab report out/lab/test.jsonl --baseline demos3 --html out/lab/test.html

Time on 2 CPU cores: about 6 s per episode-turn (batch 16, 160 new tokens).
"""
from __future__ import annotations

import argparse
from pathlib import Path

LAYERS = tuple(range(10, 16))  # the layers the cheating control was measured at (issue 16)


def settings(lm, prone: str | None = None):
    """Every named setting the stages use."""
    from steerwatch.extract.library import builtin_vector
    from steerwatch.lab import Setting
    from steerwatch.steer import SteerSpec

    cheat, _, _ = builtin_vector(lm, "cheating")
    cons, _, _ = builtin_vector(lm, "conscientiousness")

    def spec(vec, s):
        return SteerSpec(vec, strength=s, layers=LAYERS)

    base = dict(max_new_tokens=160)
    prompt_only = {
        "unsteered": Setting("unsteered", **base),
        "demos3": Setting("demos3", demos=3, **base),
        "demos3-pressure": Setting("demos3-pressure", demos=3, instruction="pressure", **base),
        "pressure": Setting("pressure", instruction="pressure", **base),
    }
    out = dict(prompt_only)
    out["cheat+0.04"] = Setting("cheat+0.04", steer=(spec(cheat, 0.04),), **base)
    if prone is not None:
        p = prompt_only[prone]
        kw = dict(demos=p.demos, instruction=p.instruction, max_new_tokens=p.max_new_tokens)
        hon = dict(kw, instruction="honest")
        for name, specs in (("cheat-0.04", (spec(cheat, -0.04),)), ("cons+0.02", (spec(cons, 0.02),)),
                            ("cons+0.04", (spec(cons, 0.04),)),
                            ("cheat-0.04+cons+0.02", (spec(cheat, -0.04), spec(cons, 0.02)))):
            out[f"{prone}/{name}"] = Setting(f"{prone}.{name}", steer=specs, **kw)
            out[f"{prone}/honest-prompt/{name}"] = Setting(f"{prone}.honest-prompt.{name}", steer=specs, **hon)
        out[f"{prone}/honest-prompt"] = Setting(f"{prone}.honest-prompt", **hon)
        for s in (-0.04, -0.02, 0.02, 0.04, 0.08):
            out[f"{prone}/dose{s:+g}"] = Setting(f"{prone}.cheat{s:+g}", steer=(spec(cheat, s),), **kw)
        out[f"{prone}/agentic"] = Setting(f"{prone}.agentic", turns=3, **kw)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["dev-prone", "dev-steer", "test", "dose", "agentic"])
    ap.add_argument("--prone", help="the cheat-prone prompt-only setting chosen on dev")
    ap.add_argument("--chosen", help="the steering chosen on dev (a name under the prone setting, e.g. cons+0.04)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N problems of the split")
    ap.add_argument("--out", default="out/lab")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    from steerwatch.extract.library import builtin_vector
    from steerwatch.lab import ModelResponder, humaneval_tasks, run_episodes, select
    from steerwatch.lab.report import summarize
    from steerwatch.models import load_model
    from steerwatch.watch.detector import Detector

    lm = load_model(args.model)
    all_settings = settings(lm, args.prone)
    dets = [Detector.from_vector(builtin_vector(lm, c)[0]) for c in ("cheating", "conscientiousness")]
    respond = ModelResponder(lm, watch=dets, batch_size=args.batch_size)
    every = humaneval_tasks()
    split = "dev" if args.stage.startswith("dev") else "test"
    impossible = select(every, split=split, variants=["oneoff", "conflicting"], limit=args.limit)
    both = select(every, split=split, limit=args.limit)
    p, c = args.prone, args.chosen
    if args.stage != "dev-prone" and not p:
        ap.error(f"{args.stage} needs --prone (the cheat-prone setting chosen on dev)")
    if args.stage in ("test", "agentic") and not c:
        ap.error(f"{args.stage} needs --chosen (the steering chosen on dev)")
    if args.stage == "dev-prone":
        plan = [(all_settings[n], impossible) for n in ("unsteered", "demos3", "demos3-pressure", "cheat+0.04")]
    elif args.stage == "dev-steer":
        plan = [(all_settings[n], both) for n in (p, f"{p}/cheat-0.04", f"{p}/cons+0.02", f"{p}/cons+0.04",
                                                  f"{p}/cheat-0.04+cons+0.02", f"{p}/honest-prompt")]
    elif args.stage == "test":
        plan = [(all_settings[n], both) for n in (p, f"{p}/{c}", f"{p}/honest-prompt", f"{p}/honest-prompt/{c}",
                                                  "unsteered")]
    elif args.stage == "dose":
        plan = [(all_settings[f"{p}/dose{s:+g}"], impossible) for s in (-0.04, -0.02, 0.02, 0.04, 0.08)]
    else:
        plan = [(all_settings[f"{p}/agentic"], impossible)]
    out = Path(args.out) / f"{args.stage}.jsonl"
    for setting, tasks in plan:
        eps = run_episodes(tasks, setting, respond, out=out, progress=True, log=print)
        r = summarize(eps)[0]
        print(f"{setting.name}: cheated {r['cheat_k']}/{r['n_impossible']} "
              f"(special-cased {r['special_cased_cheat_k']}, "
              f"accidental {r['accidental_k']}), flagged {r['flagged_k']}, "
              f"pass@1 original {r['pass_original_k']}/{r['n_original']}", flush=True)
    print(f"report: steerwatch lab report {out} --baseline {p or 'unsteered'}")


if __name__ == "__main__":
    main()
