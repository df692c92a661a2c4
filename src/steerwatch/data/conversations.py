"""Conversations in the OpenAI chat message format: the benign control sets, labelled transcripts
for detection, and anything a user scans.

One JSON object per line::

    {"id": "c-1", "messages": [{"role": "user", "content": "..."}, ...], "label": 0, "meta": {...}}

``messages`` is required. ``label`` (optional) is 1 when the problem behaviour is present
(deception, cheating, ...) and 0 when it is not; ``true``/``false`` are accepted too. ``id``
defaults to ``line-N``. Assistant messages may carry ``tool_calls`` (their ``function.arguments``
are text and are scored like any other text); ``tool`` messages carry ``tool_call_id``.

:func:`load_conversations` also reads Inspect AI eval logs (``.eval`` / ``.json``): see
:mod:`steerwatch.data.inspect_logs`.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..io import iter_jsonl_objects, jsonl_lines, read_text

ROLES = ("system", "user", "assistant", "tool")
_CONV_KEYS = {"id", "messages", "label", "meta"}


@dataclass
class Conversation:
    id: str
    messages: list[dict[str, Any]]  # normalised: role, content (str), optional tool_calls / tool_call_id / name
    label: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    line: int = 0

    def __repr__(self) -> str:
        roles = ", ".join(str(m.get("role")) for m in self.messages[:4]) + (", …" if len(self.messages) > 4 else "")
        chars = sum(len(str(m.get("content") or "")) for m in self.messages)
        label = "" if self.label is None else f" label {self.label}"
        return f"<Conversation {self.id!r}{label}: {len(self.messages)} messages ({roles}), {chars} chars>"

    @property
    def turns(self) -> int:
        return sum(1 for m in self.messages if m["role"] == "assistant")


def _content_text(content: Any, *, path: str, line: int, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; only text parts carry text
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise DataFormatError("content parts must be objects like {\"type\": \"text\", \"text\": \"...\"}",
                                      path=path, line=line, field=where)
            parts.append(part["text"])
        return "".join(parts)
    raise DataFormatError(f"must be a string, a list of text parts or null, got {type(content).__name__}",
                          path=path, line=line, field=where)


def _tool_calls(raw: Any, *, path: str, line: int, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise DataFormatError("must be a list of tool calls", path=path, line=line, field=where)
    calls = []
    for j, call in enumerate(raw):
        w = f"{where}[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise DataFormatError('each tool call needs {"function": {"name": ..., "arguments": ...}}',
                                  path=path, line=line, field=w)
        args = fn.get("arguments", "")
        if not isinstance(args, str):  # some writers store the arguments as an object
            args = json.dumps(args)
        calls.append({"id": str(call.get("id", f"call_{j}")), "type": "function",
                      "function": {"name": fn["name"], "arguments": args}})
    return calls


def parse_conversation(obj: dict, *, path: str, line: int) -> Conversation:
    unknown = set(obj) - _CONV_KEYS
    if unknown:
        raise DataFormatError(f"unknown field(s) {', '.join(sorted(unknown))}; valid: id, messages, label, meta",
                              path=path, line=line, field=sorted(unknown)[0])
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise DataFormatError("must be a non-empty list of chat messages", path=path, line=line, field="messages")
    out: list[dict[str, Any]] = []
    for j, m in enumerate(msgs):
        where = f"messages[{j}]"
        if not isinstance(m, dict):
            raise DataFormatError("each message must be an object with role and content", path=path, line=line,
                                  field=where)
        role = m.get("role")
        if role not in ROLES:
            raise DataFormatError(f"role must be one of {', '.join(ROLES)}, got {role!r}", path=path, line=line,
                                  field=f"{where}.role")
        if "content" not in m and not m.get("tool_calls"):
            raise DataFormatError("missing content", path=path, line=line, field=f"{where}.content")
        msg: dict[str, Any] = {"role": role,
                               "content": _content_text(m.get("content"), path=path, line=line,
                                                        where=f"{where}.content")}
        if m.get("tool_calls"):
            if role != "assistant":
                raise DataFormatError("only assistant messages may carry tool_calls", path=path, line=line,
                                      field=f"{where}.tool_calls")
            msg["tool_calls"] = _tool_calls(m["tool_calls"], path=path, line=line, where=f"{where}.tool_calls")
        if role == "tool" and "tool_call_id" in m:
            msg["tool_call_id"] = str(m["tool_call_id"])
        if isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    label = obj.get("label")
    if label is not None:
        if isinstance(label, bool):
            label = int(label)
        if label not in (0, 1):
            raise DataFormatError(f"must be 0, 1, true or false (1 = the behaviour is present), got {label!r}",
                                  path=path, line=line, field="label")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise DataFormatError("must be a JSON object", path=path, line=line, field="meta")
    cid = obj.get("id", f"line-{line}")
    if not isinstance(cid, (str, int)):
        raise DataFormatError("must be a string or an integer", path=path, line=line, field="id")
    return Conversation(id=str(cid), messages=out, label=label, meta=meta, line=line)


def parse_conversations_lines(lines: list[str], *, path: str) -> list[Conversation]:
    return _parse_records(iter_jsonl_objects(lines, path=path), path=path)


def _parse_records(records: Iterable[tuple[int, dict]], *, path: str) -> list[Conversation]:
    convs = [parse_conversation(obj, path=path, line=i) for i, obj in records]
    if not convs:
        raise DataFormatError("the file holds no conversations", path=path)
    seen: dict[str, int] = {}
    for c in convs:
        if c.id in seen:
            raise DataFormatError(f"duplicate id {c.id!r} (first on line {seen[c.id]})", path=path, line=c.line,
                                  field="id")
        seen[c.id] = c.line
    return convs


def load_conversations(path: str | Path) -> list[Conversation]:
    """Read a JSONL file of conversations (see the module docstring for the format), or an Inspect
    AI eval log (``.eval``, or ``.json`` as Inspect writes it): one conversation per sample and
    epoch (:mod:`steerwatch.data.inspect_logs`)."""
    p = Path(path)
    from .inspect_logs import inspect_log_records, is_inspect_log

    if is_inspect_log(p):  # "line N" in its errors is sample N of the log
        return _parse_records(inspect_log_records(p), path=str(p))
    return parse_conversations_lines(jsonl_lines(read_text(p), path=p), path=str(p))


def conversations_sha256(convs: list[Conversation]) -> str:
    h = hashlib.sha256()
    for c in convs:
        h.update(json.dumps([c.id, c.messages, c.label], sort_keys=True).encode())
    return h.hexdigest()
