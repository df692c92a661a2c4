from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.text import Text

from ..quickstart import DEFAULT_STRENGTHS
from .app import app
from .common import check_output_dir, console, friendly, load, note, out
from .options import Device, Dtype, Model

_COLOURS = {"corrected": "green", "rejected": "cyan", "agreed": "red", "evasive": "yellow"}


@app.command("quickstart")
@friendly
def quickstart_cmd(
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    out_dir: Path = typer.Option(Path("steerwatch-quickstart"), help="Where the vectors and the answers are written."),
    steer_concept: str = typer.Option("honesty", help="Which vector to dial: honesty (up) or sycophancy (down)."),
    strengths: str = typer.Option(",".join(f"{x:g}" for x in DEFAULT_STRENGTHS),
                                  help="Comma-separated strengths (0 = unsteered)."),
    split: str = typer.Option("test", help="Which bait split to answer: dev or test."),
    max_new_tokens: int = typer.Option(40, help="Tokens per answer."),
    show: int = typer.Option(6, help="How many answers to show side by side."),
    batch_size: int = typer.Option(50, min=1, help="Prompts generated together (larger is faster on CPU)."),
    honesty: str = typer.Option("recommended", help="The honesty vector: recommended (the dev-chosen recipe's "
                                                    "vector where steerwatch ships one for the model, as for the "
                                                    "embedded model; else the built-in one) or builtin (mean "
                                                    "difference over the hand-written pairs, built here)."),
) -> None:
    """Steer the embedded model with honesty (its shipped recipe vector) and watch sycophancy turn into corrections."""
    from rich.table import Table

    from ..errors import SteerwatchError
    from ..extract.optimise import OPT_METHODS
    from ..quickstart import CHOSEN_STRENGTH, run_quickstart

    if honesty not in ("recommended", "builtin"):
        raise SteerwatchError(f"--honesty must be recommended or builtin, got {honesty!r}")
    if steer_concept not in ("honesty", "sycophancy"):
        raise SteerwatchError(f"--steer-concept must be honesty or sycophancy, got {steer_concept!r}")
    try:
        levels = [float(x) for x in strengths.split(",") if x.strip()]
    except ValueError:
        raise SteerwatchError(f"--strengths must be comma-separated numbers, got {strengths!r}") from None
    if 0.0 not in levels:
        levels = [0.0, *levels]
    check_output_dir(out_dir, "--out-dir")
    loaded = load(model, device=device, dtype=dtype)
    out_dir.mkdir(parents=True, exist_ok=True)

    def on_vector(concept, vec, rows):
        layers = vec.default_layers
        if vec.method in OPT_METHODS:  # the shipped recipe vector
            console.print(f"{concept}: the {vec.method} vector steerwatch ships for this model (trained on its own "
                          f"corrections, chosen on the dev split; docs/results.md); steering layers "
                          f"{layers[0]}-{layers[-1]} → {out_dir / (concept + '.sv')}", highlight=False)
            return
        best = next(r for r in rows if r.layer == vec.best_layer())
        console.print(f"{concept}: best validation AUROC {best.auroc:.3f} at layer {best.layer}; "
                      f"steering layers {layers[0]}-{layers[-1]} → {out_dir / (concept + '.sv')}", highlight=False)

    res = run_quickstart(loaded, out_dir=out_dir, steer_concept=steer_concept, strengths=levels, split=split,
                         max_new_tokens=max_new_tokens, batch_size=batch_size, on_vector=on_vector,
                         progress=sys.stderr.isatty(), honesty=honesty)
    if honesty == "recommended" and res.honesty_source != "shipped":
        note("no shipped honesty vector for this model: steering with the built-in mean-difference vector; "
             "`steerwatch extract honesty` builds the stronger recipe vector (slow on CPU) and `steerwatch generate "
             "--steer honesty.sv:+0.03` uses it")
    with (out_dir / "answers.jsonl").open("w", encoding="utf-8") as f:
        for row in res.bait_rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with (out_dir / "knowledge.jsonl").open("w", encoding="utf-8") as f:
        for row in res.knowledge:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    names = [s["setting"] for s in res.summary]
    by = {(r["setting"], r["id"]): r for r in res.bait_rows}
    ids = [r["id"] for r in res.bait_rows if r["setting"] == names[0]]
    agreed_first = sorted(ids, key=lambda i: by[(names[0], i)]["outcome"] != "agreed")[:show]
    chosen = f"{CHOSEN_STRENGTH:+.2f}" if steer_concept == "honesty" else None
    # side by side: the honesty strength chosen on the dev split if it was run, else the middle one
    pick = chosen if chosen in names else (names[-1] if len(names) < 3 else names[(len(names) - 1) // 2 + 1])
    table = Table(title=f"{steer_concept} vector, bait prompts ({split} split)", show_lines=True)
    table.add_column("prompt", max_width=28)
    table.add_column("unsteered", max_width=40)
    table.add_column(f"steered {pick}", max_width=40)
    for i in agreed_first:
        a, b = by[(names[0], i)], by[(pick, i)]
        table.add_row(a["prompt"], Text.assemble((a["outcome"], _COLOURS[a["outcome"]]), " " + a["answer"]),
                      Text.assemble((b["outcome"], _COLOURS[b["outcome"]]), " " + b["answer"]))
    out.print(table)
    summ = Table(title="strength sweep: answers to the bait prompts")
    for col in ("strength", "corrected", "rejected", "agreed", "evasive", "agreed → corrected", "known → corrected"):
        summ.add_column(col, justify="right")
    for s in res.summary:
        flips = ((f"{s['to_corrected']}/{s['n_agreed_baseline']}", f"{s['to_corrected_known']}/{s['n_agreed_known']}")
                 if "to_corrected" in s else ("-", "-"))
        summ.add_row(s["setting"], *(Text.assemble((f"{s[o]}", _COLOURS[o]), f"/{s['n']}")
                                     for o in ("corrected", "rejected", "agreed", "evasive")), *flips)
    out.print(summ)
    n_known = sum(1 for k in res.knowledge if k["knows"])
    n_asked = sum(1 for k in res.knowledge if k["knows"] is not None)
    console.print(f"asked each fact neutrally (unsteered), the model states the truth for {n_known}/{n_asked} items; "
                  "'known → corrected' counts the unsteered agreements on those items that became corrections "
                  "(steering cannot add knowledge the model lacks)")
    console.print(f"answers: {out_dir / 'answers.jsonl'} · vectors: {out_dir}/honesty.sv, {out_dir}/sycophancy.sv")
    note("strength: added at each steered layer, as a fraction of that layer's typical residual-stream "
                  "norm · corrected = states the truth · rejected = denies the claim without stating the truth · "
                  "evasive = hedge, refusal or confusion")
