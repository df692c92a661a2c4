from __future__ import annotations

from pathlib import Path

import typer

from ..evals.budgets import DEFAULT_MAX_CAPABILITY_DROP, DEFAULT_MAX_KL, MIN_BUDGET_PROMPTS
from .app import app
from .common import (
    Outputs,
    check_engine,
    check_input_file,
    check_output_path,
    console,
    friendly,
    load,
    note,
    out,
    parse_floats,
    print_table,
    require_modules,
    start_engine,
    stop_engine,
)
from .options import Device, Dtype, Model

OPEN_HELP = ("Open-ended prompts to answer at every setting and score (rule outcomes, coherence, detectors): a "
             "bait-format JSONL file (id, prompt, truth_markers, optional claim and split; see docs/evals.md), or "
             "'builtin' for the built-in sycophancy bait set.")
TABLE_COLS = (("behaviour", "behaviour", ".3f"), ("kl", "KL", ".4f"), ("ppl", "ppl", ".2f"),
              ("mc_acc", "capability", ".3f"), ("share_corrected", "corrected", ".2f"),
              ("share_rejected", "rejected", ".2f"), ("share_agreed", "agreed", ".2f"),
              ("share_evasive", "evasive", ".2f"), ("judge_share_corrected", "judge corr.", ".2f"),
              ("judge_share_agreed", "judge agreed", ".2f"), ("judge_share_evasive", "judge evasive", ".2f"),
              ("judge_rule_agreement", "judge=rule", ".2f"), ("coherent", "coherent", ".2f"),
              ("answer_ppl_median", "answer ppl", ".1f"))


def load_open(spec: str | None, *, split: str | None, limit: int | None) -> list:
    """Open-ended items: a bait-format file, 'builtin', or none."""
    from ..evals.bait import load_bait

    if spec is None:
        if split is not None:
            from ..errors import SteerwatchError

            raise SteerwatchError("--open-split needs --open FILE (or --open builtin)")
        return []
    return load_bait(None if spec == "builtin" else Path(spec), split=split)[:limit]


JUDGE_URL_HELP = ("An OpenAI-compatible endpoint (API root, e.g. http://127.0.0.1:8000/v1) whose model labels "
                  "every open-ended answer corrected/rejected/agreed/evasive, next to the rule scorer; needs --open "
                  "and --judge-model.")


def make_judge(url: str | None, model: str | None, key_env: str | None, timeout: float, has_open: bool):
    """The LLM judge from the --judge-* options, or None; checked before the model loads."""
    from ..errors import SteerwatchError

    if url is None:
        if model is not None or key_env is not None:
            raise SteerwatchError("--judge-model/--judge-key-env need --judge-url (the judge's endpoint)")
        return None
    if model is None:
        raise SteerwatchError("--judge-url needs --judge-model: the judge's model name as the endpoint knows it")
    if not has_open:
        raise SteerwatchError("the LLM judge labels open-ended answers: give --open FILE (or --open builtin) too")
    from ..evals.judge import Judge

    return Judge(url, model, api_key_env=key_env, timeout=timeout)


def read_detectors(paths: list[Path] | None) -> list:
    """The --detector files, read before the model loads (they are checked against it after)."""
    from ..watch.detector import load_detector

    return [load_detector(p) for p in paths or []]


def check_detectors(dets: list, loaded) -> list:
    for d in dets:
        d.vector.check_model(loaded)
    return dets


AB_ORDERS_HELP = ("given: each A/B item as written (the CAA protocol); both: also with its two options swapped, "
                  "averaging the two probabilities of the behaviour-matching answer, which cancels a model's "
                  "preference for one letter.")
SCORING_HELP = ("cloze: the choice whose text is most likely as the reply (options not shown); letters: the most "
                "probable option letter with the options shown (small models often answer one letter regardless).")


def side_effect_sets(*, neutral: Path | None, reference: Path | None, capability: Path | None,
                     limit: int | None) -> dict:
    from ..data.reference import load_mc, load_prompts, load_reference_text

    return dict(neutral_prompts=load_prompts(neutral)[:limit], reference_texts=load_reference_text(reference)[:limit],
                mc_items=load_mc(capability)[:limit])


