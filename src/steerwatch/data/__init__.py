"""Contrast data: the team's JSONL pair format, CAA A/B items, persona-instruction contrast,
and the built-in concept sets (package data under ``data/concepts``).

Adding a built-in concept is adding ``concepts/<name>.jsonl`` (and optionally a card
``concepts/<name>.md``): nothing else needs to change. A card may open with settings between two
``---`` lines (``method: ...``, ``read_method: lda``): the extraction methods used for that
concept's steering and read directions when none is given, chosen on the concept's own
validation split and explained in the card.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataFormatError, ExtractionError
from ..io import iter_jsonl_objects, jsonl_lines, read_text

SPLITS = ("train", "val")


@dataclass(frozen=True)
class ContrastPair:
    """One contrast. With ``prompt``: a shared user prompt and two assistant completions.
    Without: two full texts. ``positive`` is the concept's side (honest, sycophantic, ...)."""

    positive: str
    negative: str
    prompt: str | None = None
    system: str | None = None
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class ContrastSet:
    name: str
    pairs: list[ContrastPair]
    source: str = ""
    # the extraction methods used when none is asked for (a built-in concept's card may set them):
    # the steering directions' and the read directions' (detectors) method
    default_method: str | None = None
    default_read_method: str | None = None

    @property
    def train(self) -> list[ContrastPair]:
        return [p for p in self.pairs if p.split == "train"]

    @property
    def val(self) -> list[ContrastPair]:
        return [p for p in self.pairs if p.split == "val"]

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for p in self.pairs:
            h.update(json.dumps([p.prompt, p.system, p.positive, p.negative, p.split]).encode())
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "sha256": self.sha256,
                "n_train": len(self.train), "n_val": len(self.val)}


def _hash_split(*parts: str | None, val_fraction: float = 0.2) -> str:
    """A deterministic split for data that does not carry one: the same pair always lands in the
    same split, whatever the file order."""
    h = hashlib.sha256(json.dumps(parts).encode()).digest()
    return "val" if int.from_bytes(h[:4], "big") / 2**32 < val_fraction else "train"


def _required_str(obj: dict, key: str, path: str, line: int) -> str:
    val = _str_field(obj, key, path, line, required=True)
    assert val is not None  # required=True raises instead of returning None
    return val


def _str_field(obj: dict, key: str, path: str, line: int, *, required: bool) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise DataFormatError("missing required field", path=path, line=line, field=key)
        return None
    val = obj[key]
    if not isinstance(val, str):
        raise DataFormatError(f"must be a string, got {type(val).__name__}", path=path, line=line, field=key)
    if required and not val.strip():
        raise DataFormatError("must not be empty", path=path, line=line, field=key)
    return val


def parse_pairs_lines(lines: list[str], *, path: str) -> list[ContrastPair]:
    pairs: list[ContrastPair] = []
    for i, obj in iter_jsonl_objects(lines, path=path):
        unknown = set(obj) - {"prompt", "positive", "negative", "system", "meta", "split", "id"}
        if unknown:
            raise DataFormatError(
                f"unknown field(s) {', '.join(sorted(unknown))}; valid: prompt, positive, negative, system, "
                "meta, split, id", path=path, line=i, field=sorted(unknown)[0])
        pos = _required_str(obj, "positive", path, i)
        neg = _required_str(obj, "negative", path, i)
        prompt = _str_field(obj, "prompt", path, i, required=False)
        if prompt is not None and not prompt.strip():
            raise DataFormatError("must not be empty when given", path=path, line=i, field="prompt")
        system = _str_field(obj, "system", path, i, required=False)
        if pos == neg:
            raise DataFormatError("positive and negative are identical; a contrast needs two different sides",
                                  path=path, line=i, field="negative")
        meta = obj.get("meta", {})
        if not isinstance(meta, dict):
            raise DataFormatError("must be a JSON object", path=path, line=i, field="meta")
        split = obj.get("split")
        if split is None:
            split = _hash_split(prompt, pos, neg)
        elif split not in SPLITS:
            raise DataFormatError(f"must be one of {', '.join(SPLITS)}, got {split!r}", path=path, line=i,
                                  field="split")
        pairs.append(ContrastPair(positive=pos, negative=neg, prompt=prompt, system=system, split=split,
                                  meta=meta))
    if not pairs:
        raise DataFormatError("the file holds no pairs", path=path)
    return pairs


