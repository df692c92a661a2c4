from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from .app import app
from .common import check_output_path, console, friendly, load, note, out, parse_layers
from .options import Device, Dtype, LayersPath, Model


def layer_table(rows, title: str):
    from rich.table import Table

    from ..extract.metrics import MIN_VAL_PAIRS

    table = Table(title=title)
    has_read = any(r.read_auroc is not None for r in rows)
    # a small validation split: show each AUROC's 95 % interval next to it
    has_ci = any(r.n_val is not None and r.n_val < MIN_VAL_PAIRS and r.auroc_lo is not None for r in rows)
    cols = ("layer", "val AUROC") + (("95% interval",) if has_ci else ()) + ("paired acc", "Cohen's d") \
        + (("read AUROC", "read paired") if has_read else ()) + ("residual norm", "")
    for col in cols:
        table.add_column(col, justify="right")
    for r in rows:
        read = (f"{r.read_auroc:.3f}", f"{r.read_paired_acc:.3f}") if has_read else ()
        ci = (f"{r.auroc_lo:.2f}-{r.auroc_hi:.2f}",) if has_ci else ()
        table.add_row(str(r.layer), f"{r.auroc:.3f}", *ci, f"{r.paired_acc:.3f}", f"{r.cohens_d:.2f}", *read,
                      f"{r.norm:.1f}", Text("◀ default", style="bold green") if r.selected else "")
    return table


def warn(message: str) -> None:
    console.print(Text.assemble(("warning:", "yellow"), " ", message), highlight=False)


def data_warnings(data, *, source: str, strict: bool) -> None:
    """The checks of `steerwatch data check` on a user's pair file, before the model loads: each failed
    or warned check printed as a warning in data check's own words; with ``strict`` a failed check is
    an error (exit 2)."""
    from ..data.check import check_pairs
    from ..errors import SteerwatchError

    rows = [r for r in check_pairs(data) if r.status != "pass"]
    for r in rows:
        warn(f"data check {r.check}: {r.status}: {r.detail}")
    failed = [r.check for r in rows if r.status == "fail"]
    if failed and strict:
        raise SteerwatchError(f"{source} fails data check ({', '.join(failed)}); fix the file (steerwatch data "
                              f"check {source} shows every check) or drop --strict to extract anyway")
    if rows:
        note(f"see `steerwatch data check {source}`; --strict makes a failed check an error")


