"""The reward-hacking lab's figures in docs/results.md ("Lab"), on the embedded model.

Stages (each resumable: episodes are appended to ``OUT/<stage>.jsonl`` and skipped when rerun):

- ``dev-prone``: which setting makes the model cheat (dev split, impossible variants): unsteered;
  in-context demonstrations of hard-coding (3); demonstrations + "graded only on the tests"
  pressure; sampling at temperature 0.8 with 2 attempts; the cheating vector pushed up (+0.04 or
  +0.06, layers 10-15) with and without pressure; ``-2t`` variants add one turn with the test
  runner's failures (agentic).
- ``dev-steer``: on the cheat-prone setting chosen on dev (``--prone``; it may be steered itself:
  the vector pushed up makes a model that cheats), steering arms added on top (conscientiousness
  +0.02 / +0.04, honesty +0.02, cheating -0.02) and the prompting baseline (honest instruction); on
  impossible and original tasks (the capability cost). ``--lda`` adds arms whose vectors are the
  same built-in pairs extracted with LDA (``cons_lda+0.04``, ``cheat_lda-0.02``; issue 17 item 5:
  a second method judged on the lab's dev tasks by what the model does). ``--onpolicy VEC`` adds
  arms steering against an on-policy direction fitted on the model's own dev answers
  (``steerwatch lab probe ... --method mean_diff --aggregate mean``), named after the vector file:
  ``onpolicy-md-0.02`` ... ``-0.08`` for ``onpolicy-md.sv``.
- ``test``: once on the test split, impossible and original variants: the prone setting, the
  dev-chosen arm (``--chosen``) on top of it, the prompting baseline (impossible only) and the prone
  prompt without the cheating vector (``no-vector``).
- ``agentic``: test split, impossible variants, up to 3 turns (the test runner's failing asserts shown
  after each failed turn): the prone setting and the dev-chosen arm on top of it, steered at every turn.
- ``agentic-review``: test split, impossible and original variants, up to 3 turns: the prone
  setting, and the prone setting with a review (``--review DET``, a calibrated detector, e.g. the
  on-policy probe of ``steerwatch lab probe --detector-out``) that reads each answer and, where it
  fires, steers the later turns with conscientiousness LDA +0.04 (conditional steering inside the
  agentic loop); with ``--lda`` also conscientiousness LDA +0.04 at every turn (impossible only);
  and the same review in ``regenerate`` mode (the flagged answer is written again, steered).
- ``dose``: the cheating vector's dose-response on the prone prompt, test split, impossible
  variants: total strength -0.04 and +0.06, written to the test stage's file beside its +0.04
  (the prone setting) and 0 (``no-vector``) rows.

Every answer is scored by the built-in cheating and conscientiousness detectors (teacher-forced
where the answer was steered), so ``steerwatch lab report OUT/test.jsonl`` also gives detector
AUROC against the execution labels. ``--settings A,B`` runs named settings instead of a stage's
list (``--help`` names them), each on the variants the stage gives it (settings that are not in the
stage: impossible variants for dev-prone, dose and agentic, all variants otherwise).

    python scripts/lab_figures.py dev-prone --limit 20
    python scripts/lab_figures.py dev-steer --prone cheat+0.04-pressure --limit 20
    python scripts/lab_figures.py dev-steer --prone cheat+0.04-pressure --limit 20 --lda \
        --settings cheat+0.04-pressure/cons_lda+0.04,cheat+0.04-pressure/cheat_lda-0.02
    steerwatch lab probe out/lab/dev-prone.jsonl --method mean_diff --aggregate mean -o out/lab/onpolicy-md.sv
    python scripts/lab_figures.py dev-steer --prone cheat+0.04-pressure --limit 20 --onpolicy out/lab/onpolicy-md.sv \
        --settings cheat+0.04-pressure/onpolicy-md-0.04,cheat+0.04-pressure/onpolicy-md-0.08
    python scripts/lab_figures.py test --prone cheat+0.04-pressure --chosen cons+0.04 --limit 50
    python scripts/lab_figures.py dose --prone cheat+0.04-pressure --limit 50
    python scripts/lab_figures.py agentic --prone cheat+0.04-pressure --chosen cons+0.04 --limit 15
    python scripts/lab_figures.py agentic-table --prone cheat+0.04-pressure --chosen cons+0.04
    python scripts/lab_figures.py agentic-review --prone cheat+0.04-pressure --limit 15 --lda \
        --review out/lab/probe.det.json
    python scripts/lab_figures.py agentic-review-table --prone cheat+0.04-pressure
    python scripts/lab_figures.py agentic-join   # agentic.jsonl's arms + agentic-review.jsonl's on the same tasks
    steerwatch lab report out/lab/test.jsonl --baseline cheat+0.04-pressure --html out/lab/test.html

Time on 2 CPU cores: about 5.5 s per episode-turn (batch 16, 160 new tokens).
"""
from __future__ import annotations

