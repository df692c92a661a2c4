"""Inspect AI eval logs (``.eval`` and ``.json``) as conversations, so ``steerwatch scan`` gives a
user's existing Inspect evaluations white-box scores.

Each sample (and epoch) becomes one :class:`~steerwatch.data.conversations.Conversation`:

- ``id``: ``SAMPLE_ID/EPOCH`` (e.g. ``fp-1/1``), unique within a log;
- ``messages``: the sample's final message history (system, user, assistant, tool), each message's
  text parts joined by newlines as Inspect's ``ChatMessage.text`` does; reasoning blocks, images,
  audio and other non-text parts are left out; assistant tool calls keep their function name and
  arguments (as JSON text), tool messages their ``tool_call_id``;
- ``label``: None (Inspect's scores are not labels: they are kept in ``meta``);
- ``meta["inspect"]``: task, model, sample id, epoch, target, Inspect's scores
  (``{scorer: value}``), the sample's error, if any, and ``served``: for each model call that
  ``steerwatch serve`` answered, the ``steerwatch`` extension Inspect recorded with the raw
  response (``steering`` applied, ``scores``, ``flags``, ``stored_id``), so a log shows which
  samples were steered.

The logs are read with Inspect's own reader (``inspect_ai.log.read_eval_log``, attachments
resolved), imported only when a log is read: ``pip install 'steerwatch[inspect]'``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import DataFormatError, SteerwatchError
from .conversations import ROLES, Conversation

INSTALL_HINT = "pip install 'steerwatch[inspect]'"
# Inspect's JSON logs start with the EvalLog's first field; a JSONL file of conversations does not
_JSON_LOG_START = re.compile(r'^\s*\{\s*"version"\s*:')


def is_inspect_log(path: str | Path) -> bool:
    """Whether ``path`` is an Inspect eval log: any ``.eval`` file, or a ``.json`` file that starts
    like one (``{"version": ...``); a ``.json`` file of JSONL conversations is not."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".eval":
        return True
    if suffix != ".json" or not p.is_file():
        return False
    with p.open("rb") as fh:
        head = fh.read(256).decode("utf-8", "replace")
    return bool(_JSON_LOG_START.match(head))


def _read_log(path: Path) -> Any:
    if path.is_dir():
        raise DataFormatError("is a directory, not a file (give one Inspect log: a .eval or .json file from "
                              "the log directory)", path=str(path))
    if not path.is_file():
        raise DataFormatError("file does not exist", path=str(path))
    try:
        from inspect_ai.log import read_eval_log
    except ImportError:
        raise SteerwatchError(f"reading Inspect logs ({path.name}) needs Inspect AI: {INSTALL_HINT}") from None
    try:
        return read_eval_log(str(path), resolve_attachments=True, exclude_fields={"store"})
    except Exception as exc:  # Inspect raises many kinds (zip, JSON, pydantic) for a damaged log
        msg = " ".join(str(exc).split())[:300]
        raise DataFormatError(f"not a readable Inspect eval log ({type(exc).__name__}: {msg}); give a .eval or "
                              ".json log as `inspect eval` writes it", path=str(path)) from None


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


SERVED_KEYS = ("steering", "scores", "flags", "stored_id")


def _served(events: Any) -> list[dict[str, Any]]:
    """The ``steerwatch`` extension of every model call a steerwatch server answered, in order."""
    out = []
    for ev in events or []:
        call = getattr(ev, "call", None) if getattr(ev, "event", None) == "model" else None
        response = getattr(call, "response", None)
        ext = response.get("steerwatch") if isinstance(response, dict) else None
        if isinstance(ext, dict):
            out.append({k: _jsonable(ext.get(k)) for k in SERVED_KEYS})
    return out


def _message(m: Any, *, path: str, line: int, where: str) -> dict[str, Any]:
    role = getattr(m, "role", None)
    if role not in ROLES:
        raise DataFormatError(f"role must be one of {', '.join(ROLES)}, got {role!r}", path=path, line=line,
                              field=f"{where}.role")
    text = m.text  # the text parts, joined by newlines (Inspect's own rule)
    msg: dict[str, Any] = {"role": role, "content": text if isinstance(text, str) else ""}
    calls = getattr(m, "tool_calls", None) if role == "assistant" else None
    if calls:
        msg["tool_calls"] = [{"id": str(c.id), "type": "function",
                              "function": {"name": str(c.function), "arguments": json.dumps(_jsonable(c.arguments))}}
                             for c in calls]
    if role == "tool":
        if getattr(m, "tool_call_id", None) is not None:
            msg["tool_call_id"] = str(m.tool_call_id)
        if isinstance(getattr(m, "function", None), str):
            msg["name"] = m.function
    return msg


def load_inspect_log(path: str | Path) -> list[Conversation]:
    """One conversation per sample and epoch of an Inspect eval log (see the module docstring)."""
    p = Path(path)
    log = _read_log(p)
    samples = log.samples or []
    if not samples:
        raise DataFormatError(f"the Inspect log holds no samples (status {log.status!r}); scan a log whose eval "
                              "ran (a log read header-only, or an eval cancelled before any sample, has none)",
                              path=str(p))
    task, model = log.eval.task, log.eval.model
    convs: list[Conversation] = []
    seen: dict[str, int] = {}
    for i, s in enumerate(samples, start=1):
        cid = f"{s.id}/{s.epoch}"
        if cid in seen:
            raise DataFormatError(f"sample {s.id!r} epoch {s.epoch} appears twice (samples {seen[cid]} and {i})",
                                  path=str(p))
        seen[cid] = i
        msgs = [_message(m, path=str(p), line=i, where=f"samples[{i - 1}].messages[{j}]")
                for j, m in enumerate(s.messages or [])]
        if not msgs:
            raise DataFormatError(f"sample {cid} has no messages", path=str(p), line=i,
                                  field=f"samples[{i - 1}].messages")
        scores = {name: _jsonable(sc.value) for name, sc in (s.scores or {}).items()}
        meta: dict[str, Any] = {"inspect": {"task": task, "model": model, "sample_id": s.id, "epoch": s.epoch,
                                            "target": _jsonable(s.target), "scores": scores}}
        if s.error is not None:
            meta["inspect"]["error"] = str(s.error.message)
        served = _served(s.events)
        if served:
            meta["inspect"]["served"] = served
        convs.append(Conversation(id=cid, messages=msgs, label=None, meta=meta, line=i))
    return convs
