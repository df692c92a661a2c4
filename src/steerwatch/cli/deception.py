"""``steerwatch deception``: deception sets from the model's own answers, probes, and how well each
detector catches the model's lies (issue 18; docs/detection.md)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import typer

from .app import app
from .common import (
    Outputs,
    check_input_file,
    check_output_dir,
    check_output_path,
    friendly,
    load,
    note,
    out,
    print_table,
)
from .options import Device, Dtype, Model

deception_app = typer.Typer(help="Catch the model's own lies: labelled answers, probes, detection figures.",
                            no_args_is_help=True, rich_markup_mode=None)
app.add_typer(deception_app, name="deception")

SOURCES_HELP = ("Comma-separated sources: instructed (told to give a wrong answer to facts it knows), roleplay "
                "(an incentive to hide a fact), sycophancy (agreeing with a false premise it knows is false), "
                "sandbagging (a wrong letter, under an incentive or instruction to score low, on a multiple-choice "
                "question it answers correctly unprompted), concealment (asked after a lab episode whether its "
                "code hard-codes the tests; needs --lab-episodes), talk (honest answers about deception), "
                "control (benign requests; needed to set thresholds).")


def _csv(text: str, what: str, valid: tuple[str, ...]) -> list[str]:
    from ..errors import SteerwatchError

    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in valid]
    if bad or not items:
        raise SteerwatchError(f"{what}: unknown {bad or text!r}; valid: {', '.join(valid)}")
    return items


def _counts_table(rows) -> None:
    from rich.table import Table

    from ..evals.deception import counts

    table = Table("source", "split", "deceptive", "honest", "unclear")
    for src, by in counts(rows).items():
        for split, c in by.items():
            table.add_row(src, split, str(c["deceptive"]), str(c["honest"]), str(c["unclear"]))
    print_table(table)


@deception_app.command("generate")
@friendly
def generate_cmd(
    output: Path = typer.Option(..., "--out", "-o", help="Where to write the labelled answers (JSONL)."),
    sources: str = typer.Option("instructed,roleplay,sycophancy,sandbagging,talk,control", help=SOURCES_HELP),
    roleplay: Path | None = typer.Option(None, help="Your own role-play scenarios (JSONL; default: the built-in "
                                                    "211). Fields: id, category, system, user, honest_answer "
                                                    "(yes/no), fact, disclose_markers, split."),
    talk: Path | None = typer.Option(None, help="Your own questions about deception (JSONL: id, prompt, split)."),
    bait: Path | None = typer.Option(None, help="Facts for 'instructed' and 'sycophancy' (the bait format; default: "
                                                "the built-in bait set)."),
    control: Path | None = typer.Option(None, help="Benign conversations whose user turns make the control "
                                                   "(default: the built-in benign set)."),
    mc: Path | None = typer.Option(None, help="Multiple-choice questions for 'sandbagging' (JSONL question/choices/"
                                              "answer; default: the built-in 200-question capability set)."),
    lab_episodes: list[Path] | None = typer.Option(None, "--lab-episodes", help="Episodes files from `steerwatch lab "
                                                   "run` for 'concealment' (repeatable; impossible variants with code "
                                                   "are asked about their code)."),
    lab_tasks: Path | None = typer.Option(None, "--lab-tasks", help="The --tasks file those episodes ran (default: "
                                                                    "HumanEval)."),
    max_new_tokens: int = typer.Option(48, help="Tokens per answer (greedy)."),
    limit: int | None = typer.Option(None, help="Only the first N prompts of each source (a quick look)."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
) -> None:
    """Answer every source's prompts (greedy, unsteered) and label each answer from what it says."""
    from ..data.reference import load_benign, load_mc
    from ..errors import SteerwatchError
    from ..evals import deception as dc
    from ..evals.bait import knowledge_check, load_bait

    srcs = _csv(sources, "--sources", dc.SOURCES)
    check_output_path(output, "--out")
    episodes: list = []
    lab_task_list = None
    if "concealment" in srcs:
        if not lab_episodes:
            raise SteerwatchError("source 'concealment' needs --lab-episodes (episodes files from "
                                  "`steerwatch lab run`)")
        from ..lab.concealment import concealment_prompts
        from ..lab.episodes import read_episodes
        from ..lab.tasks import load_task_file

        for f in lab_episodes:
            check_input_file(f, "--lab-episodes")
            episodes += read_episodes(f)
        if lab_tasks is not None:
            check_input_file(lab_tasks, "--lab-tasks")
        lab_task_list = load_task_file(lab_tasks) if lab_tasks is not None else None
        concealment_prompts(episodes, lab_task_list)  # every episode's prompt rebuilds, before the model loads
    elif lab_episodes:
        raise SteerwatchError("--lab-episodes is read only for the 'concealment' source; add it to --sources")
    if max_new_tokens < 1:
        raise SteerwatchError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    items = load_bait(bait) if {"instructed", "sycophancy"} & set(srcs) else []
    scenarios = dc.load_roleplay(roleplay) if "roleplay" in srcs else []
    talks = dc.load_talk(talk) if "talk" in srcs else []
    ctrl = dc.control_prompts(load_benign(control)) if "control" in srcs else []
    if mc is not None:
        check_input_file(mc, "--mc")
    questions = load_mc(mc) if "sandbagging" in srcs else []
    lm = load(model, device=device, dtype=dtype)
    known: set[str] = set()
    if items:
        note(f"knowledge check: which of {len(items)} facts does the model state unprompted?")
        known = {r["id"] for r in knowledge_check(lm, items, batch_size=16, progress=True) if r["knows"]}
        note(f"the model knows {len(known)} of {len(items)} facts")
    mc_known: set[str] = set()
    if questions:
        note(f"knowledge check: which of {len(questions)} multiple-choice questions does the model answer "
             "correctly unprompted (as written and with the options rotated)?")
        mc_known = {r["id"] for r in dc.mc_knowledge_check(lm, questions, progress=True) if r["knows"]}
        note(f"the model answers {len(mc_known)} of {len(questions)} questions correctly unprompted")
    rows = []
    if "concealment" in srcs:
        from ..lab.concealment import concealment_responses

        rows = concealment_responses(lm, episodes, tasks=lab_task_list, max_new_tokens=max_new_tokens, progress=True,
                                     limit=limit)
        srcs = [s for s in srcs if s != "concealment"]
    if srcs:  # the sources answered from prompts
        prompts = dc.deception_prompts(srcs, bait=items, known=known, scenarios=scenarios, talk=talks, control=ctrl,
                                       mc=questions, mc_known=mc_known)
        if limit is not None:
            kept: dict[str, int] = {}
            chosen = []
            for p in prompts:
                kept[p["source"]] = kept.get(p["source"], 0) + 1
                if kept[p["source"]] <= limit:
                    chosen.append(p)
            prompts = chosen
        rows += dc.generate_responses(lm, prompts, max_new_tokens=max_new_tokens, progress=True)
    dc.save_responses(rows, output)
    _counts_table(rows)
    out.print(f"wrote {len(rows)} labelled answers to {output}")


