"""Control and reference sets: benign conversations (detector calibration), neutral prompts and
neutral reference text (side effects), and a multiple-choice capability set.

The built-in ones live under ``data/reference`` as package data; every loader also takes a user's
file in the same format. Multiple-choice files may also be CAA-style two-choice files
(``prompt``/``correct``/``incorrect``, as in the CAA MMLU sample).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..io import iter_jsonl_objects, jsonl_lines, read_json, read_text
from .conversations import Conversation, parse_conversations_lines

LETTERS = "ABCDEFGH"
BENIGN_FILES = ("benign_chat.jsonl", "benign_code.jsonl")


def _ref_dir():
    return resources.files("steerwatch") / "data" / "reference"


def _builtin_lines(name: str) -> list[str]:
    return jsonl_lines(_ref_dir().joinpath(name).read_text(encoding="utf-8"))


# ---------------------------------------------------------------- benign control conversations
def load_benign(path: str | Path | None = None) -> list[Conversation]:
    """The benign control set (built-in: ordinary chat plus coding/agentic conversations, nothing
    deceptive, sycophantic or cheating) or a user's JSONL of conversations."""
    if path is not None:
        from .conversations import load_conversations

        return load_conversations(path)
    convs: list[Conversation] = []
    for name in BENIGN_FILES:
        convs += parse_conversations_lines(_builtin_lines(name), path=f"<builtin>/reference/{name}")
    return convs


# ---------------------------------------------------------------- neutral prompts
def parse_prompts_lines(lines: list[str], *, path: str) -> list[str]:
    prompts = []
    for i, obj in iter_jsonl_objects(lines, path=path):
        p = obj.get("prompt")
        if not isinstance(p, str) or not p.strip():
            raise DataFormatError("each line needs a non-empty string field 'prompt'", path=path, line=i,
                                  field="prompt")
        prompts.append(p)
    if not prompts:
        raise DataFormatError("the file holds no prompts", path=path)
    return prompts


def load_prompts(path: str | Path | None = None) -> list[str]:
    """Neutral prompts (built-in) or a user's file: JSONL with a ``prompt`` field per line, or a
    ``.txt`` file with one prompt per line."""
    if path is None:
        return parse_prompts_lines(_builtin_lines("neutral_prompts.jsonl"),
                                   path="<builtin>/reference/neutral_prompts.jsonl")
    p = Path(path)
    text = read_text(p)
    if p.suffix == ".txt":
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not prompts:
            raise DataFormatError("the file holds no prompts", path=str(p))
        return prompts
    return parse_prompts_lines(jsonl_lines(text, path=p), path=str(p))


# ---------------------------------------------------------------- neutral reference text
def parse_text_lines(lines: list[str], *, path: str) -> list[str]:
    texts = []
    for i, obj in iter_jsonl_objects(lines, path=path):
        t = obj.get("text")
        if not isinstance(t, str) or not t.strip():
            raise DataFormatError("each line needs a non-empty string field 'text'", path=path, line=i, field="text")
        texts.append(t)
    if not texts:
        raise DataFormatError("the file holds no passages", path=path)
    return texts


def load_reference_text(path: str | Path | None = None) -> list[str]:
    """Neutral reference passages (built-in) or a user's file: JSONL with a ``text`` field per line,
    or a ``.txt`` file whose passages are separated by blank lines."""
    if path is None:
        return parse_text_lines(_builtin_lines("neutral_text.jsonl"), path="<builtin>/reference/neutral_text.jsonl")
    p = Path(path)
    text = read_text(p)
    if p.suffix == ".txt":
        passages = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
        if not passages:
            raise DataFormatError("the file holds no passages", path=str(p))
        return passages
    return parse_text_lines(jsonl_lines(text, path=p), path=str(p))


# ---------------------------------------------------------------- multiple choice
@dataclass(frozen=True)
class MCItem:
    id: str
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    subject: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.choices)]

    def render(self) -> str:
        """The question with lettered options, as put to the model."""
        opts = "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(self.choices))
        return f"{self.question}\n\n{opts}"


