"""Files of prompts to answer (``steerwatch generate -f``, sample prompts of a sweep)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..io import iter_jsonl_objects, jsonl_lines, read_text


def load_prompt_items(path: str | Path) -> list[dict[str, Any]]:
    """Prompts to answer, as ``{"id", "prompt"}`` items (``prompt``: a string or a list of chat
    messages): JSONL with ``{"prompt": str}`` or ``{"messages": [...]}`` per line (optional
    ``"id"``), or plain text with one prompt a line."""
    path = Path(path)
    lines = jsonl_lines(read_text(path), path=path)
    items: list[dict[str, Any]]
    if path.suffix != ".jsonl":
        items = [{"id": str(i), "prompt": line} for i, line in enumerate(ln for ln in lines if ln.strip())]
        if not items:
            raise DataFormatError("no prompts in file", path=str(path))
        return items
    items = []
    for i, obj in iter_jsonl_objects(lines, path=str(path)):
        if not ("prompt" in obj or "messages" in obj):
            raise DataFormatError("each line needs a 'prompt' string or a 'messages' list", path=str(path), line=i,
                                  field="prompt")
        p = obj.get("messages", obj.get("prompt"))
        if not (isinstance(p, str) and p.strip()) and not (isinstance(p, list) and p):
            raise DataFormatError("must be a non-empty string (prompt) or list (messages)", path=str(path), line=i,
                                  field="messages" if "messages" in obj else "prompt")
        items.append({"id": str(obj.get("id", len(items))), "prompt": p})
    if not items:
        raise DataFormatError("no prompts in file", path=str(path))
    return items
