"""Built-in labelled evaluation sets (package data under ``data/eval``): conversations with a
``label`` (1 = the behaviour is present), written by the team for detector evaluation and kept
apart from the extraction data. Never pick layers, strengths or thresholds on them."""
from __future__ import annotations

from importlib import resources

from ..errors import DataFormatError
from ..io import jsonl_lines
from .conversations import Conversation, parse_conversations_lines


def _eval_dir():
    return resources.files("steerwatch") / "data" / "eval"


def list_eval_sets() -> list[str]:
    d = _eval_dir()
    if not d.is_dir():
        return []
    return sorted(e.name[:-6] for e in d.iterdir() if e.name.endswith(".jsonl"))


def load_eval_set(name: str) -> list[Conversation]:
    res = _eval_dir().joinpath(f"{name}.jsonl")
    if not res.is_file():
        raise DataFormatError(f"unknown built-in evaluation set {name!r}; built-in: "
                              f"{', '.join(list_eval_sets()) or '(none)'}. To use your own, pass a .jsonl path")
    return parse_conversations_lines(jsonl_lines(res.read_text(encoding="utf-8")), path=f"<builtin>/eval/{name}.jsonl")