def read_ab(path: Path | None, limit: int | None) -> list:
    from ..errors import SteerwatchError
    from ..io import read_json

    if path is None:
        return []
    items = read_json(path)
    if not isinstance(items, list) or not items or not all(isinstance(x, dict) for x in items):
        raise SteerwatchError(f"{path}: must be a JSON list of CAA A/B items (objects with question, "
                              "answer_matching_behavior, answer_not_matching_behavior)")
    for i, it in enumerate(items, 1):
        missing = [k for k in ("question", "answer_matching_behavior", "answer_not_matching_behavior") if k not in it]
        if missing:
            raise SteerwatchError(f"{path}: item {i} lacks {', '.join(missing)}")
    return items[:limit]


def print_rows(rows: list, title: str) -> None:
    from rich.table import Table

    cols = [c for c in TABLE_COLS if any(r.get(c[0]) is not None for r in rows)]
    dets = sorted({k for r in rows for k in r if k.startswith("det_") and r[k] is not None})
    head = ["setting", "layers", "strength", *(c[1] for c in cols), *dets]
    body = []
    for r in rows:
        cells = [("-" if r.get(k) is None else format(r[k], f)) for k, _, f in cols]
        cells += [("-" if r.get(k) is None else f"{r[k]:.3f}") for k in dets]
        body.append([r["setting"], ",".join(map(str, r["resolved_layers"])), f"{r['strength']:+g}", *cells])
    table = Table(*head, title=title)
    for cells in body:
        table.add_row(*cells)
    print_table(table)  # never squeeze numbers into ellipses: a narrow terminal wraps the lines instead


