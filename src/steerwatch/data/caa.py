"""The CAA A/B multiple-choice format (as in ../shared/data/CAA):
a JSON list of ``{"question", "answer_matching_behavior", "answer_not_matching_behavior"}``.

Each item becomes a pair sharing the question as prompt, with completions ``"(A"``-style answer
letters: positive = the behaviour-matching answer. Read at the answer letter, this is the
classic CAA contrast.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DataFormatError
from ..io import read_json

_ANSWER = re.compile(r"^\s*\(([A-Z])\)\s*$")


def is_caa_file(path: str | Path) -> bool:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, list) and bool(data) and isinstance(data[0], dict) and "answer_matching_behavior" in data[0]


def _answer(item: dict, key: str, path: str, idx: int) -> str:
    if key not in item:
        raise DataFormatError("missing required field", path=path, line=idx, field=key)
    val = item[key]
    if isinstance(val, list) and len(val) == 1:
        val = val[0]
    if not isinstance(val, str) or not _ANSWER.match(val):
        raise DataFormatError(f"must be an answer letter like '(A)', got {val!r}", path=path, line=idx, field=key)
    return val.strip()


def load_caa(path: str | Path, *, name: str | None = None, val_fraction: float = 0.2):
    """Load a CAA A/B file. ``line`` in errors is the 1-based item index in the JSON list.
    The split is deterministic (hash of the question)."""
    from .pairs import ContrastPair, ContrastSet, _hash_split

    p = Path(path)
    data = read_json(p)
    if not isinstance(data, list) or not data:
        raise DataFormatError("a CAA file must be a non-empty JSON list of items", path=str(p))
    pairs = []
    for idx, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise DataFormatError(f"item must be an object, got {type(item).__name__}", path=str(p), line=idx)
        q = item.get("question")
        if not isinstance(q, str) or not q.strip():
            raise DataFormatError("missing or empty", path=str(p), line=idx, field="question")
        pos = _answer(item, "answer_matching_behavior", str(p), idx)
        neg = _answer(item, "answer_not_matching_behavior", str(p), idx)
        if pos == neg:
            raise DataFormatError("matching and not-matching answers are the same letter", path=str(p), line=idx,
                                  field="answer_not_matching_behavior")
        letters = set(re.findall(r"\(([A-Z])\)", q))
        for key, ans in (("answer_matching_behavior", pos), ("answer_not_matching_behavior", neg)):
            if letters and ans[1] not in letters:
                raise DataFormatError(f"answer {ans} is not among the question's options "
                                      f"{', '.join(sorted(letters))}", path=str(p), line=idx, field=key)
        # completions stop after the letter: "(A" — the letter token is where the choice is made
        pairs.append(ContrastPair(positive=pos[:2], negative=neg[:2], prompt=q,
                                  split=_hash_split(q, val_fraction=val_fraction),
                                  meta={"format": "caa"}))
    return ContrastSet(name=name or p.parent.name or p.stem, pairs=pairs, source=str(p))
