"""Contrast data: the team's JSONL pair format, CAA A/B items, persona-instruction contrast,
and the built-in concept sets (package data under ``data/concepts``).

Adding a built-in concept is adding ``concepts/<name>.jsonl`` (and optionally a card
``concepts/<name>.md``): nothing else needs to change. A card may open with settings between two
``---`` lines (``method: ...``, ``read_method: lda``): the extraction methods used for that
concept's steering and read directions when none is given, chosen on the concept's own
validation split and explained in the card.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import DataFormatError, ExtractionError
from ..io import jsonl_lines
from .caa import load_caa
from .pairs import ContrastPair, ContrastSet, load_pairs, parse_pairs_lines
from .persona import PersonaSpec, load_persona


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
