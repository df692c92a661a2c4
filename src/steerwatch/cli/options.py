"""Options several commands share, declared once (Typer's ``Annotated`` form)."""
from __future__ import annotations

from typing import Annotated

import typer

MODEL_HELP = "Model spec: default, gemma-3-270m, a local dir, a .gguf file or a hub id."
Model = Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)]
"""``--model/-m`` (default ``"default"``, the embedded model)."""

LayersPath = Annotated[str | None, typer.Option(
    help="Dotted path to the decoder blocks, for unknown architectures.")]
"""``--layers-path``."""