def _mc_from_obj(obj: dict, *, path: str, line: int) -> MCItem:
    if "choices" in obj:
        q, choices, ans = obj.get("question"), obj.get("choices"), obj.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise DataFormatError("missing or empty", path=path, line=line, field="question")
        if (not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS)
                or not all(isinstance(c, str) and c.strip() for c in choices)):
            raise DataFormatError(f"must be a list of 2-{len(LETTERS)} non-empty strings", path=path, line=line,
                                  field="choices")
        if len(set(choices)) != len(choices):
            raise DataFormatError("choices must be distinct", path=path, line=line, field="choices")
        if isinstance(ans, str) and len(ans) == 1 and ans.upper() in LETTERS[: len(choices)]:
            idx = LETTERS.index(ans.upper())
        elif isinstance(ans, int) and not isinstance(ans, bool) and 0 <= ans < len(choices):
            idx = ans
        else:
            raise DataFormatError(f"must be a letter {LETTERS[0]}-{LETTERS[len(choices) - 1]} or an index "
                                  f"0-{len(choices) - 1}, got {ans!r}", path=path, line=line, field="answer")
        return MCItem(id=str(obj.get("id", f"line-{line}")), question=q, choices=tuple(choices), answer=idx,
                      subject=str(obj.get("subject", "")))
    if "correct" in obj and "prompt" in obj:  # CAA two-choice (MMLU sample)
        return _mc_from_caa(obj, path=path, line=line)
    raise DataFormatError("each item needs question/choices/answer (or CAA-style prompt/correct/incorrect)",
                          path=path, line=line, field="choices")


_CAA_OPT = re.compile(r"^\(([A-H])\)\s?(.*)$")


def _mc_from_caa(obj: dict, *, path: str, line: int) -> MCItem:
    prompt, correct = obj.get("prompt"), obj.get("correct")
    if not isinstance(prompt, str) or not isinstance(correct, str):
        raise DataFormatError("prompt and correct must be strings", path=path, line=line, field="prompt")
    head, sep, tail = prompt.partition("\n\nChoices:")
    if not sep:
        raise DataFormatError("CAA-style prompt must list options after 'Choices:'", path=path, line=line,
                              field="prompt")
    opts = {}
    for ln in tail.strip().splitlines():
        m = _CAA_OPT.match(ln.strip())
        if m:
            opts[m.group(1)] = m.group(2)
    letter = correct.strip().strip("()")
    letters = sorted(opts)
    if len(opts) < 2 or letters != list(LETTERS[: len(opts)]) or letter not in opts:
        raise DataFormatError(f"could not read the options (A), (B), ... and the correct letter {correct!r}",
                              path=path, line=line, field="correct")
    return MCItem(id=str(obj.get("id", f"line-{line}")), question=head.strip(),
                  choices=tuple(opts[x] for x in letters), answer=letters.index(letter),
                  subject=str(obj.get("category", obj.get("subject", ""))))


def load_mc(path: str | Path | None = None) -> list[MCItem]:
    """The built-in capability set (general knowledge, four options) or a user's file: JSONL with
    ``question``/``choices``/``answer`` per line, or a JSON list of such items or of CAA-style
    two-choice items (``prompt`` with "Choices: (A) ... (B) ...", ``correct``)."""
    if path is None:
        lines, where = _builtin_lines("capability_mc.jsonl"), "<builtin>/reference/capability_mc.jsonl"
        items = [_mc_from_obj(o, path=where, line=i) for i, o in iter_jsonl_objects(lines, path=where)]
    else:
        p = Path(path)
        if p.suffix == ".json":
            data = read_json(p)
            if not isinstance(data, list):
                raise DataFormatError("a .json multiple-choice file must hold a list of items", path=str(p))
            items = []
            for i, o in enumerate(data, start=1):
                if not isinstance(o, dict):
                    raise DataFormatError(f"item {i} is not an object", path=str(p))
                items.append(_mc_from_obj(o, path=f"{p} (item {i})", line=i))
        else:
            items = [_mc_from_obj(o, path=str(p), line=i)
                     for i, o in iter_jsonl_objects(jsonl_lines(read_text(p), path=p), path=str(p))]
    if not items:
        raise DataFormatError("the file holds no items", path=str(path or "<builtin>"))
    return items
