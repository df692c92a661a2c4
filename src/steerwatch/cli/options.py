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

Device = Annotated[str, typer.Option(
    "--device", help="Where the model runs: auto (a CUDA GPU, else Apple MPS, else the CPU), cpu, cuda, cuda:N or "
                     "mps. An unavailable device is an error before anything loads.")]
"""``--device`` (default ``"auto"``)."""

Dtype = Annotated[str | None, typer.Option(
    "--dtype", help="Weights dtype: float32, bfloat16 or float16 (default: as stored; the embedded models are "
                    "float32). bfloat16 halves memory on a GPU.")]
"""``--dtype`` (default None: as stored)."""
