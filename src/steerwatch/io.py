"""All reading of JSON and JSON Lines files, with errors that name the file and the line.

JSON Lines are split on "\n" only: ``str.splitlines()`` would also split at U+2028, U+2029,
U+0085 and other characters that JSON strings may hold unescaped (``json.dumps(...,
ensure_ascii=False)`` writes them), and reject valid files."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import DataFormatError


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_text(path: str | Path) -> str:
    p = Path(path)
    if p.is_dir():
        raise DataFormatError("is a directory, not a file", path=str(p))
    if not p.is_file():
        raise DataFormatError("file does not exist", path=str(p))
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"not UTF-8 text ({exc.reason})", path=str(p)) from None


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"not valid JSON ({exc.msg})", path=str(path), line=exc.lineno) from None


# The longest line a JSONL or prompt file may have (about 250k tokens of text: more than any model
# here reads). A longer line is refused before it is parsed or tokenised (a 1 GB line would exhaust
# the tokenizer); split the record or shorten it.
MAX_LINE_CHARS = 1_000_000


def jsonl_lines(text: str, *, path: str | Path | None = None) -> list[str]:
    """The lines of a JSON Lines (or one-prompt-a-line) text, split on "\n" only (a trailing "\r" is
    dropped). A line longer than :data:`MAX_LINE_CHARS` is a DataFormatError naming it."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    for i, line in enumerate(lines, start=1):
        if len(line) > MAX_LINE_CHARS:
            raise DataFormatError(f"the line has {len(line)} characters, more than the limit of {MAX_LINE_CHARS}; "
                                  "split the record or shorten it", path=None if path is None else str(path), line=i)
    return lines


def read_jsonl_lines(path: str | Path) -> list[str]:
    """The lines of a JSON Lines file (see :func:`jsonl_lines`)."""
    return jsonl_lines(read_text(path), path=path)


def iter_jsonl_objects(lines: list[str], *, path: str) -> Iterator[tuple[int, dict]]:
    """(1-based line number, object) for every non-blank line; anything but a JSON object is an error."""
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"not valid JSON ({exc.msg} at column {exc.colno})", path=path, line=i) from None
        if not isinstance(obj, dict):
            raise DataFormatError(f"each line must be a JSON object, got {type(obj).__name__}", path=path, line=i)
        yield i, obj
