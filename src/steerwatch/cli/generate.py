from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import console, friendly, load, out
from .main import app


def read_prompts_file(path: Path) -> list:
    """JSONL with {"prompt": str} or {"messages": [...]} per line (optional "id"), or plain text, one prompt a line."""
    from ..data._io import iter_jsonl_objects, read_text
    from ..errors import DataFormatError

    lines = read_text(path).splitlines()
    if path.suffix != ".jsonl":
        items = [{"id": str(i), "prompt": line} for i, line in enumerate(ln for ln in lines if ln.strip())]
        if not items:
            raise DataFormatError("no prompts in file", path=str(path))
        return items
    items = []
    for i, obj in iter_jsonl_objects(lines, path=str(path)):
        if not ("prompt" in obj or "messages" in obj):
            raise DataFormatError("each line needs a 'prompt' string or a 'messages' list", path=str(path), line=i,
                                  field="prompt")
        p = obj.get("messages", obj.get("prompt"))
        if not (isinstance(p, str) and p.strip()) and not (isinstance(p, list) and p):
            raise DataFormatError("must be a non-empty string (prompt) or list (messages)", path=str(path), line=i,
                                  field="messages" if "messages" in obj else "prompt")
        items.append({"id": str(obj.get("id", len(items))), "prompt": p})
    if not items:
        raise DataFormatError("no prompts in file", path=str(path))
    return items


@app.command("generate")
@friendly
def generate_cmd(
    prompt: Optional[List[str]] = typer.Argument(None, help="One or more user prompts."),
    steer: Optional[List[str]] = typer.Option(None, "--steer", "-s",
        help="PATH[@LAYERS]:OP[:POSITIONS], repeatable. OP: +0.3 / -0.2 (strength in units of the layer's typical "
             "residual norm), ablate, clamp=VALUE. POSITIONS: all (default), prompt, generated."),
    model: str = typer.Option("default", "--model", "-m", help="Model spec."),
    system: Optional[str] = typer.Option(None, help="System prompt."),
    compare: bool = typer.Option(False, "--compare", help="Also show the unsteered answer side by side."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts-file", "-f",
        help="JSONL ({'prompt'} or {'messages'}, optional 'id') or a text file with one prompt per line."),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help="Write JSON Lines results here."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per answer."),
    batch_size: int = typer.Option(8, help="Prompts per batch."),
    sample: bool = typer.Option(False, help="Sample instead of greedy decoding."),
    temperature: float = typer.Option(0.7, help="Sampling temperature (with --sample)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (with --sample)."),
    force: bool = typer.Option(False, help="Apply vectors even if they were built on other weights."),
    layers_path: Optional[str] = typer.Option(None, help="Dotted path to the decoder blocks, for unknown architectures."),
) -> None:
    """Generate answers, optionally steered; print them or write JSON Lines."""
    from ..errors import SteerwatchError
    from ..generation import generate
    from ..steer import parse_steer_spec

    items = [{"id": str(i), "prompt": p} for i, p in enumerate(prompt or [])]
    if prompts_file is not None:
        items += read_prompts_file(prompts_file)
    if not items:
        raise SteerwatchError("no prompt given: pass prompts as arguments or --prompts-file FILE")
    specs = [parse_steer_spec(s) for s in (steer or [])]  # parse before loading the model: fail fast
    loaded = load(model, layers_path=layers_path)
    for spec in specs:
        spec.vector.check_model(loaded, force=force)
    prompts = [it["prompt"] for it in items]
    common = dict(system=system, max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=sample,
                  temperature=temperature, seed=seed, force=force, progress=True)
    steered = generate(loaded, prompts, steer=specs or None, **common)
    base = generate(loaded, prompts, **common) if (compare and specs) else None
    rows = []
    for k, it in enumerate(items):
        row = {"id": it["id"], "prompt": it["prompt"], "steering": [s.describe() for s in specs],
               "output": steered[k]}
        if base is not None:
            row["unsteered_output"] = base[k]
        rows.append(row)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        console.print(f"wrote {len(rows)} rows to [bold]{output}[/]")
        return
    from rich.table import Table

    if base is not None:
        table = Table("prompt", "unsteered", "steered: " + ", ".join(r for r in rows[0]["steering"]), show_lines=True)
        for row in rows:
            table.add_row(str(row["prompt"]), row["unsteered_output"], row["output"])
        out.print(table)
    else:
        for row in rows:
            if len(rows) > 1:
                out.print(f"[bold]> {row['prompt']}[/]")
            out.print(row["output"], highlight=False)
