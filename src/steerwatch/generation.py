"""Batched, left-padded generation with optional steering (shared or per row)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence, Union

from .errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover
    from .models import LoadedModel
    from .steer import SteerSpec

Prompt = Union[str, Sequence[dict]]


def _render(loaded: "LoadedModel", prompt: Prompt, system: str | None) -> str:
    from .chat import render_messages, render_prompt

    if isinstance(prompt, str):
        return render_prompt(loaded.tokenizer, prompt, system=system)
    msgs = list(prompt)
    if not msgs or not all(isinstance(m, dict) and "role" in m and "content" in m for m in msgs):
        raise SteerwatchError("a chat prompt must be a non-empty list of {'role': ..., 'content': ...} messages")
    if system and msgs[0].get("role") != "system":
        msgs = [{"role": "system", "content": system}, *msgs]
    return render_messages(loaded.tokenizer, msgs)


def generate(loaded: "LoadedModel", prompts: Sequence[Prompt], *, system: str | None = None,
             steer: "Sequence[SteerSpec] | None" = None, rows: "Sequence[Sequence[SteerSpec]] | None" = None,
             max_new_tokens: int = 64, batch_size: int = 8, do_sample: bool = False,
             temperature: float = 1.0, seed: int | None = None, force: bool = False,
             progress: bool = False) -> list[str]:
    """Generate one answer per prompt (a user message string or a list of chat messages).

    ``steer``: specs applied to every prompt. ``rows``: one list of specs per prompt (each prompt
    steered its own way, still batched). Greedy by default, so results are reproducible.
    """
    import torch
    from tqdm.auto import tqdm

    from .chat import encode_prompt
    from .steer import attach

    if max_new_tokens < 1:
        raise SteerwatchError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if rows is not None and len(rows) != len(prompts):
        raise SteerwatchError(f"rows has {len(rows)} entries but there are {len(prompts)} prompts; give one "
                              "list of steering specs per prompt")
    if steer is not None and rows is not None:
        raise SteerwatchError("give steer=... (all prompts) or rows=... (per prompt), not both")
    tok = loaded.tokenizer
    encoded = [encode_prompt(tok, _render(loaded, p, system)) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = loaded.device
    outputs: list[str] = [""] * len(prompts)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad)
    if do_sample:
        gen_kwargs["temperature"] = temperature
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if seed is not None:
        torch.manual_seed(seed)
    bar = tqdm(total=len(prompts), desc="generating", disable=not progress, unit="prompt")
    for start in range(0, len(prompts), batch_size):
        idx = list(range(start, min(start + batch_size, len(prompts))))
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        att = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):  # left padding: the last prompt token is aligned across rows
            ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
            att[r, width - len(encoded[i]):] = 1
        handle = None
        if rows is not None:
            batch_rows = [list(rows[i]) for i in idx]
            if any(batch_rows):
                handle = attach(loaded, rows=batch_rows, force=force)
        elif steer:
            handle = attach(loaded, list(steer), force=force)
        try:
            with torch.inference_mode():
                out = loaded.model.generate(input_ids=ids.to(device), attention_mask=att.to(device), **gen_kwargs)
        finally:
            if handle is not None:
                handle.remove()
        for r, i in enumerate(idx):
            outputs[i] = tok.decode(out[r, width:], skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return outputs
