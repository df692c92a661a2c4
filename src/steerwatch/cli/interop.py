"""steerwatch interop commands: llama.cpp control vectors (export-gguf, import-gguf)."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from .app import app
from .common import check_output_path, console, friendly, load, note, out
from .options import Device, Dtype, LayersPath

_MAPPING = ("layer numbers map one to one: llama.cpp adds direction.N to the output of decoder block N "
            "(0-based), which is steerwatch layer N; layer 0 has no slot")


def _layers_arg(layers: str | None, all_layers: bool):
    from ..errors import LayerResolutionError

    if layers is not None and all_layers:
        raise LayerResolutionError("give either --layers or --all-layers, not both")
    if all_layers:
        return "all"
    if layers is None:
        return None
    try:
        chosen = [int(x) for x in layers.split(",") if x.strip()]
    except ValueError:
        raise LayerResolutionError(f"--layers must be comma-separated integers like 10,12, got {layers!r}") from None
    if not chosen:
        raise LayerResolutionError("--layers is empty; give layers like 10,12")
    return chosen


@app.command("export-gguf")
@friendly
def export_gguf_cmd(
    vector: Path = typer.Argument(..., help="A steerwatch vector file (.sv)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the llama.cpp control vector (.gguf)."),
    strength: float | None = typer.Option(None, "--strength", "-s",
        help="Strength baked into the file, in steerwatch units (fraction of the layer's residual norm); negative "
             "pushes away from the concept. Default: the vector's recommended strength; required without one."),
    layers: str | None = typer.Option(None, help="Comma-separated layers to export (default: the vector's "
                                                    "default layers). Layer 0 cannot be exported."),
    all_layers: bool = typer.Option(False, "--all-layers", help="Export every layer except 0."),
    model_hint: str | None = typer.Option(None, help="controlvector.model_hint (informative; llama.cpp ignores "
                                                        "it). Default: the vector's model name."),
) -> None:
    """Write a vector as a llama.cpp control vector (for --control-vector)."""
    from rich.table import Table

    from ..interop import export_control_vector, read_control_vector
    from ..vector import load_vector

    vec = load_vector(vector)
    chosen = _layers_arg(layers, all_layers)
    path = export_control_vector(vec, output, strength=strength, layers=chosen, model_hint=model_hint)
    cv = read_control_vector(path)  # read back: what llama.cpp will see
    s = float(cv.strength if cv.strength is not None else 0.0)
    table = Table("tensor", "steerwatch layer", "residual norm", "push norm", title=f"{vec.concept} → {path}")
    for layer in cv.layers:
        table.add_row(f"direction.{layer}", str(layer), f"{vec.norm(layer):.2f}",
                      f"{float(cv.pushes[layer].norm()):.4g}")
    out.print(table)
    if chosen == "all" and 0 in vec.directions:
        note("layer 0 left out: llama.cpp cannot express it")
    spec = f"{vector}@{','.join(str(x) for x in cv.layers)}:{s:+g}"
    out.print(f"wrote {len(cv.layers)} direction tensors at strength {s:+g} ({_MAPPING}).\n"
              f"llama.cpp: --control-vector {path} applies the same push as `steerwatch generate --steer {spec}`;\n"
              f"--control-vector-scaled {path}:K (older builds: {path} K) applies K times it.", highlight=False)


@app.command("import-gguf")
@friendly
def import_gguf_cmd(
    path: Path = typer.Argument(..., help="A llama.cpp control vector (.gguf)."),
    output: Path = typer.Option(..., "-o", "--output", help="Where to write the steerwatch vector (.sv)."),
    model: str = typer.Option("default", "--model", "-m",
        help="The model the control vector is for: its hidden size and layer count are checked and the vector "
             "records its name and weights fingerprint."),
    device: Device = "auto",
    dtype: Dtype = None,
    concept: str | None = typer.Option(None, help="Concept name (default: from the file's steerwatch metadata, "
                                                     "else the file name)."),
    force: bool = typer.Option(False, help="Import a steerwatch export even if it was made on other weights."),
    layers_path: LayersPath = None,
) -> None:
    """Read a llama.cpp control vector into a steerwatch vector file."""
    from rich.table import Table

    from ..interop import import_control_vector, read_control_vector

    check_output_path(output, "-o/--output")
    read_control_vector(path)  # a bad file fails before the (slow) model load
    loaded = load(model, layers_path=layers_path, device=device, dtype=dtype)
    vec = import_control_vector(path, loaded, concept=concept, force=force)
    vec.save(output)
    info = vec.extra["gguf_import"]
    s = float(vec.recommended_strength or 1.0)
    table = Table("tensor", "steerwatch layer", "residual norm", "push at recommended strength",
                  title=f"{path} → {output} ({vec.concept})")
    for layer in vec.layers:
        table.add_row(f"direction.{layer}", str(layer), f"{vec.norm(layer):.4g}", f"{abs(s) * vec.norm(layer):.4g}")
    out.print(table)
    for text in info["notes"]:
        console.print(Text.assemble(("note:", "yellow"), " ", text), highlight=False)
    if info["strength_unit"] == "residual_norm":
        unit = (f"a steerwatch export: residual norms and provenance restored; strengths keep their steerwatch "
                f"meaning, and {s:+g} (the exported strength) reproduces the file's push")
    else:
        unit = ("no residual-norm statistics in the file: each layer's norm unit is the tensor's own norm, so "
                "strength s here equals llama.cpp scale s (+1 reproduces --control-vector)")
    out.print(f"{_MAPPING}.\n{unit}.\nsteerwatch generate --steer {output}:{s:+g} applies the push llama.cpp "
              f"applies with --control-vector {path}.", highlight=False)