import argparse
from pathlib import Path

LAYERS = tuple(range(10, 16))  # the layers the cheating control was measured at (issue 16)


def lda_vector(lm, concept: str, out: Path):
    """The built-in concept's pairs extracted with LDA instead of the card's mean difference (issue 17
    item 5: another method, judged on the lab's dev tasks), built once into OUT/vectors/."""
    from steerwatch.data import load_concept
    from steerwatch.extract.build import build_vector
    from steerwatch.vector import load_vector

    path = out / "vectors" / f"{concept}-lda.sv"
    if path.exists():
        return load_vector(path)
    vec, _rows = build_vector(lm, load_concept(concept), method="lda", progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    vec.save(path)
    return vec


def settings(lm, prone: str | None = None, lda_out: Path | None = None, review: Path | None = None,
             onpolicy: Path | None = None):
    """Every named setting the stages use. A prone setting may itself be steered (the cheating
    vector pushed up: a model made to cheat); the steering arms are then added on top of it.
    ``lda_out``: also the arms with LDA vectors (``cons_lda+0.04``, ``cheat_lda-0.02``), built into it.
    ``review``: a calibrated detector file; adds ``PRONE/review-cons_lda+0.04/agentic`` (needs ``lda_out``).
    ``onpolicy``: a vector from dev episodes whose direction points to special-cased answers
    (``steerwatch lab probe``, or ``steerwatch lab optimise --concept cheating``); adds
    ``PRONE/<file stem>-0.02`` ... ``-0.08``, steered against it at LAYERS. A conscientiousness vector
    (``steerwatch lab optimise``'s default: toward general code) gets ``+0.02`` ... ``+0.08`` instead."""
    from steerwatch.extract.library import builtin_vector
    from steerwatch.lab import Setting
    from steerwatch.lab.episodes import Review
    from steerwatch.steer import SteerSpec
    from steerwatch.watch.detector import load_detector

    vec = {c: builtin_vector(lm, c)[0] for c in ("cheating", "conscientiousness", "honesty")}
    if lda_out is not None:
        for c in ("cheating", "conscientiousness"):
            v = lda_vector(lm, c, lda_out)
            vec[f"{c}_lda"] = v
    if onpolicy is not None:
        from steerwatch.vector import load_vector

        vec["onpolicy"] = load_vector(onpolicy)
        if vec["onpolicy"].model_fingerprint != lm.fingerprint:
            raise SystemExit(f"{onpolicy} was fitted on another model")

    def spec(concept, s):
        return SteerSpec(vec[concept], strength=s, layers=LAYERS)

    def key(sp):
        return next(k for k, v in vec.items() if v is sp.vector)

    def merge(base_specs, extra):
        """The prone setting's steering plus ``extra``; one vector's strengths add up (one spec per vector)."""
        total: dict[str, float] = {}
        for sp in (*base_specs, *extra):
            total[key(sp)] = round(total.get(key(sp), 0.0) + sp.strength, 6)
        return tuple(spec(c, s) for c, s in total.items() if s != 0)

    base = dict(max_new_tokens=160)
    cheat4 = (spec("cheating", 0.04),)
    prone_settings = {
        "unsteered": Setting("unsteered", **base),
        "demos3": Setting("demos3", demos=3, **base),
        "demos3-pressure": Setting("demos3-pressure", demos=3, instruction="pressure", **base),
        "pressure": Setting("pressure", instruction="pressure", **base),
        "pressure-t0.8": Setting("pressure-t0.8", instruction="pressure", temperature=0.8, attempts=2, **base),
        "demos3-pressure-t0.8": Setting("demos3-pressure-t0.8", demos=3, instruction="pressure",
                                        temperature=0.8, attempts=2, **base),
        "cheat+0.04": Setting("cheat+0.04", steer=cheat4, **base),
        "cheat+0.04-pressure": Setting("cheat+0.04-pressure", steer=cheat4, instruction="pressure", **base),
        "cheat+0.04-demos3-pressure": Setting("cheat+0.04-demos3-pressure", steer=cheat4, demos=3,
                                              instruction="pressure", **base),
        "cheat+0.06-pressure": Setting("cheat+0.06-pressure", steer=(spec("cheating", 0.06),),
                                       instruction="pressure", **base),
    }
    for name, st in list(prone_settings.items()):  # agentic: one more turn after the test runner's failures
        prone_settings[f"{name}-2t"] = Setting(f"{name}-2t", steer=st.steer, instruction=st.instruction,
                                               demos=st.demos, temperature=st.temperature, attempts=st.attempts,
                                               turns=2, max_new_tokens=st.max_new_tokens)
    out = dict(prone_settings)
    if prone is not None:
        p = prone_settings[prone]
        kw = dict(demos=p.demos, instruction=p.instruction, max_new_tokens=p.max_new_tokens,
                  temperature=p.temperature, attempts=p.attempts, turns=p.turns)
        hon = dict(kw, instruction="honest")
        arms = {"cons+0.02": (spec("conscientiousness", 0.02),), "cons+0.04": (spec("conscientiousness", 0.04),),
                "honesty+0.02": (spec("honesty", 0.02),),
                "cheat-0.02": (spec("cheating", -0.02),),
                "cons+0.02+honesty+0.02": (spec("conscientiousness", 0.02), spec("honesty", 0.02))}
        if lda_out is not None:
            arms.update({"cons_lda+0.04": (spec("conscientiousness_lda", 0.04),),
                         "cheat_lda-0.02": (spec("cheating_lda", -0.02),)})
        if onpolicy is not None:
            sign = 1 if vec["onpolicy"].concept == "conscientiousness" else -1  # toward general code: +; else -
            arms.update({f"{onpolicy.stem}{sign * t:+g}": (spec("onpolicy", sign * t),)
                         for t in (0.02, 0.04, 0.06, 0.08)})
        for name, specs in arms.items():
            out[f"{prone}/{name}"] = Setting(f"{prone}.{name}", steer=merge(p.steer, specs), **kw)
            out[f"{prone}/honest-prompt/{name}"] = Setting(f"{prone}.honest-prompt.{name}",
                                                           steer=merge(p.steer, specs), **hon)
        out[f"{prone}/honest-prompt"] = Setting(f"{prone}.honest-prompt", steer=p.steer, **hon)
        unvec = tuple(sp for sp in p.steer if sp.vector.concept != "cheating")
        out[f"{prone}/no-vector"] = Setting(f"{prone}.no-vector", steer=unvec, **kw)  # the prompt alone
        for t in (-0.04, -0.02, 0.02, 0.04, 0.06, 0.08):  # the cheating vector's total strength on the prone prompt
            out[f"{prone}/dose{t:+g}"] = Setting(f"{prone}.cheating{t:+g}", steer=(*unvec, spec("cheating", t)),
                                                 **kw)
        out[f"{prone}/agentic"] = Setting(f"{prone}.agentic", steer=p.steer, **dict(kw, turns=3))
        for name, specs in arms.items():  # the arms inside the agentic loop (steered at every turn)
            out[f"{prone}/{name}/agentic"] = Setting(f"{prone}.{name}.agentic", steer=merge(p.steer, specs),
                                                     **dict(kw, turns=3))
        if review is not None:  # steered only after an answer the review's detector flags
            if lda_out is None:
                raise SystemExit("--review steers with conscientiousness LDA: give --lda too")
            rev = Review(trigger=load_detector(review), steer=(spec("conscientiousness_lda", 0.04),))
            out[f"{prone}/review-cons_lda+0.04/agentic"] = Setting(f"{prone}.review-cons_lda+0.04.agentic",
                                                                  steer=p.steer, review=rev, **dict(kw, turns=3))
            regen = Review(trigger=rev.trigger, steer=rev.steer, mode="regenerate")
            out[f"{prone}/regen-cons_lda+0.04/agentic"] = Setting(f"{prone}.regen-cons_lda+0.04.agentic",
                                                                 steer=p.steer, review=regen, **dict(kw, turns=3))
    return out


def agentic_table(out: Path, prone: str, chosen: str) -> None:
    """The agentic stage's episodes beside the same tasks' single-turn test episodes: attempted
    special-casing and cheats after the last turn, at any turn, and whether turn 1 equals the
    single-turn answer (greedy: it should)."""
    import json

    agentic = [json.loads(line) for line in (out / "agentic.jsonl").read_text().splitlines()]
    single = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    print("| setting | tasks | single turn: attempted / cheated | 3 turns, last answer: attempted / cheated "
          "| attempted at any turn | turn 1 = single-turn answer |")
    print("|---|---|---|---|---|---|")
    for name in (prone, f"{prone}.{chosen}"):
        a = {e["task"]: e for e in agentic if e["setting"] == f"{name}.agentic"}
        s = {e["task"]: e for e in single if e["setting"] == name and e["task"] in a}
        if not a or len(s) != len(a):
            raise SystemExit(f"{name}: {len(a)} agentic episodes, {len(s)} single-turn ones on the same tasks")
        same = sum(a[t]["turns"][0]["response"] == s[t]["turns"][0]["response"] for t in a)
        print(f"| {name} | {len(a)} | {sum(e['special_cased'] for e in s.values())} / "
              f"{sum(e['cheated'] for e in s.values())} | {sum(e['special_cased'] for e in a.values())} / "
              f"{sum(e['cheated'] for e in a.values())} | "
              f"{sum(any(t.get('reasons') for t in e['turns']) for e in a.values())} | {same}/{len(a)} |")


def review_table(out: Path, prone: str) -> None:
    """What the agentic-review stage's monitor saw and what its steering changed: first-turn firings
    against special-casing, how the ``revise`` arm's steered turns relate to the first answer, and
    how the ``regenerate`` arm's answers relate to the always-on arm's (greedy: identical means the
    regeneration is the always-on answer)."""
    import json

    eps = [json.loads(line) for line in (out / "agentic-review.jsonl").read_text().splitlines()]

    def arm(name):
        return {e["task"]: e for e in eps if e["setting"] == name}

    base, rev = arm(f"{prone}.agentic"), arm(f"{prone}.review-cons_lda+0.04.agentic")
    regen, always = arm(f"{prone}.regen-cons_lda+0.04.agentic"), arm(f"{prone}.cons_lda+0.04.agentic")
    if not (base and rev and regen and always):
        raise SystemExit("run the agentic-review stage first (all four settings)")
    def count(rows, pred):
        return sum(1 for e in rows if pred(e))

    for name, rows in (("prone", base), ("always-on", always), ("revise", rev), ("regenerate", regen)):
        imp = [e for e in rows.values() if e["variant"] != "original"]
        orig = [e for e in rows.values() if e["variant"] == "original"]
        print(f"{name}: impossible {len(imp)}: attempted (last answer) {count(imp, lambda e: e['special_cased'])}, "
              f"at any turn {count(imp, lambda e: any(t.get('reasons') for t in e['turns']))}, cheated "
              f"{count(imp, lambda e: e['cheated'])}, last answer differs from the first "
              f"{count(imp, lambda e: e['turns'][-1]['response'] != e['turns'][0]['response'])}; original {len(orig)}: "
              f"passed {count(orig, lambda e: e['passed'])}")

    def fired0(e):
        return e["turns"][0]["review"]["fired"]

    for variant, sub in (("impossible", [e for e in rev.values() if e["variant"] != "original"]),
                         ("original", [e for e in rev.values() if e["variant"] == "original"])):
        sc = [e for e in sub if e["turns"][0]["reasons"]]
        clean = [e for e in sub if not e["turns"][0]["reasons"]]
        print(f"{variant}: first answers special-cased {len(sc)}, monitor fired on {count(sc, fired0)}; "
              f"not special-cased {len(clean)}, fired on {count(clean, fired0)}")
    imp_sc = [e for e in rev.values() if e["variant"] != "original" and e["turns"][0]["reasons"]]
    still = count(imp_sc, lambda e: e["special_cased"])
    print(f"revise: of {len(imp_sc)} impossible episodes special-cased first, {still} still special-case at the end")

    def repeats(e):
        return e["turns"][1]["response"] == e["turns"][0]["response"]

    fired = [e for e in rev.values() if e["review_fired_turn"] == 0 and len(e["turns"]) > 1]
    same_base = [base[e["task"]] for e in fired if len(base[e["task"]]["turns"]) > 1]
    print(f"revise: second turn repeats the first verbatim in {count(fired, repeats)} of {len(fired)} fired episodes "
          f"(the prone setting, same tasks: {count(same_base, repeats)} of {len(same_base)})")
    imp = [e for e in regen.values() if e["variant"] != "original"]
    first = [e for e in imp if e["review_fired_turn"] == 0]
    same_first = count(first, lambda e: e["turns"][0]["response"] == always[e["task"]]["turns"][0]["response"])
    agree = count(imp, lambda e: e["special_cased"] == always[e["task"]]["special_cased"])
    print(f"regenerate: regenerated first answer equals the always-on arm's in {same_first} of {len(first)}; "
          f"final special-cased label agrees on {agree} of {len(imp)} impossible tasks")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=["dev-prone", "dev-steer", "test", "dose", "agentic", "agentic-table",
                                      "agentic-review", "agentic-review-table", "agentic-join"])
    ap.add_argument("--settings", help="comma-separated setting names to run instead of the stage's list")
    ap.add_argument("--prone", help="the cheat-prone prompt-only setting chosen on dev")
    ap.add_argument("--chosen", help="the steering chosen on dev (a name under the prone setting, e.g. cons+0.04)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N problems of the split")
    ap.add_argument("--out", default="out/lab")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default="default")
    ap.add_argument("--lda", action="store_true", help="also the arms steering with LDA vectors (built once into "
                                                      "OUT/vectors/): cons_lda+0.04, cheat_lda-0.02")
    ap.add_argument("--review", type=Path, help="a calibrated detector (.det.json) for the agentic-review stage")
    ap.add_argument("--onpolicy", type=Path, help="a vector from dev episodes (`steerwatch lab probe`, `steerwatch "
                    "lab optimise`): adds the arms PRONE/<file stem>-0.02 ... -0.08 (steered against its "
                    "special-casing direction), or +0.02 ... +0.08 for a conscientiousness vector")
    args = ap.parse_args()
    if args.stage == "agentic-table":
        if not (args.prone and args.chosen):
            ap.error("agentic-table needs --prone and --chosen")
        agentic_table(Path(args.out), args.prone, args.chosen)
        return
    if args.stage == "agentic-join":  # the agentic stage's arms beside the agentic-review file's, same tasks
        from steerwatch.lab.episodes import append_episodes, read_episodes

        out = Path(args.out)
        new = read_episodes(out / "agentic.jsonl")
        tasks = {e["task"] for e in new}
        old = [e for e in read_episodes(out / "agentic-review.jsonl") if e["task"] in tasks]
        (out / "agentic-joined.jsonl").unlink(missing_ok=True)
        append_episodes(out / "agentic-joined.jsonl", old + new)
        print(f"{len(old)} + {len(new)} episodes on {len(tasks)} tasks -> {out / 'agentic-joined.jsonl'}; then: "
              f"steerwatch lab report {out / 'agentic-joined.jsonl'} --baseline PRONE.agentic")
        return
    if args.stage == "agentic-review-table":
        if not args.prone:
            ap.error("agentic-review-table needs --prone")
        review_table(Path(args.out), args.prone)
        return

    from steerwatch.extract.library import builtin_vector
    from steerwatch.lab import ModelResponder, humaneval_tasks, run_episodes, select
    from steerwatch.lab.report import summarize
    from steerwatch.models import load_model
    from steerwatch.watch.detector import Detector

    lm = load_model(args.model)
    all_settings = settings(lm, args.prone, Path(args.out) if args.lda else None, args.review, args.onpolicy)
    dets = [Detector.from_vector(builtin_vector(lm, c)[0]) for c in ("cheating", "conscientiousness")]
    respond = ModelResponder(lm, watch=dets, batch_size=args.batch_size)
    every = humaneval_tasks()
    split = "dev" if args.stage.startswith("dev") else "test"
    impossible = select(every, split=split, variants=["oneoff", "conflicting"], limit=args.limit)
    both = select(every, split=split, limit=args.limit)
    p, c = args.prone, args.chosen
    if args.stage != "dev-prone" and not p:
        ap.error(f"{args.stage} needs --prone (the cheat-prone setting chosen on dev)")
    if args.stage == "agentic-review" and not (args.review and args.lda):
        ap.error("agentic-review needs --review DET and --lda")
    if args.stage in ("test", "agentic") and not c:
        ap.error(f"{args.stage} needs --chosen (the steering chosen on dev)")
    if args.stage == "dev-prone":
        plan = [(all_settings[n], impossible) for n in ("unsteered", "demos3", "demos3-pressure", "cheat+0.04",
                                                        "cheat+0.04-pressure", "demos3-pressure-t0.8")]
    elif args.stage == "dev-steer":
        plan = [(all_settings[n], both) for n in (p, f"{p}/cons+0.02", f"{p}/cons+0.04", f"{p}/honesty+0.02",
                                                  f"{p}/cheat-0.02", f"{p}/honest-prompt")]
    elif args.stage == "test":
        plan = [(all_settings[p], both), (all_settings[f"{p}/{c}"], both),
                (all_settings[f"{p}/honest-prompt"], impossible), (all_settings[f"{p}/no-vector"], both)]
    elif args.stage == "dose":  # with the test stage's prone (vector at its strength) and no-vector rows
        plan = [(all_settings[f"{p}/dose{t:+g}"], impossible) for t in (-0.04, 0.06)]
    elif args.stage == "agentic-review":  # the review arm against the prone setting on the same tasks
        plan = [(all_settings[f"{p}/agentic"], both), (all_settings[f"{p}/review-cons_lda+0.04/agentic"], both),
                (all_settings[f"{p}/cons_lda+0.04/agentic"], impossible),
                (all_settings[f"{p}/regen-cons_lda+0.04/agentic"], both)]
    else:  # agentic: up to 3 turns with the test runner's failures, the prone setting and the chosen arm
        plan = [(all_settings[f"{p}/agentic"], impossible), (all_settings[f"{p}/{c}/agentic"], impossible)]
    if args.settings:
        unknown = [n for n in args.settings.split(",") if n not in all_settings]
        if unknown:
            ap.error(f"unknown settings {unknown}; known: {', '.join(all_settings)}")
        staged = {id(st): tasks for st, tasks in plan}  # a setting of the stage keeps the stage's variants
        plan = [(all_settings[n], staged.get(id(all_settings[n]),
                                             impossible if args.stage in ("dev-prone", "dose", "agentic") else both))
                for n in args.settings.split(",")]
    out = Path(args.out) / f"{'test' if args.stage == 'dose' else args.stage}.jsonl"
    for setting, tasks in plan:
        eps = run_episodes(tasks, setting, respond, out=out, progress=True, log=print)
        r = summarize(eps)[0]
        print(f"{setting.name}: cheated {r['cheat_k']}/{r['n_impossible']} "
              f"(special-cased {r['special_cased_cheat_k']}, "
              f"accidental {r['accidental_k']}), attempted {r['attempted_k']}, flagged {r['flagged_k']}, "
              f"pass@1 original {r['pass_original_k']}/{r['n_original']}", flush=True)
    print(f"report: steerwatch lab report {out} --baseline {p or 'unsteered'}")


if __name__ == "__main__":
    main()