def load_pairs(path: str | Path, *, name: str | None = None) -> ContrastSet:
    """Load the team's JSONL pair format: one object per line with ``positive`` and ``negative``,
    optionally ``prompt``, ``system``, ``meta`` and ``split`` (train/val; when absent a
    deterministic hash split puts ~20 % of pairs in val)."""
    p = Path(path)
    lines = jsonl_lines(read_text(p))
    return ContrastSet(name=name or p.stem, pairs=parse_pairs_lines(lines, path=str(p)), source=str(p))


# ---------------------------------------------------------------- built-in concepts
def _concept_dir():
    return resources.files("steerwatch") / "data" / "concepts"


def list_concepts() -> list[str]:
    return sorted(e.name[:-6] for e in _concept_dir().iterdir() if e.name.endswith(".jsonl"))


CARD_SETTINGS = ("method", "read_method")


def _split_card(text: str, *, where: str) -> tuple[dict[str, str], str]:
    """A card's settings block (``---`` / ``key: value`` lines / ``---``) and the card text after it."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, text
    settings: dict[str, str] = {}
    for i, line in enumerate(lines[1:], start=2):
        if line.strip() == "---":
            return settings, "".join(lines[i:])
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep or key not in CARD_SETTINGS:
            raise DataFormatError(f"card setting must be one of {', '.join(CARD_SETTINGS)} as 'key: value', "
                                  f"got {line.strip()!r}", path=where, line=i)
        settings[key] = value.strip()
    raise DataFormatError("the card's settings block opened with '---' is never closed by a second '---'",
                          path=where, line=1)


def _card_text(name: str) -> str | None:
    card = _concept_dir().joinpath(f"{name}.md")
    return card.read_text(encoding="utf-8") if card.is_file() else None


def concept_card(name: str) -> str | None:
    """The card of a built-in concept (its settings block left out), or None."""
    text = _card_text(name)
    return None if text is None else _split_card(text, where=f"<builtin>/{name}.md")[1]


def concept_settings(name: str) -> dict[str, str]:
    """The settings a built-in concept's card declares (e.g. ``{"method": "lda"}``), checked."""
    from ..types import METHODS

    text = _card_text(name)
    settings = {} if text is None else _split_card(text, where=f"<builtin>/{name}.md")[0]
    for key in CARD_SETTINGS:
        if key in settings and settings[key] not in METHODS:
            raise ExtractionError(f"unknown method {settings[key]!r}; valid: {', '.join(METHODS)} "
                                  f"(<builtin>/{name}.md, {key})")
    return settings


def load_concept(name: str) -> ContrastSet:
    """A built-in concept set by name (see :func:`list_concepts`)."""
    res = _concept_dir().joinpath(f"{name}.jsonl")
    if not res.is_file():
        raise DataFormatError(f"unknown built-in concept {name!r}; built-in concepts: {', '.join(list_concepts())}. "
                              "To use your own data, pass the path of a .jsonl file")
    lines = jsonl_lines(res.read_text(encoding="utf-8"))
    settings = concept_settings(name)
    return ContrastSet(name=name, pairs=parse_pairs_lines(lines, path=f"<builtin>/{name}.jsonl"),
                       source=f"steerwatch built-in concept {name}",
                       default_method=settings.get("method"), default_read_method=settings.get("read_method"))


def load_contrast(source: str | Path) -> ContrastSet:
    """A concept name, a JSONL pair file, a CAA JSON file or a persona JSON file (by content)."""
    s = str(source)
    if not Path(s).exists() and s in list_concepts():
        return load_concept(s)
    p = Path(s)
    if not p.exists():
        raise DataFormatError(f"no such file, and not a built-in concept (built-in: {', '.join(list_concepts())})",
                              path=s)
    if p.suffix == ".jsonl":
        return load_pairs(p)
    if p.suffix == ".json":
        from .caa import is_caa_file, load_caa

        if is_caa_file(p):
            return load_caa(p)
        raise DataFormatError("a .json file must be a CAA A/B list (question, answer_matching_behavior, "
                              "answer_not_matching_behavior); persona files need load_persona + "
                              "build_persona_pairs (CLI: --persona)", path=s)
    raise DataFormatError("unknown data file type; use .jsonl (pairs) or .json (CAA A/B)", path=s)


from .caa import load_caa  # noqa: E402
from .persona import PersonaSpec, load_persona  # noqa: E402

__all__ = [
    "ContrastPair",
    "ContrastSet",
    "PersonaSpec",
    "concept_card",
    "concept_settings",
    "list_concepts",
    "load_caa",
    "load_concept",
    "load_contrast",
    "load_pairs",
    "load_persona",
]
