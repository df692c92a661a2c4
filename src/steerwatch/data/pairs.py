"""Contrast pairs: the team's JSONL pair format (``{"prompt", "positive", "negative", "system",
"meta", "split"}``), validated line by line, and the sets they form."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
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

    def __repr__(self) -> str:
        src = f", source {self.source!r}" if self.source else ""
        return (f"<ContrastSet {self.name!r}: {len(self.pairs)} pairs ({len(self.train)} train / {len(self.val)} val)"
                f"{src}>")

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


def _from_preference(obj: dict, *, path: str, line: int) -> dict:
    """The common preference format (``prompt`` / ``chosen`` / ``rejected``, as in TRL and Anthropic
    HH) read as a pair: ``chosen`` is the positive side. Mixing the two namings in one line is an error."""
    pref = {"chosen", "rejected"} & set(obj)
    if not pref:
        return obj
    both = {"positive", "negative"} & set(obj)
    if both:
        raise DataFormatError(f"give positive/negative or chosen/rejected, not both (found {', '.join(sorted(pref))} "
                              f"and {', '.join(sorted(both))})", path=path, line=line, field=sorted(pref)[0])
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise DataFormatError("missing required field (the preference format needs chosen and rejected)",
                                  path=path, line=line, field=key)
        if isinstance(obj[key], list):
            raise DataFormatError("must be a string; chat-message lists (conversational preference data) are not "
                                  "read: give the prompt in 'prompt' and the answer text here", path=path, line=line,
                                  field=key)
    out = {k: v for k, v in obj.items() if k not in ("chosen", "rejected")}
    out["positive"], out["negative"] = obj["chosen"], obj["rejected"]
    return out


def parse_pairs_lines(lines: list[str], *, path: str) -> list[ContrastPair]:
    pairs: list[ContrastPair] = []
    for i, obj in iter_jsonl_objects(lines, path=path):
        obj = _from_preference(obj, path=path, line=i)
        unknown = set(obj) - {"prompt", "positive", "negative", "system", "meta", "split", "id"}
        if unknown:
            raise DataFormatError(
                f"unknown field(s) {', '.join(sorted(unknown))}; valid: prompt, positive, negative, system, "
                "meta, split, id (or the preference format's chosen / rejected)", path=path, line=i,
                field=sorted(unknown)[0])
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
    deterministic hash split puts ~20 % of pairs in val). Lines in the preference format
    (``prompt`` / ``chosen`` / ``rejected``) are read too: ``chosen`` is the positive side."""
    p = Path(path)
    lines = jsonl_lines(read_text(p), path=p)
    return ContrastSet(name=name or p.stem, pairs=parse_pairs_lines(lines, path=str(p)), source=str(p))


# ---------------------------------------------------------------- built-in concepts
