from __future__ import annotations

import typer

from .app import app
from .common import friendly, out


@app.command("concepts")
@friendly
def concepts_cmd(name: str = typer.Argument(None, help="Show this concept's card in full.")) -> None:
    """List the built-in concept sets with their sizes and cards."""
    from rich.table import Table

    from ..data import concept_card, list_concepts, load_concept
    from ..extract.build import DEFAULT_METHOD

    def methods(ds) -> str:
        steer = ds.default_method or DEFAULT_METHOD
        return f"{steer} (read: {ds.default_read_method})" if ds.default_read_method else steer

    if name:
        ds = load_concept(name)
        out.print(f"[bold]{name}[/]: {len(ds.train)} train / {len(ds.val)} val pairs · method {methods(ds)}")
        out.print(concept_card(name) or "(no card)")
        return
    table = Table("concept", "train", "val", "method", "summary")
    for c in list_concepts():
        ds = load_concept(c)
        card = concept_card(c) or ""
        summary = next((ln.strip() for ln in card.splitlines()
                        if ln.strip() and not ln.lstrip().startswith(("#", "**", "|", "-", "`"))), "")
        table.add_row(c, str(len(ds.train)), str(len(ds.val)), methods(ds), summary[:80])
    out.print(table)
