from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from .app import app
from .common import check_output_dir, check_output_path, console, friendly, load, note, out
from .options import Device, Dtype

data_app = typer.Typer(help="Check contrast data and reference sets.", no_args_is_help=True,
                       rich_markup_mode=None)
app.add_typer(data_app, name="data")

_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red"}


def _concepts_among(targets: list[str]) -> list[str]:
    from ..data import list_concepts
    from ..data.check import is_conversations_file

    return [t for t in targets if t in list_concepts() or (t.endswith(".jsonl") and Path(t).exists()
                                                            and not is_conversations_file(t))]


@data_app.command("check")
@friendly
def check_cmd(
    targets: list[str] | None = typer.Argument(
        None, help="Built-in concepts or sets (benign, neutral_prompts, neutral_text, capability, eval/<name>) "
                   "or .jsonl files. Default: every built-in set."),
    model: str | None = typer.Option(None, "--model", "-m",
                                        help="Also build each concept's vector on this model and report its "
                                             "validation AUROC by layer, and the cosine matrix between concepts."),
    device: Device = "auto",
    dtype: Dtype = None,
    save: Path | None = typer.Option(None, help="With --model: write each concept's vector to DIR/<name>.sv."),
    method: str | None = typer.Option(None, help="Extraction method for --model (default: each concept's own, "
                                                    "see `steerwatch concepts`; mean_diff for files)."),
    batch_size: int = typer.Option(8, help="Examples per forward pass (--model)."),
    json_path: Path | None = typer.Option(None, "--json", help="Write all results as JSON to this file."),
    verbose: bool = typer.Option(False, "-v", help="Print every layer's AUROC, not only the best."),
) -> None:
    """Quality checks: schema, duplicates and near-duplicates, length balance between the sides,
    split leakage, label balance, surface cues; with --model, validation AUROC by layer.
    Exits 1 when a check fails."""
    import json

    from rich.table import Table

    from ..data.check import builtin_targets, run_checks
    from ..extract.methods import check_method

    targets = list(targets or builtin_targets())
    if method is not None:
        check_method(method)
    check_output_path(json_path, "--json")
    check_output_dir(save, "--save")
    rows = run_checks(targets)
    table = Table("set", "check", "status", "detail", title="data checks")
    for r in rows:
        table.add_row(r.target, r.check, Text(r.status, style=_STYLE[r.status]), r.detail)
    out.print(table)
    result: dict = {"checks": [r.as_dict() for r in rows]}
    failed = [r for r in rows if r.status == "fail"]
    concepts = _concepts_among(targets)
    if model and concepts and not failed:
        from ..extract.library import build_library, cosine_matrix

        loaded = load(model, device=device, dtype=dtype)
        vectors, quality = build_library(loaded, concepts, method=method, batch_size=batch_size, save_dir=save,
                                         log=note)
        qt = Table("concept", "method", "train/val", "best layer", "best val AUROC", "paired acc", "default layers",
                   "read directions (detectors)",
                   title=f"validation AUROC by layer · {loaded.name}")
        for q in quality:
            qt.add_row(q.concept, q.method, f"{q.n_train}/{q.n_val}", str(q.best_layer), f"{q.best_auroc:.3f}",
                       f"{q.rows[q.best_layer].paired_acc:.3f}",
                       f"{q.default_layers[0]}-{q.default_layers[-1]}",
                       f"{q.read_method}: {q.best_read_auroc:.3f} at layer {q.best_read_layer}" if q.read_method
                       else "= steering directions")
        out.print(qt)
        if verbose:
            lt = Table("layer", *[q.concept for q in quality], title="validation AUROC per layer")
            for i in range(loaded.n_layers):
                lt.add_row(str(i), *[f"{q.rows[i].auroc:.3f}" for q in quality])
            out.print(lt)
        cos = cosine_matrix(vectors)
        names = list(vectors)
        ct = Table("", *names, title=f"cosine similarity (mean over layers {cos[0]['layers'][0]}-"
                                     f"{cos[0]['layers'][-1]})")
        lookup = {(c["a"], c["b"]): c["cosine"] for c in cos}
        for a in names:
            ct.add_row(a, *[f"{lookup[a, b]:+.2f}" for b in names])
        out.print(ct)
        result["quality"] = [q.as_dict() for q in quality]
        result["cosine"] = cos
        result["model"] = loaded.name
    elif model and failed:
        console.print("skipping --model: fix the failing checks first", style="yellow")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1))
        console.print(f"wrote {json_path}")
    n_warn = sum(r.status == "warn" for r in rows)
    console.print(f"{len(rows)} checks: {len(failed)} failed, {n_warn} warnings")
    if failed:
        raise typer.Exit(1)


@app.command("compare")
@friendly
def compare_cmd(
    paths: list[Path] = typer.Argument(..., help="Two or more vector files."),
    layers: str | None = typer.Option(None, help="Comma-separated layers to average the cosine over "
                                                    "(default: the middle band of depth)."),
) -> None:
    """Cosine similarity between vector files, averaged over layers."""
    from rich.table import Table

    from ..errors import SteerwatchError
    from ..extract.library import cosine_matrix
    from ..vector import load_vector
    from .common import parse_layers

    if len(paths) < 2:
        raise SteerwatchError("give at least two vector files to compare")
    vecs = {}
    for p in paths:
        v = load_vector(p)
        key = v.concept if v.concept not in vecs else str(p)
        vecs[key] = v
    sel = parse_layers(layers) if layers else None
    if sel == "auto":
        sel = None
    rows = cosine_matrix(vecs, layers=sel)
    names = list(vecs)
    lookup = {(c["a"], c["b"]): c["cosine"] for c in rows}
    t = Table("", *names, title=f"cosine similarity (mean over layers {rows[0]['layers'][0]}-{rows[0]['layers'][-1]})")
    for a in names:
        t.add_row(a, *[f"{lookup[a, b]:+.2f}" for b in names])
    out.print(t)