@app.command("extract")
@friendly
def extract_cmd(
    source: str = typer.Argument(..., help="Built-in concept name (see `steerwatch concepts`), a JSONL pair file, "
                                           "a CAA A/B .json file, or a persona .json file with --persona."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the vector file (.sv)."),
    model: Model = "default",
    device: Device = "auto",
    dtype: Dtype = None,
    method: str | None = typer.Option(None, help="mean_diff, pca_diff, pca_center, logistic or lda (default: "
                                                    "the concept's own, see `steerwatch concepts`; else mean_diff); "
                                                    "or an optimised vector, trained through the frozen model: bipo "
                                                    "(bi-directional preference optimisation) or fewshot (raise the "
                                                    "positive answers' likelihood); these need --layers. A concept "
                                                    "with a steering recipe defaults to its recipe: honesty, "
                                                    "fewshot on the model's own on-policy pairs at the built-in "
                                                    "vector's layers (shipped for the embedded model); "
                                                    "conscientiousness, lda over its pairs, steered at +0.04."),
    steps: int | None = typer.Option(None, help="bipo/fewshot: optimisation steps (early stopping on the val loss; "
                                                "default 100, a recipe's own for a recipe)."),
    lr: float | None = typer.Option(None, help="bipo/fewshot: Adam learning rate (default 0.01)."),
    eval_every: int | None = typer.Option(None, help="bipo/fewshot: steps between validation-loss evaluations "
                                                     "(default 10, a recipe's own for a recipe)."),
    patience: int | None = typer.Option(None, help="bipo/fewshot: stop after this many evaluations without a better "
                                                   "val loss (default 3)."),
    max_strength: float | None = typer.Option(None, help="bipo/fewshot: largest strength the vector may learn (the "
                                                         "norm constraint, in steerwatch's residual-norm units; "
                                                         "default 0.1, a recipe's own for a recipe)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="A concept's recipe: build it on this machine even when "
                                                          "steerwatch ships the vector for this model."),
    checkpoint: Path | None = typer.Option(None, help="bipo/fewshot: checkpoint file, written at every evaluation; "
                                                      "an interrupted run given the same file resumes."),
    read_method: str | None = typer.Option(
        None, help="Also store read directions from this method, which detectors use instead of the steering "
                   "directions (default: the concept's own, e.g. lda for cheating; 'none' for no read directions)."),
    read: str = typer.Option("auto", help="auto, completion_mean, last_prompt or last_token."),
    layers: str = typer.Option("auto", help="'auto' (a window centred on the best validation AUROC in the middle "
                                            "of the network; for a recipe, the built-in vector's layers) or e.g. "
                                            "10,12 or 9-14."),
    n_auto: int | None = typer.Option(None, help="Window size for --layers auto (default: a quarter of the "
                                                    "model's layers, 6 of 24)."),
    persona: bool = typer.Option(False, help="SOURCE is a persona-instruction file: generate answers under each "
                                             "system prompt, then read the answers without the instruction."),
    onpolicy: bool = typer.Option(False, help="On-policy contrast: the model answers SOURCE's false-premise items "
                                              "(a concept with built-in items, e.g. honesty, or a bait-format "
                                              "JSONL with split train/val) under an honest and a sycophantic "
                                              "instruction; pairs are kept only where the rule scorer confirms "
                                              "corrected vs agreed, and read without the instruction."),
    instructions: Path | None = typer.Option(None, help="With --onpolicy: a JSON file of instruction pairs "
                                                        "({\"instruction\": [{\"pos\": ..., \"neg\": ...}]})."),
    sources: str = typer.Option("instruction,neutral", help="With --onpolicy: where honest-side answers come from, "
                                                             "tried in order: instruction (under the honest "
                                                             "instruction), steered (under --onpolicy-steer), "
                                                             "neutral (the model's answer to the item's neutral "
                                                             "question)."),
    onpolicy_steer: list[str] | None = typer.Option(None, "--onpolicy-steer", help="With --sources ...steered: "
                                                                                   "steering for the honest "
                                                                                   "side, e.g. honesty.sv:+0.03."),
    pairs_out: Path | None = typer.Option(None, "--pairs-out", help="With --onpolicy or --persona: also write "
                                                                    "the generated answers (and, on-policy, their "
                                                                    "outcomes and whether kept) to this JSONL."),
    concept: str | None = typer.Option(None, help="Concept name stored in the vector (default: the data set name)."),
    batch_size: int = typer.Option(8, help="Examples per forward pass."),
    prefix_cache: bool = typer.Option(True, "--prefix-cache/--no-prefix-cache",
                                      help="Run a pair's shared prompt (and a batch's shared opening) once, "
                                           "through a KV cache; the features equal whole passes' up to float "
                                           "rounding. --no-prefix-cache runs every example whole."),
    layers_path: LayersPath = None,
    json_out: bool = typer.Option(False, "--json", help="Print the per-layer table as JSON on stdout."),
    strict: bool = typer.Option(False, "--strict", help="A pair file that fails a `steerwatch data check` check "
                                                        "(duplicates, split leakage, length balance, ...) is an "
                                                        "error (exit 2) instead of a warning."),
) -> None:
    """Build a concept vector from contrast data and write it to a vector file."""
    import json

    from ..data import load_contrast, load_persona
    from ..evals.recipes import recipe_for
    from ..extract.build import build_vector
    from ..extract.methods import check_method
    from ..extract.optimise import OPT_METHODS
    from ..record import check_read

    recipe = recipe_for(source) if method is None and not persona else None
    lab_recipe = None  # a recipe trained on the model's own lab answers: shipped, else its fallback is built here
    if recipe is not None and recipe.lab:
        from ..evals.recipes import lab_recipe_help

        if rebuild or onpolicy:
            raise typer.BadParameter(f"{'--rebuild' if rebuild else '--onpolicy'} does not build {source}'s default "
                                     f"recipe. {lab_recipe_help(recipe)}")
        lab_recipe, recipe = recipe, recipe.fallback
    pairs_recipe = None  # a recipe over the built-in pairs: the usual extraction with the recipe's method, stamped
    if recipe is not None and not recipe.optimised:
        if not onpolicy:
            pairs_recipe, method = recipe, recipe.method
        recipe = None
        rebuild = False  # nothing is shipped for it: it is always built here
    if recipe is not None:  # the concept's dev-chosen steering recipe (steerwatch.evals.recipes)
        if read_method not in (None, "none"):
            raise typer.BadParameter(f"{source}'s default recipe trains a steering vector without read directions; "
                                     f"for read directions pass --method mean_diff --read-method {read_method}")
        own = dict(steps=steps, lr=lr, eval_every=eval_every, patience=patience, max_strength=max_strength)
        tuned = any(v is not None for v in own.values()) or instructions is not None or bool(onpolicy_steer) \
            or sources != "instruction,neutral" or concept is not None
        recipe = recipe.with_(**own)
        method, onpolicy = recipe.method, True
        steps, lr, eval_every, patience, max_strength = (recipe.steps, recipe.lr, recipe.eval_every, recipe.patience,
                                                         recipe.max_strength)
    else:
        tuned = True
        steps, lr, eval_every = (100 if steps is None else steps), (0.01 if lr is None else lr), \
            (10 if eval_every is None else eval_every)
        patience, max_strength = (3 if patience is None else patience), (0.1 if max_strength is None else max_strength)
        if rebuild:
            raise typer.BadParameter(f"--rebuild goes with a concept's default recipe ({source!r} with --method "
                                     f"{method} has none)" if method else f"{source!r} has no recipe to rebuild")
    optimised = method in OPT_METHODS
    if method is not None and not optimised:
        check_method(method)
    if optimised and recipe is None and (layers == "auto" or read_method not in (None, "none")):
        raise typer.BadParameter(f"--method {method} trains one vector at the layers you give: pass --layers (e.g. "
                                 "9,10,11,12,13,14) and no --read-method")
    if optimised:
        from ..extract.optimise import _check_options

        assert method is not None
        _check_options(method, steps, lr, max_strength, min(batch_size, 4), 0.1, eval_every, patience)  # before loading
    if read_method not in (None, "none"):
        check_method(read_method)
    if read != "auto":
        check_read(read)
    layer_sel = parse_layers(layers)
    if persona and onpolicy:
        raise typer.BadParameter("give --persona or --onpolicy, not both")
    if instructions is not None and not onpolicy:
        raise typer.BadParameter("--instructions goes with --onpolicy")
    if pairs_out is not None and not (persona or onpolicy):
        raise typer.BadParameter("--pairs-out goes with --onpolicy or --persona (the pairs are generated there)")
    # read and validate the data and the output paths before the (slow) model load, so a bad one fails at once
    check_output_path(output, "-o/--output")
    check_output_path(pairs_out, "--pairs-out")
    check_output_path(checkpoint, "--checkpoint")
    spec = load_persona(source) if persona else None
    op_spec = None
    if onpolicy:
        from ..evals.onpolicy import check_sources, load_onpolicy
        from ..steer import parse_steer_spec

        op_spec = load_onpolicy(source, instructions=instructions)
        op_sources = [x.strip() for x in sources.split(",") if x.strip()]
        op_steer = [parse_steer_spec(x) for x in (onpolicy_steer or [])]
        check_sources(op_sources, op_steer)
    elif onpolicy_steer or sources != "instruction,neutral":
        raise typer.BadParameter("--sources and --onpolicy-steer go with --onpolicy")
    given = None if (persona or onpolicy) else load_contrast(source)
    if given is not None and Path(source).suffix in (".jsonl", ".json") and Path(source).is_file():
        data_warnings(given, source=source, strict=strict)  # a built-in set is checked in CI
    elif strict and (persona or onpolicy):
        raise typer.BadParameter("--strict checks a pair file; --persona and --onpolicy generate their pairs")
    loaded = load(model, device=device, dtype=dtype, layers_path=layers_path)
    if recipe is not None:
        from ..evals.recipes import recipe_layers, shipped_vector

        note(f"{source}: the default is its steering recipe, {recipe.method} on the model's own on-policy pairs "
             f"({recipe.chosen}); --method mean_diff builds the fast vector from the hand-written pairs")
        found = None if (tuned or rebuild) else shipped_vector(loaded, source, recipe=recipe, log=note)
        if found is not None and (layer_sel == "auto" or layer_sel == found[0].default_layers):
            _write_shipped(found[0], output, loaded.name, json_out,
                           f"{recipe.strength:+.2f} (chosen on dev) · the vector steerwatch ships for this model, "
                           f"built by: {recipe.command(output.name, found[0].default_layers)}; --rebuild runs that "
                           "here (about 23 min on 2 CPU cores for the embedded model)")
            return
        if layer_sel == "auto":
            layer_sel = recipe_layers(loaded, source, progress=True, log=note)
            note(f"{source} recipe: training at the built-in vector's layers {layer_sel}")
    if lab_recipe is not None:
        from ..evals.recipes import lab_recipe_help, shipped_vector, stamp_recipe

        found = shipped_vector(loaded, source, recipe=lab_recipe, log=note) \
            if read_method in (None, "none") and concept is None else None
        if found is not None and (layer_sel == "auto" or layer_sel == found[0].default_layers):
            vec = stamp_recipe(found[0], lab_recipe)
            _write_shipped(vec, output, loaded.name, json_out,
                           f"{lab_recipe.strength:+.2f} (chosen on dev, stored as the vector's recommended strength) · "
                           f"the vector steerwatch ships for this model, trained on its own lab answers ("
                           f"{lab_recipe.chosen}); built by: {lab_recipe.command(output.name, vec.default_layers)}; "
                           "--method lda builds the previous recipe here")
            return
        if found is None:
            note(f"no lab-trained {source} vector ships for {loaded.name}; building the fallback recipe. "
                 f"{lab_recipe_help(lab_recipe)}")
    if spec is not None:
        from ..extract.persona import build_persona_pairs

        data = build_persona_pairs(loaded, spec, progress=True)
        if pairs_out is not None:
            pairs_out.parent.mkdir(parents=True, exist_ok=True)
            pairs_out.write_text("".join(json.dumps({"prompt": p.prompt, "positive": p.positive,
                                                     "negative": p.negative, "split": p.split}) + "\n"
                                         for p in data.pairs), encoding="utf-8")
    elif op_spec is not None:
        from ..evals.onpolicy import generate_onpolicy_pairs, onpolicy_rows_jsonl, onpolicy_summary
        from ..vector import check_residual_norm

        for sp in op_steer:
            sp.vector.check_model(loaded)
            check_residual_norm(sp.vector, loaded)
        note(f"answering {len(op_spec.items)} items under {len(op_spec.instructions)} instruction "
             f"pair(s), both sides; honest-side sources {', '.join(op_sources)}")
        res = generate_onpolicy_pairs(loaded, op_spec, sources=op_sources, steer=op_steer,
                                      batch_size=max(batch_size, 16), progress=True, check=False)
        if pairs_out is not None:
            pairs_out.parent.mkdir(parents=True, exist_ok=True)
            pairs_out.write_text(onpolicy_rows_jsonl(res.rows), encoding="utf-8")
        note(f"on-policy: {onpolicy_summary(res.counts)}")
        res.check()  # too few pairs survived: a clear error, no vector written
        data = res.data
    else:
        assert given is not None
        data = given
    note(f"{data.name}: {len(data.train)} train / {len(data.val)} val pairs")
    if optimised:
        from ..extract.build import layer_rows
        from ..extract.optimise import optimise_vector

        assert method is not None and isinstance(layer_sel, list)
        vec, hist = optimise_vector(loaded, data, method=method, layers=layer_sel, steps=steps, lr=lr,
                                    max_strength=max_strength, batch_size=min(batch_size, 4), checkpoint=checkpoint,
                                    eval_every=eval_every, patience=patience, progress=True, concept=concept)
        path = vec.save(output)
        if json_out:
            out.print_json(json.dumps(hist))
        else:
            out.print(layer_table(layer_rows(vec), f"{vec.concept} · {vec.method} · {loaded.name}"))
        console.print(f"wrote {path} · {method} at layers {vec.default_layers} · learned strength "
                      f"{hist['strength']:+.4f} (apply it at that strength) · val loss {hist['initial_val_loss']:.4f} "
                      f"→ {hist['best_val_loss']:.4f} at step {hist['best_step']} of {hist['steps_run']}")
        return
    from ..extract.build import explain_layers

    if pairs_recipe is not None:
        note(f"{source}: the default is its steering recipe, {pairs_recipe.method} over the built-in pairs at the "
             f"built-in vector's layers ({pairs_recipe.chosen}); --method mean_diff builds the card's "
             "mean-difference vector")
        if layer_sel == "auto":
            from ..evals.recipes import recipe_layers

            layer_sel = recipe_layers(loaded, source, progress=True, log=note)
            note(f"{source} recipe: steering layers {layer_sel}, the built-in vector's")
    vec, rows = build_vector(loaded, data, method=method, read_method=read_method, read=read, layers=layer_sel,
                             n_auto=n_auto, batch_size=batch_size, concept=concept, progress=True,
                             prefix_cache=prefix_cache)
    stamped = pairs_recipe is not None and layers == "auto" and n_auto is None and concept is None
    if stamped:
        from ..evals.recipes import stamp_recipe

        assert pairs_recipe is not None
        stamp_recipe(vec, pairs_recipe)
    path = vec.save(output)
    if json_out:
        out.print_json(json.dumps([r.as_dict() for r in rows]))
    else:
        out.print(layer_table(rows, f"{vec.concept} · {vec.method} · read {vec.read_position} · {loaded.name}"))
    by_layer = {r.layer: r for r in rows}
    best = by_layer[vec.best_layer()]
    read_note = ""
    if vec.read_method:
        rbest = by_layer[vec.best_layer(read=True)]
        read_note = (f" · read directions ({vec.read_method}, for detectors): best {rbest.read_auroc:.3f} "
                     f"at layer {rbest.layer}")
    console.print(f"wrote {path} · default layers {vec.default_layers} · best validation AUROC "
                  f"{best.auroc:.3f} at layer {best.layer} ({vec.method}){read_note}")
    console.print(explain_layers(vec, rows, auto=layers == "auto" and pairs_recipe is None,
                                 given="the recipe: the built-in vector's" if pairs_recipe is not None
                                 and layers == "auto" else "as given with --layers"), highlight=False)
    if pairs_recipe is not None:
        console.print(f"steer at {pairs_recipe.strength:+.2f} (chosen on dev" + (", stored as the vector's "
                      "recommended strength)" if stamped else "; not stored: --layers, --n-auto or --concept "
                      "changed the recipe)"), highlight=False)
    for w in vec.warnings:
        warn(w)


@app.command("info")
@friendly
def info_cmd(path: Path = typer.Argument(..., help="A vector file.")) -> None:
    """Show a vector file's provenance and per-layer validation."""
    import json

    from ..vector import load_vector

    vec = load_vector(path)
    meta = vec.metadata()
    meta.pop("validation")
    meta.pop("read_validation")
    meta.pop("residual_norm")
    out.print_json(json.dumps(meta))
    from rich.table import Table

    def fmt(au):
        return "-" if au is None else f"{au:.3f}"

    from ..extract.metrics import MIN_VAL_PAIRS

    def interval(layer):
        row = vec.validation.get(layer, {})
        lo, hi = row.get("auroc_lo"), row.get("auroc_hi")
        return "-" if lo is None or hi is None else f"{lo:.2f}-{hi:.2f}"

    n_val = vec.dataset.get("n_val")
    has_ci = isinstance(n_val, int) and n_val < MIN_VAL_PAIRS  # a small validation split: show the intervals
    table = Table("layer", f"val AUROC ({vec.method})", *(["95% interval"] if has_ci else []),
                  *([f"read AUROC ({vec.read_method})"] if vec.read_directions else []), "residual norm")
    for layer in vec.layers:
        read = [fmt(vec.read_auroc(layer))] if vec.read_directions else []
        ci = [interval(layer)] if has_ci else []
        table.add_row(str(layer) + (" ◀" if layer in vec.default_layers else ""), fmt(vec.auroc(layer)), *ci, *read,
                      f"{vec.norm(layer):.1f}")
    out.print(table)
    if has_ci:
        note(f"only {n_val} validation pairs: the AUROCs are rough (95% intervals shown)")


def _write_shipped(vec, output: Path, model_name: str, json_out: bool, steer: str) -> None:
    """Write a shipped recipe vector to ``output`` with its layer table (or its optimisation record
    as JSON) and one line: where it came from and the dose (``steer``: what follows "steer at")."""
    import json

    from ..extract.build import layer_rows

    path = vec.save(output)
    if json_out:
        out.print_json(json.dumps(vec.extra.get("optimisation", {})))
    else:
        out.print(layer_table(layer_rows(vec), f"{vec.concept} · {vec.method} · {model_name} (shipped)"))
    console.print(f"wrote {path} · {vec.method} at layers {vec.default_layers} · steer at {steer}", highlight=False)