@app.command("sweep")
@friendly
def sweep_cmd(
    vector: Path = typer.Argument(..., help="The vector file to sweep."),
    ab: Path = typer.Option(..., help="CAA-format A/B file (question, answer_matching_behavior, "
                                      "answer_not_matching_behavior): the behaviour measured at each dose."),
    strengths: str = typer.Option("0,0.01,0.02,0.04,0.08", help="Comma-separated strengths (0 is the baseline)."),
    layers: list[str] | None = typer.Option(None, help="Layer sets to sweep, e.g. --layers 9,10,11 --layers 12 "
                                                          "(default: the vector's default layers)."),
    system: str | None = typer.Option(None, help="Prompting baseline: this system prompt alone and with steering."),
    output: Path = typer.Option(Path("sweep.jsonl"), "-o", "--output",
                                help="Rows are appended here; a rerun skips settings already present."),
    neutral: Path | None = typer.Option(None, help="Neutral prompts for KL (default: built-in)."),
    reference: Path | None = typer.Option(None, help="Reference text for perplexity (default: built-in)."),
    capability: Path | None = typer.Option(None, help="Multiple-choice capability set (default: built-in; CAA "
                                                         "two-choice files such as the MMLU sample work too)."),
    ab_orders: str = typer.Option("given", help=AB_ORDERS_HELP),
    capability_scoring: str = typer.Option("cloze", help=SCORING_HELP),
    open_: str | None = typer.Option(None, "--open", help=OPEN_HELP),
    open_split: str | None = typer.Option(None, help="Only the open-ended items of this split (e.g. test)."),
    detector: list[Path] | None = typer.Option(None, help="Detector (.det.json or .sv) scoring the open-ended "
                                                             "answers, unsteered; repeatable."),
    judge_url: str | None = typer.Option(None, help=JUDGE_URL_HELP),
    judge_model: str | None = typer.Option(None, help="The judge's model name at --judge-url."),
    judge_key_env: str | None = typer.Option(None, help="Environment variable holding the judge's API key "
                                                           "(none for a server without keys)."),
    judge_timeout: float = typer.Option(60.0, help="Seconds per judge request."),
    max_new_tokens: int = typer.Option(48, help="Tokens per open-ended answer."),
    limit: int | None = typer.Option(None, help="Use only the first N items of every set (quick looks)."),
    direction: int = typer.Option(1, help="+1: the wanted behaviour is the A/B behaviour-matching answer; -1: its "
                                          "opposite (e.g. sweeping a sycophancy vector down)."),
    objective: str = typer.Option("behaviour", help="What the recommendation maximises (times --direction): "
                                                    "behaviour (the A/B probability) or any row column or sum of "
                                                    "columns, e.g. share_corrected+share_rejected with --open."),
    max_kl: float = typer.Option(DEFAULT_MAX_KL, help="Budget: KL (nats/token) vs. unsteered on neutral prompts "
                                                      "(the default's basis: docs/evals.md, Default budgets)."),
    max_capability_drop: float = typer.Option(DEFAULT_MAX_CAPABILITY_DROP,
                                              help="Budget: capability accuracy drop (fraction)."),
    write: bool = typer.Option(False, help="Write the recommended strength and its evidence into the vector file."),
    sample_prompts: Path | None = typer.Option(
        None, help="Prompts (JSONL or text) to answer at every steering strength; written to OUTPUT.samples.jsonl "
                   "and the report."),
    report: Path | None = typer.Option(None, help="Write the HTML report here."),
    png: Path | None = typer.Option(None, "--png", help="Also write PNG dose-response plots (one per metric) "
                                                           "into this folder."),
    engine_name: str = typer.Option("hf", "--engine", help="Engine for the open-ended answers and samples: 'hf' or "
                                                            "'vllm' (docs/scale.md); the rest is teacher-forced."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    batch_size: int = typer.Option(8, help="Items per forward pass."),
) -> None:
    """Dose-response sweep: behaviour (A/B), KL, perplexity and capability at each strength, the
    prompting baseline, and the recommended strength under a side-effect budget; with --open, also
    open-ended answers scored (outcome shares, coherence, detector scores). Open-ended answers go to
    OUTPUT.answers.jsonl."""
    import json

    from ..errors import SteerwatchError
    from ..evals.sweep import SweepData, apply_recommendation, objective_columns, recommend, sweep
    from ..vector import load_vector
    from .common import parse_layers

    # every option, file and optional dependency before the model loads and the sweep (many minutes) runs
    _check_png(png)
    check_engine(engine_name)
    if direction not in (1, -1):
        raise SteerwatchError(f"--direction must be +1 or -1, got {direction}")
    answers_path = output.with_suffix(".answers.jsonl")
    samples_path = output.with_suffix(".samples.jsonl")
    check_output_path(output, "--output")
    _check_report(report)
    vec = load_vector(vector)
    if write:
        check_output_path(vector, "--write: the vector file")
    layer_sets = [parse_layers(x) for x in layers] if layers else [None]
    if layers and any(x == "auto" or not x for x in layer_sets):
        raise SteerwatchError("--layers takes explicit comma-separated layers, e.g. --layers 9,10,11")
    data = SweepData(ab_items=read_ab(ab, limit), open_items=load_open(open_, split=open_split, limit=limit),
                     ab_orders=ab_orders, mc_scoring=capability_scoring,
                     **side_effect_sets(neutral=neutral, reference=reference, capability=capability, limit=limit))
    grid = parse_floats(strengths, "--strengths")
    if 0.0 not in grid:
        grid = [0.0, *grid]
    if data.neutral_prompts and len(data.neutral_prompts) < MIN_BUDGET_PROMPTS:
        console.print(f"caution: KL is measured on {len(data.neutral_prompts)} neutral prompts (fewer than "
                      f"{MIN_BUDGET_PROMPTS}): a dose near the KL budget (--max-kl {max_kl:g}) may land on either side "
                      "of it by chance (docs/evals.md, Default budgets). Drop --limit or give more --neutral prompts "
                      "for a recommendation to trust.",
                      style="yellow", highlight=False)
    open_cols = [c for c in objective_columns(objective) if c != "behaviour" and c not in ("kl", "ppl", "mc_acc")]
    if open_cols and not data.open_items:
        raise SteerwatchError(f"--objective {objective} needs open-ended answers: give --open FILE (or --open builtin)")
    judge = make_judge(judge_url, judge_model, judge_key_env, judge_timeout, bool(data.open_items))
    if data.open_items:
        check_output_path(answers_path, "--output (its open-ended answers)")
    dets = read_detectors(detector)
    _check_objective(objective, open_cols, dets, judge)
    prompts: list = []
    if sample_prompts:
        from ..data.prompts import load_prompt_items

        check_input_file(sample_prompts, "--sample-prompts")
        check_output_path(samples_path, "--output (its samples)")
        prompts = [it["prompt"] for it in load_prompt_items(sample_prompts)]
    loaded = load(model, device=device, dtype=dtype)
    vec.check_model(loaded)
    check_detectors(dets, loaded)
    runner = start_engine(loaded, engine_name, needed=bool(data.open_items or sample_prompts))
    try:
        rows = sweep(loaded, vec, data, strengths=grid, layer_sets=layer_sets, system_prompt=system, out_path=output,
                     answers_path=answers_path if data.open_items else None, batch_size=batch_size,
                     max_new_tokens=max_new_tokens, detectors=dets, log=note,
                     judge=judge, engine=runner, progress=True)
        samples = []
        if prompts:
            from ..evals.sweep import sample_answers

            samples = sample_answers(loaded, vec, prompts, grid, batch_size=batch_size, engine=runner)
    finally:
        stop_engine(runner)
    # each output on its own: one that fails does not cost the others (the rows are already written)
    outputs = Outputs()
    outputs.done("rows", output)
    if data.open_items:
        outputs.done("open-ended answers", answers_path)
    print_rows(rows, f"{vec.concept}: dose response ({len(data.ab_items)} A/B items)")
    try:
        rec: dict | None = recommend(rows, direction=direction, max_kl=max_kl,
                                     max_capability_drop=max_capability_drop, objective=objective)
    except SteerwatchError as exc:  # e.g. an objective column the rows lack: the plots and report still help
        rec = None
        outputs.skip("the recommendation", str(exc))
        console.print(f"no recommendation: {exc}", style="red", highlight=False)
    if rec is not None:
        out.print_json(json.dumps({k: v for k, v in rec.items() if k != "rejected"}))
    if rec is not None and rec.get("kl_budget_uncertain"):
        console.print("caution: the KL 95 % interval of strength(s) "
                      + ", ".join(f"{s:+g}" for s in rec["kl_budget_uncertain"])
                      + f" contains the budget {max_kl:g}: whether they fit it is within the noise of "
                      f"{next((r['n_kl'] for r in rows if r.get('n_kl')), '?')} neutral prompts", style="yellow",
                      highlight=False)
    if sample_prompts and outputs.text("samples", samples_path,
                                       lambda: "".join(json.dumps(x) + "\n" for x in samples)):
        console.print(f"samples in {samples_path}")
    if data.open_items:
        console.print(f"open-ended answers in {answers_path}")
        samples += outputs.write("open-ended samples for the report", None, lambda: pick_samples(answers_path)) or []
    if png:
        n_png = outputs.write("PNG plots", png, lambda: len(_write_pngs(rows, png, rec)))
        if n_png is not None:
            console.print(f"{n_png} PNG plots in {png}")
    if write:
        if rec is None:
            outputs.skip(f"--write into {vector}", "no recommendation")
        elif outputs.write("the recommendation", vector, lambda: apply_recommendation(vec, rec).save(vector)):
            console.print(f"wrote the recommendation into {vector}")
    if report and outputs.text("report", report, lambda: _render_report(
            rows, rec, samples=samples, title=f"{vec.concept} on {loaded.name}")):
        console.print(f"report in {report}")
    console.print(f"rows in {output}")
    outputs.finish()


def _check_objective(objective: str, open_cols: list[str], dets: list, judge) -> None:
    """An --objective column the rows will not have fails now, not when the recommendation is made
    after the sweep."""
    from ..errors import SteerwatchError
    from ..evals.openended import open_columns

    known = [*open_columns(dets, judge), *(f"det_{d.name}_flagged" for d in dets if d.threshold is not None)]
    unknown = [c for c in open_cols if c not in known or c.startswith("n_")]
    if unknown:
        raise SteerwatchError(f"--objective {objective}: the rows will have no column {unknown[0]!r}; valid: "
                              f"behaviour, kl, ppl, mc_acc, {', '.join(c for c in known if not c.startswith('n_'))}")


def _write_pngs(rows: list, folder: Path, rec: dict | None) -> list:
    from ..evals.plots import write_pngs

    return write_pngs(rows, folder, recommendation=rec)


def _render_report(rows: list, rec: dict | None, *, samples: list, title: str) -> str:
    from ..evals.report import render_report

    return render_report(rows, rec, samples=samples, title=title)


def pick_samples(answers_path: Path, per_setting: int = 3) -> list:
    """The first few open-ended answers of every (setting, strength, layers), for a report."""
    from ..io import iter_jsonl_objects, jsonl_lines, read_text

    seen: dict = {}
    picked = []
    for _, a in iter_jsonl_objects(jsonl_lines(read_text(answers_path), path=answers_path), path=str(answers_path)):
        key = (a.get("setting"), a.get("strength"), tuple(a.get("resolved_layers") or ()))
        if seen.get(key, 0) < per_setting:
            seen[key] = seen.get(key, 0) + 1
            picked.append(a)
    return picked


@app.command("eval")
@friendly
def eval_cmd(
    vector: Path = typer.Argument(..., help="The vector file to evaluate."),
    strength: list[float] = typer.Option(..., help="A strength to evaluate; repeat for several "
                                                   "(--strength 0.02 --strength 0.05)."),
    layers: str | None = typer.Option(None, help="Layers to steer, e.g. 9,10,11 (default: the vector's)."),
    ab: Path | None = typer.Option(None, help="CAA-format A/B file: the behaviour probability at each strength."),
    ab_orders: str = typer.Option("given", help=AB_ORDERS_HELP),
    capability_scoring: str = typer.Option("cloze", help=SCORING_HELP),
    open_: str | None = typer.Option(None, "--open", help=OPEN_HELP),
    open_split: str | None = typer.Option(None, help="Only the open-ended items of this split (e.g. test)."),
    detector: list[Path] | None = typer.Option(None, help="Detector (.det.json or .sv) scoring the open-ended "
                                                             "answers, unsteered; repeatable."),
    system: str | None = typer.Option(None, help="Prompting baseline: this system prompt alone and with steering."),
    side_effects: bool = typer.Option(True, help="Measure KL, reference perplexity and capability too."),
    neutral: Path | None = typer.Option(None, help="Neutral prompts for KL (default: built-in)."),
    reference: Path | None = typer.Option(None, help="Reference text for perplexity (default: built-in)."),
    capability: Path | None = typer.Option(None, help="Multiple-choice capability set (default: built-in)."),
    baseline: bool = typer.Option(True, help="Add the unsteered row (strength 0) for comparison."),
    judge_url: str | None = typer.Option(None, help=JUDGE_URL_HELP),
    judge_model: str | None = typer.Option(None, help="The judge's model name at --judge-url."),
    judge_key_env: str | None = typer.Option(None, help="Environment variable holding the judge's API key "
                                                           "(none for a server without keys)."),
    judge_timeout: float = typer.Option(60.0, help="Seconds per judge request."),
    max_new_tokens: int = typer.Option(48, help="Tokens per open-ended answer."),
    limit: int | None = typer.Option(None, help="Use only the first N items of every set."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write the rows here: CSV when the name ends "
                                          "in .csv, else JSON Lines; open-ended answers go to OUTPUT.answers.jsonl."),
    engine_name: str = typer.Option("hf", "--engine", help="Engine for the open-ended answers and samples: 'hf' or "
                                                            "'vllm' (docs/scale.md); the rest is teacher-forced."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    batch_size: int = typer.Option(8, help="Items per forward pass."),
) -> None:
    """Evaluate a vector at one strength or several: the rows of a sweep (behaviour, side effects,
    open-ended outcome shares and coherence), without the recommendation step."""
    from ..errors import SteerwatchError
    from ..evals.sweep import SweepData, evaluate, write_rows
    from ..vector import load_vector
    from .common import parse_layers

    check_engine(engine_name)
    check_output_path(output, "--output")
    vec = load_vector(vector)
    layer_list = parse_layers(layers) if layers else None
    if layer_list == "auto" or (layers and not layer_list):
        raise SteerwatchError("--layers takes explicit comma-separated layers, e.g. --layers 9,10,11")
    if ab is None and open_ is None and not side_effects:
        raise SteerwatchError("nothing to measure: give --ab FILE and/or --open FILE, or keep --side-effects")
    sets = side_effect_sets(neutral=neutral, reference=reference, capability=capability,
                            limit=limit) if side_effects else {}
    data = SweepData(ab_items=read_ab(ab, limit), open_items=load_open(open_, split=open_split, limit=limit),
                     ab_orders=ab_orders, mc_scoring=capability_scoring, **sets)
    judge = make_judge(judge_url, judge_model, judge_key_env, judge_timeout, bool(data.open_items))
    answers_path = output.with_suffix(".answers.jsonl") if output is not None and data.open_items else None
    check_output_path(answers_path, "--output (its open-ended answers)")
    dets = read_detectors(detector)
    loaded = load(model, device=device, dtype=dtype)
    vec.check_model(loaded)
    check_detectors(dets, loaded)
    if answers_path is not None and answers_path.exists():
        answers_path.unlink()
    runner = start_engine(loaded, engine_name, needed=bool(data.open_items))
    try:
        rows = evaluate(loaded, vec, data, strengths=strength, layers=layer_list, system_prompt=system,
                        baseline=baseline, answers_path=answers_path, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, detectors=dets, log=note,
                        judge=judge, engine=runner, progress=True)
    finally:
        stop_engine(runner)
    outputs = Outputs()
    if answers_path is not None:
        outputs.done("open-ended answers", answers_path)
    print_rows(rows, f"{vec.concept} on {loaded.name}")
    if output is not None and outputs.write("rows", output, lambda: write_rows(rows, output)):
        console.print(f"rows in {output}" + (f", answers in {answers_path}" if answers_path else ""))
    outputs.finish()


@app.command("report")
@friendly
def report_cmd(
    rows_file: Path = typer.Argument(..., help="Rows written by `steerwatch sweep`."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    samples: Path | None = typer.Option(None, help="Sample generations (OUTPUT.samples.jsonl of a sweep) or "
                                                      "open-ended answers (OUTPUT.answers.jsonl)."),
    direction: int = typer.Option(1, help="+1 or -1, as for sweep."),
    objective: str = typer.Option("behaviour", help="As for sweep."),
    max_kl: float = typer.Option(DEFAULT_MAX_KL, help="Budget: KL (nats/token)."),
    max_capability_drop: float = typer.Option(DEFAULT_MAX_CAPABILITY_DROP, help="Budget: capability accuracy drop."),
    png: Path | None = typer.Option(None, "--png", help="Also write PNG dose-response plots (one per metric) "
                                                           "into this folder."),
) -> None:
    """Render sweep or eval rows (JSON Lines) as a self-contained HTML report with dose-response
    plots; the recommendation is included when the rows carry behaviour and capability."""
    from ..errors import SteerwatchError
    from ..evals.sweep import objective_columns, recommend
    from ..io import iter_jsonl_objects, jsonl_lines, read_text

    _check_png(png)
    _check_report(output, "-o/--output")
    rows = [o for _, o in iter_jsonl_objects(jsonl_lines(read_text(rows_file), path=rows_file), path=str(rows_file))]
    need = {"setting", "strength", "resolved_layers"}
    for i, r in enumerate(rows, 1):
        if not need <= set(r):
            raise SteerwatchError(f"{rows_file}, row {i}: not a sweep row (needs {', '.join(sorted(need))})")
    sample_rows = [o for _, o in iter_jsonl_objects(jsonl_lines(read_text(samples), path=samples),
                                                    path=str(samples))] if samples else []
    if samples is not None and any("answer" in x for x in sample_rows):  # open-ended answers: a few per setting
        sample_rows = pick_samples(samples)
    cols = objective_columns(objective)
    has_budget = any(r["setting"] == "steer" and r["strength"] == 0 and all(r.get(c) is not None for c in cols)
                     and "mc_acc" in r for r in rows)
    rec = recommend(rows, direction=direction, max_kl=max_kl, max_capability_drop=max_capability_drop,
                    objective=objective) if has_budget else None
    outputs = Outputs()  # the page and the PNGs independently: one failing does not cost the other
    if outputs.text("report", output, lambda: _render_report(rows, rec, samples=sample_rows,
                                                             title=f"steerwatch sweep: {rows_file.name}")):
        console.print(f"wrote {output}")
    if png:
        n_png = outputs.write("PNG plots", png, lambda: len(_write_pngs(rows, png, rec)))
        if n_png is not None:
            console.print(f"{n_png} PNG plots in {png}")
    outputs.finish()


def _check_png(png: Path | None) -> None:
    """--png needs matplotlib and a writable folder: say so before any work, not after it."""
    if png is None:
        return
    from ..errors import SteerwatchError
    from ..extras import require
    from .common import check_output_dir

    require("plots", "--png")
    if png.exists() and not png.is_dir():
        raise SteerwatchError(f"--png {png} is a file; give a folder for the PNG plots")
    check_output_dir(png, "--png")


def _check_report(path: Path | None, what: str = "--report") -> None:
    """The HTML report: a writable file path, and its template and chart libraries installed."""
    if path is None:
        return
    check_output_path(path, what)
    require_modules(what, "jinja2", "matplotlib")
