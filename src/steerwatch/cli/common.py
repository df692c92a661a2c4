"""Shared CLI plumbing: one console, clean errors (no tracebacks for user mistakes), model loading."""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

# Markup is off on both consoles: user text (paths, prompts, model output, error messages) keeps its
# [square brackets]. Style with style= or rich.text.Text, never with [tags] in strings
# (tests/test_markup.py checks this).
console = Console(stderr=True, markup=False)
out = Console(markup=False)


def print_table(table: Any, *, console: Console | None = None) -> None:
    """Print a Rich table whole. When it is wider than the console (a narrow terminal, or the 80
    columns Rich assumes when stdout is not a terminal, e.g. piped to a file), print it at its
    natural width instead (the lines wrap) rather than squeeze cells into ellipses."""
    c = console or out
    need = c.measure(table, options=c.options.update_width(100_000)).maximum
    if need <= c.width:
        c.print(table)
    else:
        Console(width=need, file=c.file, markup=False, stderr=c.stderr).print(table)


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
    from ..layers import parse_layer_list

    try:
        return parse_layer_list(text)
    except ValueError as exc:
        raise ExtractionError(f"--layers must be 'auto', comma-separated integers like 10,12 or a range like 9-14, "
                              f"got {text!r} ({exc})") from None


def check_engine(name: str) -> None:
    """``--engine``: one of the runtime's engines (checked before the model loads)."""
    from ..errors import SteerwatchError
    from ..runtime import ENGINES

    if name not in ENGINES:
        raise SteerwatchError(f"unknown --engine {name!r}; valid: {', '.join(ENGINES)}")
    if name == "vllm":
        from ..runtime.vllm_engine import require_vllm

        require_vllm()


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


# ------------------------------------------------------------------------------------------------
# Early checks and independent outputs (issue 21 item 2): every option, file and optional dependency
# is checked before the model loads; after the long work, each output is written on its own, so one
# that fails does not cost the others.

def _nearest_existing(path: Path) -> Path:
    p = path.absolute().parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_output_path(path: Path | None, what: str) -> None:
    """An output file written after the long work: fail now, before the model loads, when it is a
    folder, when a folder above it is a file, or when it (or the folder it goes in) is not writable.
    Missing folders are created when the file is written, not here."""
    import os

    from ..errors import SteerwatchError

    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise SteerwatchError(f"{what} {path} is a directory; give a file name")
    folder = _nearest_existing(path)
    if not folder.is_dir():
        raise SteerwatchError(f"{what} {path}: {folder} is a file, not a directory")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise SteerwatchError(f"{what} {path}: the file is not writable")
    elif not os.access(folder, os.W_OK | os.X_OK):
        raise SteerwatchError(f"{what} {path}: cannot write in {folder} (no permission)")


def check_output_dir(path: Path | None, what: str) -> None:
    """An output folder written after the long work: fail now when it is a file, when a folder above
    it is a file, or when it cannot be written or created."""
    import os

    from ..errors import SteerwatchError

    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SteerwatchError(f"{what} {path} is a file; give a folder")
    folder = path if path.is_dir() else _nearest_existing(path)
    if not folder.is_dir():
        raise SteerwatchError(f"{what} {path}: {folder} is a file, not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SteerwatchError(f"{what} {path}: cannot write in {folder} (no permission)")


def check_input_file(path: Path | None, what: str) -> None:
    """An input file read after the model loads: it must exist now."""
    from ..errors import SteerwatchError

    if path is None:
        return
    if not Path(path).exists():
        raise SteerwatchError(f"{what} {path}: no such file")
    if Path(path).is_dir():
        raise SteerwatchError(f"{what} {path} is a folder; give a file")


def require_modules(feature: str, *modules: str) -> None:
    """Packages a feature imports only after the long work (the report's jinja2 and matplotlib are
    base dependencies; a broken environment can still lack them): name them before any work."""
    from ..errors import SteerwatchError
    from ..extras import _installed

    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise SteerwatchError(f"{feature} needs {', '.join(missing)} (a steerwatch dependency), which is not "
                              f"installed here; install it with: pip install {' '.join(missing)}")


class Outputs:
    """A command's outputs, each written on its own after the long work: one that fails (a path
    that became unwritable, a plotting error) is reported and the others are still written;
    :meth:`finish` then ends the command with one error naming what failed and what was written.

    ``outputs.write("report", path, lambda: path.write_text(...))`` ... ``outputs.finish()``."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.failed: list[str] = []

    def done(self, what: str, path: Path | str) -> None:
        """An output the long work already wrote (rows appended as they were computed)."""
        self.written.append(f"{what} {path}")

    def write(self, what: str, path: Path | str | None, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (which writes ``what`` to ``path``); on failure record it and return None."""
        try:
            result = fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # any failure of one output must not cost the others
            from ..errors import SteerwatchError

            why = str(exc) if isinstance(exc, SteerwatchError) else f"{type(exc).__name__}: {exc}"
            self.failed.append(f"{what}" + (f" {path}" if path is not None else "") + f" ({why})")
            console.print(f"could not write {what}" + (f" {path}" if path is not None else "") + f": {why}",
                          style="red", highlight=False)
            return None
        if path is not None:
            self.written.append(f"{what} {path}")
        return result

    def text(self, what: str, path: Path, make: Callable[[], str]) -> bool:
        """Write the text ``make()`` returns to ``path`` (its folder created); True when written."""

        def write() -> bool:
            text = make()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return True

        return bool(self.write(what, path, write))

    def skip(self, what: str, why: str) -> None:
        """An output that could not be made because something it needs failed."""
        self.failed.append(f"{what} ({why})")

    def finish(self) -> None:
        """Raise one error (exit 2) when any output failed, naming those written."""
        if not self.failed:
            return
        from ..errors import SteerwatchError

        raise SteerwatchError(f"{len(self.failed)} output(s) failed: " + "; ".join(self.failed)
                              + ". Written: " + (", ".join(self.written) or "nothing"))
