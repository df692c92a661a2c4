"""A conversation as token ids, with each token tagged by the message it belongs to.

The conversation is rendered with the model's chat template (or the plain ``User:/Assistant:``
format for models without one), cut into segments (template glue vs. each message's text, tool
calls included), and each segment is tokenised on its own, so the token -> message map is exact
without relying on offset mappings. Glue tokens (role markers, end-of-turn tokens) get message
index -1 and count in no message or response score.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..chat import has_template, plain_segments, plain_tool_calls


@dataclass
class RenderedConversation:
    ids: list[int]
    msg_index: list[int]  # per token: index into messages, or -1 for template glue
    roles: list[str]  # role of each message
    truncated: bool = False

    def __repr__(self) -> str:
        return (f"<RenderedConversation {len(self.ids)} tokens, {len(self.roles)} messages"
                + (", truncated" if self.truncated else "") + ">")


def _args_obj(args: str) -> Any:
    try:
        return json.loads(args)
    except (json.JSONDecodeError, TypeError):
        return args


def _template_messages(messages: Sequence[dict]) -> list[dict]:
    """Messages as chat templates expect them (tool-call arguments as objects)."""
    out = []
    for m in messages:
        msg = {"role": m["role"], "content": m.get("content", "")}
        if m.get("tool_calls"):
            msg["tool_calls"] = [{"id": tc.get("id"), "type": "function",
                                  "function": {"name": tc["function"]["name"],
                                               "arguments": _args_obj(tc["function"]["arguments"])}}
                                 for tc in m["tool_calls"]]
        if m.get("tool_call_id"):
            msg["tool_call_id"] = m["tool_call_id"]
        if m.get("name"):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _inline_tools(messages: Sequence[dict], *, tool_role: str | None = None) -> list[dict]:
    """Tool calls written into the assistant's text (for templates that drop or reject them);
    with ``tool_role``, tool results are sent under that role."""
    out = []
    for m in messages:
        msg = {"role": m["role"], "content": (m.get("content") or "") + plain_tool_calls(m)}
        if m["role"] == "tool" and tool_role:
            msg = {"role": tool_role, "content": "[tool result] " + msg["content"]}
        out.append(msg)
    return out


def _template_segments(tokenizer: Any, messages: Sequence[dict]) -> list[tuple[str, int]] | None:
    """Segments with the chat template; tool calls natively if the template renders them, else
    inlined as text; None if the template cannot render this conversation at all."""
    attempts = [_template_messages(messages), _inline_tools(messages), _inline_tools(messages, tool_role="user")]
    for msgs in attempts:
        try:
            segs = _segments_with(tokenizer, msgs)
        except Exception:
            continue
        # every tool call must survive as text: some templates silently drop them
        kept = all(tc["function"]["name"] in "".join(t for t, k in segs if k == j)
                   for j, m in enumerate(messages) for tc in m.get("tool_calls", []))
        if kept:
            return segs
    return None


def _segments_with(tokenizer: Any, messages: list[dict]) -> list[tuple[str, int]]:
    msgs = messages
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    # where each message's rendering starts and ends: render growing prefixes
    bounds = [0]
    for k in range(1, len(msgs) + 1):
        prefix = full if k == len(msgs) else tokenizer.apply_chat_template(msgs[:k], tokenize=False)
        if not full.startswith(prefix) or len(prefix) < bounds[-1]:
            return _find_segments(full, messages)
        bounds.append(len(prefix))
    segs: list[tuple[str, int]] = []
    for k, m in enumerate(messages):
        a, b = bounds[k], bounds[k + 1]
        part = full[a:b]
        start = _content_start(part, m)
        end = _content_end(part, m, start)
        segs += [(part[:start], -1), (part[start:end], k), (part[end:], -1)]
    segs.append((full[bounds[-1]:], -1))
    return [(t, k) for t, k in segs if t]


def _content_start(part: str, m: dict) -> int:
    content = m.get("content") or ""
    for needle in (content, content.strip()):
        if needle:
            i = part.find(needle)
            if i >= 0:
                return i
    for tc in m.get("tool_calls", []):  # no text: start at the first tool call's rendering
        i = part.find(tc["function"]["name"])
        if i >= 0:
            j = part.rfind("\n", 0, i)
            return j + 1 if j >= 0 else i
    return 0


def _content_end(part: str, m: dict, start: int) -> int:
    """End of the message's own text: after its tool calls if any, else after its content."""
    if m.get("tool_calls"):
        last = m["tool_calls"][-1]["function"]
        args = last["arguments"] if isinstance(last["arguments"], str) else json.dumps(last["arguments"])
        for needle in (args, json.dumps(_args_obj(args)), json.dumps(_args_obj(args), ensure_ascii=False)):
            i = part.rfind(needle[-20:]) if needle else -1
            if i >= start:
                end = i + len(needle[-20:])
                while end < len(part) and part[end] == "}":  # the call's own closing brace(s)
                    end += 1
                return end
        return len(part.rstrip())
    content = m.get("content") or ""
    for needle in (content, content.strip()):
        if needle and part.startswith(needle, start):
            return start + len(needle)
    return len(part.rstrip())


def _find_segments(full: str, messages: Sequence[dict]) -> list[tuple[str, int]]:
    """Fallback for templates whose prefixes are not prefixes of the whole: locate each message's
    text in order."""
    segs, cursor = [], 0
    for k, m in enumerate(messages):
        text = (m.get("content") or "").strip()
        i = full.find(text, cursor) if text else -1
        if i < 0:
            continue
        segs += [(full[cursor:i], -1), (full[i:i + len(text)], k)]
        cursor = i + len(text)
    segs.append((full[cursor:], -1))
    return [(t, k) for t, k in segs if t]


def render_conversation(tokenizer: Any, messages: Sequence[dict], *, max_tokens: int | None = None
                        ) -> RenderedConversation:
    """Token ids of the whole conversation (teacher forcing) and the message of every token."""
    segs = _template_segments(tokenizer, messages) if has_template(tokenizer) else None
    ids: list[int] = []
    owner: list[int] = []
    if segs is None:
        segs = plain_segments(messages)
        bos = getattr(tokenizer, "bos_token_id", None)
        ids, owner = ([bos], [-1]) if bos is not None else ([], [])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    for text, k in segs:
        seg_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg_ids
        owner += [(-1 if t in special else k) for t in seg_ids]
    truncated = False
    if max_tokens is not None and len(ids) > max_tokens:
        ids, owner, truncated = ids[:max_tokens], owner[:max_tokens], True
    return RenderedConversation(ids=ids, msg_index=owner, roles=[m["role"] for m in messages], truncated=truncated)
