"""Persona-instruction contrast: a positive and a negative system prompt applied to a list of
questions (the persona_vectors format: ``{"instruction": [{"pos", "neg"}...], "questions": [...]}``).

The known trap: a vector read from prompts that *contain* the two system prompts detects the
instruction, not the behaviour. So steerwatch generates the model's answers under each
instruction and then records the *answers* with the instruction removed
(:func:`steerwatch.extract.persona.build_persona_pairs`): the label lives in the completion alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataFormatError
from ..io import read_json


@dataclass
class PersonaSpec:
    name: str
    instructions: list[tuple[str, str]]  # (positive system prompt, negative system prompt)
    questions: list[str]
    source: str = ""


def load_persona(path: str | Path, *, name: str | None = None) -> PersonaSpec:
    p = Path(path)
    data = read_json(p)
    if not isinstance(data, dict):
        raise DataFormatError("a persona file must be a JSON object with 'instruction' and 'questions'", path=str(p))
    inst = data.get("instruction")
    if not isinstance(inst, list) or not inst:
        raise DataFormatError("must be a non-empty list of {pos, neg} objects", path=str(p), field="instruction")
    pairs = []
    for i, item in enumerate(inst, start=1):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip() for k in ("pos",
                                                                                                            "neg")):
            raise DataFormatError(f"item {i} must be an object with non-empty strings 'pos' and 'neg'",
                                  path=str(p), field="instruction")
        pairs.append((item["pos"], item["neg"]))
    qs = data.get("questions")
    if not isinstance(qs, list) or not qs or not all(isinstance(q, str) and q.strip() for q in qs):
        raise DataFormatError("must be a non-empty list of non-empty strings", path=str(p), field="questions")
    return PersonaSpec(name=name or p.stem, instructions=pairs, questions=list(qs), source=str(p))
