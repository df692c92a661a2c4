"""Turning prompts and completions into token ids, with the model's own chat template.

Models without a chat template (base models such as Gemma 3 270M) get a plain format:
``"{system}\n\nUser: {prompt}\nAssistant:"`` with completions prefixed by a space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PLAIN_USER = "User: {user}\nAssistant:"


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_messages(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """Render a chat (OpenAI-style messages) ending with a generation prompt for the assistant."""
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    parts = []
    for m in messages:
        role, content = m.get("role"), m.get("content", "")
        if role == "system":
            parts.append(content.strip() + "\n\n")
        elif role == "user":
            parts.append(PLAIN_USER.format(user=content))
        else:
            parts.append(" " + content + "\n")
    return "".join(parts)


def render_prompt(tokenizer: Any, user: str, *, system: str | None = None) -> str:
    msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return render_messages(tokenizer, msgs)


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    # chat-template text already contains its special tokens; plain text gets the tokenizer's BOS
    return list(tokenizer(text, add_special_tokens=not has_template(tokenizer))["input_ids"])


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
