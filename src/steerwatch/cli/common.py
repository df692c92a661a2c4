"""Shared CLI plumbing: one console, clean errors (no tracebacks for user mistakes), model loading."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

# Markup is off on both consoles: user text (paths, prompts, model output, error messages) keeps its
# [square brackets]. Style with style= or rich.text.Text, never with [tags] in strings
# (tests/test_markup.py checks this).
console = Console(stderr=True, markup=False)
out = Console(markup=False)


def note(message: str) -> None:
    """A dim progress note on stderr."""
    console.print(message, style="dim", highlight=False)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn steerwatch's own errors into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..errors import SteerwatchError

        try:
            return fn(*args, **kwargs)
        except SteerwatchError as exc:
            from rich.text import Text

            console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def load(spec: str, *, layers_path: str | None = None, device: str = "auto", dtype: str | None = None,
         quiet: bool = False):
    """Load a model for a command: ``--device`` and ``--dtype`` are checked before anything loads."""
    from ..models import check_dtype, load_model, resolve_device

    check_dtype(dtype)
    resolved = resolve_device(device)

    log = None if quiet else note
    if not quiet:
        note(f"loading model {spec!r} on {resolved}" + (f" as {dtype}" if dtype else "") + "…")
    return load_model(spec, layers_path=layers_path, device=resolved, dtype=dtype,
                      progress=not quiet and sys.stderr.isatty(), log=log)


def parse_floats(text: str, what: str) -> list[float]:
    """Comma-separated numbers from the command line, with an error that names the option."""
    from ..errors import SteerwatchError

    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SteerwatchError(f"{what} must be comma-separated numbers like 0,0.01,0.02, got {text!r}") from None


def parse_layers(text: str):
    from ..errors import ExtractionError

    if text == "auto":
        return "auto"
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ExtractionError(f"--layers must be 'auto' or comma-separated integers like 10,12, got {text!r}") from None


def check_engine(name: str) -> None:
    """``--engine``: one of the runtime's engines (checked before the model loads)."""
    from ..errors import SteerwatchError
    from ..runtime import ENGINES

    if name not in ENGINES:
        raise SteerwatchError(f"unknown --engine {name!r}; valid: {', '.join(ENGINES)}")


def start_engine(loaded: Any, name: str, *, needed: bool = True) -> Any:
    """The ``--engine`` to generate with: None for the default Hugging Face path (or when nothing is
    generated), else a started engine; give it back to :func:`stop_engine`."""
    if name == "hf" or not needed:
        return None
    from ..runtime import make_engine

    note(f"starting the {name} engine…")
    return make_engine(loaded, name)


def stop_engine(engine: Any) -> None:
    close = getattr(engine, "close", None)
    if close is not None:
        close()
