"""Turning prompts and completions into token ids, with the model's own chat template: the ONE
chat rendering in steerwatch.

Models without a chat template (base models such as Gemma 3 270M) get a plain format, written
once here (:func:`plain_segments`) for prompts and for the conversations the watch scores::

    {system}\\n\\nUser: {prompt}\\nAssistant: {answer}\\nTool: {result}\\n ... Assistant:

with completions prefixed by a space.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from .errors import SteerwatchError

Prompt = Union[str, Sequence[dict]]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | a str and a generic)
"""A user message, or a list of chat messages (``{"role": ..., "content": ...}``)."""

PLAIN_LABELS = {"user": "User", "assistant": "Assistant", "tool": "Tool"}


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_tool_calls(message: dict) -> str:
    """An assistant message's tool calls written as text (for the plain format and for templates
    that cannot render them)."""
    return "".join(f"\n[tool call] {tc['function']['name']}({tc['function']['arguments']})"
                   for tc in message.get("tool_calls") or [])


def plain_segments(messages: Sequence[dict], *, add_generation_prompt: bool = False) -> list[tuple[str, int]]:
    """The plain format as ``(text, message index)`` segments; glue text has index -1."""
    segs: list[tuple[str, int]] = []
    for k, m in enumerate(messages):
        role, content = m["role"], m.get("content") or ""
        if role == "system":
            segs += [(content.strip(), k), ("\n\n", -1)]
        else:
            label = PLAIN_LABELS.get(role, str(role).title())
            segs += [(f"{label}: ", -1), (content + plain_tool_calls(m), k), ("\n", -1)]
    if add_generation_prompt:
        segs.append(("Assistant:", -1))
    return [(t, k) for t, k in segs if t]


def render_messages(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Render a chat (OpenAI-style messages) ending with a generation prompt for the assistant."""
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "".join(t for t, _ in plain_segments(messages, add_generation_prompt=True))


def render_prompt(tokenizer: Any, user: str, *, system: str | None = None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return render_messages(tokenizer, msgs)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    # chat-template text already contains its special tokens; plain text gets the tokenizer's BOS
    return list(tokenizer(text, add_special_tokens=not has_template(tokenizer))["input_ids"])


def prompt_messages(prompt: Prompt, system: str | None) -> list[dict]:
    """A prompt (a user message string or a list of chat messages) as chat messages, with the
    system prompt first when one is given and the messages do not start with their own."""
    if isinstance(prompt, str):
        msgs = [{"role": "user", "content": prompt}]
    else:
        msgs = [dict(m) for m in prompt]
        if not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
            raise SteerwatchError("a chat prompt must be a non-empty list of {'role': ..., 'content': ...} messages")
    if system and msgs[0].get("role") != "system":
        msgs = [{"role": "system", "content": system}, *msgs]
    return msgs


def encode_raw(tokenizer: Any, text: str) -> list[int]:
    """Raw completion: the text's own token ids (with the tokenizer's BOS, if it adds one), no chat
    rendering, so the model continues the text itself."""
    if not isinstance(text, str):
        raise SteerwatchError("raw completion takes text prompts, not chat messages; drop raw (--raw) to send a chat")
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    if not ids:
        raise SteerwatchError("raw completion needs a non-empty prompt")
    return ids


def encode_chat(tokenizer: Any, prompt: Prompt, *, system: str | None = None) -> list[int]:
    """The token ids of a prompt rendered as a chat that the assistant answers next."""
    return encode_prompt(tokenizer, render_messages(tokenizer, prompt_messages(prompt, system)))


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and where to read it.

    ``last_prompt``: index of the last prompt token. ``span``: [start, end) of the completion
    tokens (for a full text without a prompt: every token but the first)."""

    ids: list[int]
    last_prompt: int
    span: tuple[int, int]
    has_completion: bool


def encode_example(tokenizer: Any, *, prompt: str | None, completion: str, system: str | None = None) -> Encoded:
    if prompt is None:
        ids = list(tokenizer(completion, add_special_tokens=True)["input_ids"])
        return Encoded(ids=ids, last_prompt=len(ids) - 1, span=(min(1, len(ids) - 1), len(ids)), has_completion=False)
    p_ids = encode_prompt(tokenizer, render_prompt(tokenizer, prompt, system=system))
    text = completion if has_template(tokenizer) else " " + completion
    c_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not c_ids:
        c_ids = [p_ids[-1]]
    ids = p_ids + c_ids
    return Encoded(ids=ids, last_prompt=len(p_ids) - 1, span=(len(p_ids), len(ids)), has_completion=True)
