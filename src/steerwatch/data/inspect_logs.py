"""Inspect AI eval logs (``.eval`` and ``.json``) as conversations, so ``steerwatch scan`` gives a
user's existing Inspect evaluations white-box scores.

Each sample (and epoch) becomes one conversation record in the JSONL format of
:mod:`steerwatch.data.conversations` (which validates and normalises it like any other line):

- ``id``: ``SAMPLE_ID/EPOCH`` (e.g. ``fp-1/1``), unique within a log;
- ``messages``: the sample's final message history (system, user, assistant, tool), each message's
  text parts joined by newlines as Inspect's ``ChatMessage.text`` does; reasoning blocks, images,
  audio and other non-text parts are left out; assistant tool calls keep their function name and
  arguments (as JSON text), tool messages their ``tool_call_id``;
- ``label``: None (Inspect's scores are not labels: they are kept in ``meta``);
- ``meta["inspect"]``: task, model, sample id, epoch, target, Inspect's scores
  (``{scorer: value}``), the sample's error, if any, and ``served``: for each model call that
  ``steerwatch serve`` answered, the ``steerwatch`` extension Inspect recorded with the raw
  response (``steering`` applied, ``scores``, ``flags``, ``stored_id``, ``batch_size``), so a log
  shows which samples were steered.

The logs are read with Inspect's own reader (``inspect_ai.log.read_eval_log``, attachments
resolved), imported only when a log is read: ``pip install 'steerwatch[inspect]'``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import DataFormatError, SteerwatchError

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


SERVED_KEYS = ("steering", "scores", "flags", "stored_id", "batch_size")


def _served(events: Any) -> list[dict[str, Any]]:
    """The ``steerwatch`` extension of every model call a steerwatch server answered, in order."""
    out = []
    for ev in events or []:
        call = getattr(ev, "call", None) if getattr(ev, "event", None) == "model" else None
        response = getattr(call, "response", None)
        ext = response.get("steerwatch") if isinstance(response, dict) else None
        if isinstance(ext, dict):
            out.append({k: _jsonable(ext[k]) for k in SERVED_KEYS if k in ext})
    return out


def _message(m: Any) -> dict[str, Any]:
    role = getattr(m, "role", None)
    text = getattr(m, "text", "")  # the text parts, joined by newlines (Inspect's own rule)
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


def inspect_log_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(sample number, record)`` per sample and epoch of an Inspect eval log, each record a
    conversation in the JSONL format (``id``, ``messages``, ``meta``); see the module docstring.
    :func:`steerwatch.data.conversations.load_conversations` parses them."""
    p = Path(path)
    log = _read_log(p)
    samples = log.samples or []
    if not samples:
        raise DataFormatError(f"the Inspect log holds no samples (status {log.status!r}); scan a log whose eval "
                              "ran (a log read header-only, or an eval cancelled before any sample, has none)",
                              path=str(p))
    task, model = log.eval.task, log.eval.model
    records = []
    for i, s in enumerate(samples, start=1):
        cid = f"{s.id}/{s.epoch}"
        scores = {name: _jsonable(sc.value) for name, sc in (s.scores or {}).items()}
        info: dict[str, Any] = {"task": task, "model": model, "sample_id": s.id, "epoch": s.epoch,
                                "target": _jsonable(s.target), "scores": scores}
        if s.error is not None:
            info["error"] = str(s.error.message)
        served = _served(s.events)
        if served:
            info["served"] = served
        records.append((i, {"id": cid, "messages": [_message(m) for m in s.messages or []], "meta": {"inspect": info}}))
    return records