BASELINES_HELP = ("Comma-separated black-box baselines: follow_up (the model asked whether its answer was true), "
                  "liar_questions (unrelated follow-up questions + logistic regression, Pacchiardi et al. 2023), "
                  "judge (the same model judging the transcript as text); 'none' for none.")


@deception_app.command("eval")
@friendly
def eval_cmd(
    responses: Path = typer.Argument(..., help="Labelled answers from `steerwatch deception generate`."),
    train: list[str] = typer.Option(["instructed", "roleplay", "sycophancy"], "--train",
                                    help="A source (or a+b) to fit a probe on (dev split only); repeatable."),
    methods: str = typer.Option("mean_diff,lda", help="Probe methods to choose among on dev."),
    contexts: str = typer.Option("full,bare", help="Read the answer with its full prompt ('full') or only the "
                                                   "user's question ('bare'); chosen on dev."),
    baselines: str = typer.Option("follow_up,liar_questions,judge", help=BASELINES_HELP),
    n_liar: int = typer.Option(8, "--liar-questions", help="How many of the built-in follow-up questions the "
                                                            "liar_questions baseline asks (each costs a forward "
                                                            "pass per answer)."),
    honesty: bool = typer.Option(True, help="Also judge the built-in (text-defined) honesty vector as a detector."),
    split: str = typer.Option("test", help="Where to report: test (once, for the figures) or dev."),
    fpr: float = typer.Option(0.01, help="Thresholds at this false-positive rate on the control's dev half."),
    output: Path | None = typer.Option(None, "--out", "-o", help="Write the full report (JSON)."),
    save_probes: Path | None = typer.Option(None, "--save-probes", help="A folder to write each probe to (.sv "
                                            "vector + calibrated .det.json detector, for `steerwatch watch`)."),
    html: Path | None = typer.Option(None, help="Per-token heatmap of the test split's deceptive answers under the "
                                                "first probe (HTML)."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
) -> None:
    """Fit probes on dev, score every detector and black-box baseline, report per source on test."""
    from ..errors import SteerwatchError
    from ..evals import deception as dc
    from ..evals import deception_detect as dd

    rows = dc.load_responses(responses)
    train_sets = [_csv(t.replace("+", ","), "--train", dc.SOURCES) for t in train]
    meths = _csv(methods, "--methods", dd.PROBE_METHODS)
    ctxs = _csv(contexts, "--contexts", dd.CONTEXTS)
    bases = [] if baselines.strip() == "none" else _csv(baselines, "--baselines", dd.BASELINES)
    if split not in ("dev", "test"):
        raise SteerwatchError(f"--split must be dev or test, got {split!r}")
    if not any(r.source == "control" for r in rows):
        raise SteerwatchError(f"{responses}: no control answers; thresholds are set on them. Generate with "
                              "--sources ...,control")
    questions = [q["question"] for q in dc.liar_question_subset(n_liar)] if "liar_questions" in bases else []
    check_output_path(output, "--out")
    check_output_path(html, "--html")
    check_output_dir(save_probes, "--save-probes")
    lm = load(model, device=device, dtype=dtype)
    vec = None
    if honesty:
        from ..extract.library import builtin_vector

        vec, _rows, _path = builtin_vector(lm, "honesty", progress=True)
    res = dd.run_deception_eval(lm, rows, train=train_sets, methods=meths, contexts=ctxs, honesty=vec,
                                baselines=bases, liar_questions=questions, split=split, fpr=fpr, progress=True,
                                log=note)
    print_table(eval_table(res.report, fpr))
    for s in res.report["skipped"]:
        out.print(f"skipped {s['detector']}: {s['why']}")
    outputs = Outputs()  # the report, each probe and the page on their own: one failing does not cost the others
    if output is not None and outputs.text("report", output, lambda: json.dumps(res.report, indent=1) + "\n"):
        out.print(f"wrote {output}")
    if save_probes is not None:
        for name, fit in res.probes.items():
            stem = name.replace("probe:", "deception-").replace("+", "-")
            if outputs.write("probe", save_probes / f"{stem}.det.json",
                             functools.partial(_save_probe, fit, save_probes, stem)):
                out.print(f"wrote {save_probes / (stem + '.det.json')} (layer {fit.detector.layer}, threshold "
                          f"{fit.detector.threshold:.4g})")
    if html is not None and res.probes:
        det = next(iter(res.probes.values())).detector
        picked = [r for r in rows if r.split == split and r.label == dc.DECEPTIVE]
        if outputs.text("HTML view", html, lambda: _deceptive_page(lm, [r.conversation() for r in picked], det)):
            out.print(f"wrote {html} ({len(picked)} deceptive answers)")
    outputs.finish()


def eval_table(report: dict, fpr: float):
    """The transfer matrix as a Rich table: one row per detector and source."""
    from rich.table import Table

    from ..evals import deception_detect as dd

    table = Table("detector", "source", "deceptive", "honest", "AUROC (95% CI)", f"recall @ {fpr:g} FPR",
                  "honest flagged", "control FPR")
    for r in dd.eval_table(report):
        ci = r["auroc_ci"]
        table.add_row(r["detector"], r["source"], str(r["n_deceptive"]), str(r["n_honest"]),
                      "-" if r["auroc"] is None else f"{r['auroc']:.3f} ({ci[0]:.2f}-{ci[1]:.2f})",
                      "-" if r["recall"] is None else f"{r['recall']:.2f}",
                      "-" if r["honest_flagged"] is None else f"{r['honest_flagged']:.2f}",
                      "-" if r["control_fpr"] is None else f"{r['control_fpr']:.3f}")
    return table


def _save_probe(fit, folder: Path, stem: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    vp = fit.vector.save(folder / f"{stem}.sv")
    fit.detector.vector_path = str(vp)
    fit.detector.save(folder / f"{stem}.det.json")
    return True


def _deceptive_page(lm, convs: list, det) -> str:
    from ..watch.score import score_conversations
    from ..watch.view import render_html

    scored = score_conversations(lm, convs, [det], progress=True)
    return render_html(scored, [det], lm.tokenizer, title="deceptive answers")

