from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import console, friendly, load, out, parse_floats
from .main import app


@app.command("sweep")
@friendly
def sweep_cmd(
    vector: Path = typer.Argument(..., help="The vector file to sweep."),
    ab: Path = typer.Option(..., help="CAA-format A/B file (question, answer_matching_behavior, "
                                      "answer_not_matching_behavior): the behaviour measured at each dose."),
    strengths: str = typer.Option("0,0.01,0.02,0.04,0.08", help="Comma-separated strengths (0 is the baseline)."),
    layers: Optional[List[str]] = typer.Option(None, help="Layer sets to sweep, e.g. --layers 9,10,11 --layers 12 "
                                                          "(default: the vector's default layers)."),
    system: Optional[str] = typer.Option(None, help="Prompting baseline: this system prompt alone and with steering."),
    output: Path = typer.Option(Path("sweep.jsonl"), "-o", "--output",
                                help="Rows are appended here; a rerun skips settings already present."),
    neutral: Optional[Path] = typer.Option(None, help="Neutral prompts for KL (default: built-in)."),
    reference: Optional[Path] = typer.Option(None, help="Reference text for perplexity (default: built-in)."),
    capability: Optional[Path] = typer.Option(None, help="Multiple-choice capability set (default: built-in; CAA "
                                                         "two-choice files such as the MMLU sample work too)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N items of every set (quick looks)."),
    direction: int = typer.Option(1, help="+1: the wanted behaviour is the A/B behaviour-matching answer; -1: its "
                                          "opposite (e.g. sweeping a sycophancy vector down)."),
    max_kl: float = typer.Option(0.1, help="Budget: KL (nats/token) vs. unsteered on neutral prompts."),
    max_capability_drop: float = typer.Option(0.02, help="Budget: capability accuracy drop (fraction)."),
    write: bool = typer.Option(False, help="Write the recommended strength and its evidence into the vector file."),
    sample_prompts: Optional[Path] = typer.Option(None, help="Prompts (JSONL or text) to answer at every steering "
                                                             "strength; written to OUTPUT.samples.jsonl and the report."),
    report: Optional[Path] = typer.Option(None, help="Write the HTML report here."),
    model: str = typer.Option("default", "--model", "-m", help="Model spec."),
    batch_size: int = typer.Option(8, help="Items per forward pass."),
) -> None:
    """Dose-response sweep: behaviour (A/B), KL, perplexity and capability at each strength, the
    prompting baseline, and the recommended strength under a side-effect budget."""
    import json

    from rich.table import Table

    from ..data._io import read_json
    from ..data.reference import load_mc, load_prompts, load_reference_text
    from ..errors import SteerwatchError
    from ..evals.sweep import SweepData, apply_recommendation, recommend, sweep
    from .extract import parse_layers
    from ..vector import load_vector

    vec = load_vector(vector)
    items = read_json(ab)
    if not isinstance(items, list) or not items:
        raise SteerwatchError(f"{ab}: must be a JSON list of CAA A/B items")
    layer_sets = [parse_layers(x) for x in layers] if layers else [None]
    if layers and any(x == "auto" or not x for x in layer_sets):
        raise SteerwatchError("--layers takes explicit comma-separated layers, e.g. --layers 9,10,11")
    data = SweepData(ab_items=items[:limit], neutral_prompts=load_prompts(neutral)[:limit],
                     reference_texts=load_reference_text(reference)[:limit], mc_items=load_mc(capability)[:limit])
    grid = parse_floats(strengths, "--strengths")
    if 0.0 not in grid:
        grid = [0.0, *grid]
    loaded = load(model)
    vec.check_model(loaded)
    rows = sweep(loaded, vec, data, strengths=grid, layer_sets=layer_sets, system_prompt=system, out_path=output,
                 batch_size=batch_size, log=lambda m: console.print(f"[dim]{m}[/]"))
    table = Table("setting", "layers", "strength", "behaviour", "KL", "ppl", "capability",
                  title=f"{vec.concept}: dose response ({len(data.ab_items)} A/B items)")
    for r in rows:
        table.add_row(r["setting"], ",".join(map(str, r["resolved_layers"])), f"{r['strength']:+g}",
                      f"{r['behaviour']:.3f}", "-" if "kl" not in r else f"{r['kl']:.4f}",
                      "-" if "ppl" not in r else f"{r['ppl']:.2f}", f"{r['mc_acc']:.3f}")
    out.print(table)
    rec = recommend(rows, direction=direction, max_kl=max_kl, max_capability_drop=max_capability_drop)
    out.print_json(json.dumps({k: v for k, v in rec.items() if k != "rejected"}))
    if write:
        apply_recommendation(vec, rec).save(vector)
        console.print(f"wrote the recommendation into {vector}")
    samples = []
    if sample_prompts:
        from ..generation import generate
        from ..steer import SteerSpec
        from .generate import read_prompts_file

        prompts = [it["prompt"] for it in read_prompts_file(sample_prompts)]
        for strength in grid:
            spec = [SteerSpec(vec, strength=strength)] if strength else None
            for p, o in zip(prompts, generate(loaded, prompts, steer=spec, max_new_tokens=48, batch_size=batch_size)):
                samples.append({"strength": strength, "prompt": p, "output": o})
        path = output.with_suffix(".samples.jsonl")
        path.write_text("".join(json.dumps(x) + "\n" for x in samples), encoding="utf-8")
        console.print(f"samples in {path}")
    if report:
        from ..evals.report import render_report

        report.write_text(render_report(rows, rec, samples=samples, title=f"{vec.concept} on {loaded.name}"),
                          encoding="utf-8")
        console.print(f"report in {report}")
    console.print(f"rows in {output}")


@app.command("report")
@friendly
def report_cmd(
    rows_file: Path = typer.Argument(..., help="Rows written by `steerwatch sweep`."),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="The HTML file to write."),
    samples: Optional[Path] = typer.Option(None, help="Sample generations (OUTPUT.samples.jsonl of a sweep)."),
    direction: int = typer.Option(1, help="+1 or -1, as for sweep."),
    max_kl: float = typer.Option(0.1, help="Budget: KL (nats/token)."),
    max_capability_drop: float = typer.Option(0.02, help="Budget: capability accuracy drop."),
) -> None:
    """Render a sweep's rows as a self-contained HTML report with dose-response plots."""
    from ..data._io import iter_jsonl_objects, read_text
    from ..errors import SteerwatchError
    from ..evals.report import render_report
    from ..evals.sweep import recommend

    rows = [o for _, o in iter_jsonl_objects(read_text(rows_file).splitlines(), path=str(rows_file))]
    need = {"setting", "strength", "resolved_layers", "behaviour", "mc_acc"}
    for i, r in enumerate(rows, 1):
        if not need <= set(r):
            raise SteerwatchError(f"{rows_file}, row {i}: not a sweep row (needs {', '.join(sorted(need))})")
    sample_rows = [o for _, o in iter_jsonl_objects(read_text(samples).splitlines(), path=str(samples))] if samples else []
    rec = recommend(rows, direction=direction, max_kl=max_kl, max_capability_drop=max_capability_drop)
    output.write_text(render_report(rows, rec, samples=sample_rows, title=f"steerwatch sweep: {rows_file.name}"),
                      encoding="utf-8")
    console.print(f"wrote {output}")
