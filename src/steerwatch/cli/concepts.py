from __future__ import annotations

import typer

from .app import app
from .common import friendly, note, out


@app.command("concepts")
@friendly
def concepts_cmd(name: str = typer.Argument(None, help="Show this concept's card in full.")) -> None:
    """List the built-in concept sets with their sizes and cards."""
    from rich.table import Table
    from rich.text import Text

    from ..data import concept_card, list_concepts, load_concept
    from ..extract.build import DEFAULT_METHOD

    def methods(ds) -> str:
        steer = ds.default_method or DEFAULT_METHOD
        return f"{steer} (read: {ds.default_read_method})" if ds.default_read_method else steer

    if name:
        ds = load_concept(name)
        out.print(Text.assemble((name, "bold"),
                                f": {len(ds.train)} train / {len(ds.val)} val pairs · method {methods(ds)}"))
        card = concept_card(name)
        if card:
            from rich.markdown import Markdown

            out.print(Markdown(card))
        else:
            out.print("(no card)")
        return
    table = Table("concept", "train", "val", "method", "summary")
    for c in list_concepts():
        ds = load_concept(c)
        card = concept_card(c) or ""
        table.add_row(c, str(len(ds.train)), str(len(ds.val)), methods(ds), card_summary(card))
    out.print(table)
    note("steerwatch concepts NAME shows a concept's whole card.")


def card_summary(card: str, width: int = 90) -> str:
    """The card's first sentence of prose as plain text (Markdown emphasis, code and links removed),
    cut at a word boundary with an ellipsis when longer than ``width``."""
    import re

    para: list[str] = []
    for ln in card.splitlines():
        t = ln.strip()
        if not t or t.startswith(("#", "|", "-", "```")) or (t.startswith("**") and ":**" in t):  # a label line
            if para:
                break
            continue
        para.append(t)
    text = " ".join(para)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # [label](url) -> label
    text = re.sub(r"(\*\*|\*|__|`)", "", text)
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(first) <= width:
        return first
    cut = first[: width - 1]
    if first[width - 1] != " ":  # mid-word: drop the partial word
        cut = cut.rsplit(" ", 1)[0]
    cut = cut.rstrip(" ,;:")
    return cut + "…"
