"""Batched, left-padded generation with optional steering (shared or per row)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Union

from .errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover
    from .models import LoadedModel
    from .steer import SteerSpec

Prompt = Union[str, Sequence[dict]]  # noqa: UP007 (a runtime alias: Python 3.10 cannot | a str and a generic)


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


def _render(loaded: LoadedModel, prompt: Prompt, system: str | None) -> str:
    from .chat import render_messages

    return render_messages(loaded.tokenizer, prompt_messages(prompt, system))


def generate(loaded: LoadedModel, prompts: Sequence[Prompt], *, system: str | None = None,
             steer: Sequence[SteerSpec] | None = None, rows: Sequence[Sequence[SteerSpec]] | None = None,
             max_new_tokens: int = 64, batch_size: int = 8, do_sample: bool = False,
             temperature: float = 1.0, seed: int | None = None, force: bool = False,
             progress: bool = False) -> list[str]:
    """Generate one answer per prompt (a user message string or a list of chat messages).

    ``steer``: specs applied to every prompt. ``rows``: one list of specs per prompt (each prompt
    steered its own way, still batched). Greedy by default, so results are reproducible.
    """
    gens = generate_ids(loaded, prompts, system=system, steer=steer, rows=rows, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, do_sample=do_sample, temperature=temperature, seed=seed,
                        force=force, progress=progress)
    return [loaded.tokenizer.decode(g.new_ids, skip_special_tokens=True).strip() for g in gens]


class Generated:
    """One prompt's generation: the prompt's token ids and the new token ids (up to and including
    the end-of-sequence token, padding removed)."""

    __slots__ = ("batch_index", "new_ids", "prompt_ids", "row")

    def __init__(self, prompt_ids: list[int], new_ids: list[int], batch_index: int, row: int) -> None:
        self.prompt_ids, self.new_ids, self.batch_index, self.row = prompt_ids, new_ids, batch_index, row


def generate_ids(loaded: LoadedModel, prompts: Sequence[Prompt] | None, *, system: str | None = None,
                 steer: Sequence[SteerSpec] | None = None, rows: Sequence[Sequence[SteerSpec]] | None = None,
                 max_new_tokens: int = 64, batch_size: int = 8, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float | None = None, seed: int | None = None,
                 force: bool = False, progress: bool = False, on_batch: Callable[[list[int], int], Any] | None = None,
                 prompt_ids: Sequence[list[int]] | None = None, streamer: Any = None,
                 stopping_criteria: Any = None) -> list[Generated]:
    """:func:`generate` at the token level. ``on_batch(indices, width)`` is called before each
    batch and may return a context manager that stays open around that batch's ``generate()``
    (the watch uses it to attach read hooks); its ``after(out)`` method, if any, gets the batch
    output ids.

    ``prompt_ids``: already tokenised prompts (then ``prompts`` may be None and ``system`` is
    ignored): raw-text completions. ``streamer`` and ``stopping_criteria`` go to Hugging Face
    ``generate()`` unchanged (the server streams and stops rows with them)."""
    import contextlib

    import torch
    from tqdm.auto import tqdm

    from .chat import encode_prompt
    from .steer import attach

    if max_new_tokens < 1:
        raise SteerwatchError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt_ids is not None:
        encoded = [list(map(int, p)) for p in prompt_ids]
        if not encoded or any(not p for p in encoded):
            raise SteerwatchError("prompt_ids must be a non-empty list of non-empty token id lists")
        if prompts is not None and len(prompts) != len(encoded):
            raise SteerwatchError(f"{len(prompts)} prompts but {len(encoded)} prompt_ids; give one or the other")
        prompts = [""] * len(encoded)  # placeholders: the ids are the prompts
    elif prompts is None:
        raise SteerwatchError("give prompts (or prompt_ids)")
    if rows is not None and len(rows) != len(prompts):
        raise SteerwatchError(f"rows has {len(rows)} entries but there are {len(prompts)} prompts; give one "
                              "list of steering specs per prompt")
    if steer is not None and rows is not None:
        raise SteerwatchError("give steer=... (all prompts) or rows=... (per prompt), not both")
    tok = loaded.tokenizer
    if prompt_ids is None:
        encoded = [encode_prompt(tok, _render(loaded, p, system)) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = set(_eos_ids(loaded))
    device = loaded.device
    results: list[Generated | None] = [None] * len(prompts)
    gen_kwargs = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad)
    if do_sample:
        gen_kwargs["temperature"] = temperature
        if top_p is not None:
            gen_kwargs["top_p"] = top_p
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    if streamer is not None:
        gen_kwargs["streamer"] = streamer
    if stopping_criteria is not None:
        gen_kwargs["stopping_criteria"] = stopping_criteria
    if seed is not None:
        torch.manual_seed(seed)
    bar = tqdm(total=len(prompts), desc="generating", disable=not progress, unit="prompt")
    for b, start in enumerate(range(0, len(prompts), batch_size)):
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
        observer = on_batch(idx, width) if on_batch is not None else None
        try:
            with (observer if observer is not None else contextlib.nullcontext()), torch.inference_mode():
                out = loaded.model.generate(input_ids=ids.to(device), attention_mask=att.to(device), **gen_kwargs)
        finally:
            if handle is not None:
                handle.remove()
        if observer is not None and hasattr(observer, "after"):
            observer.after(out)
        for r, i in enumerate(idx):
            new = out[r, width:].tolist()
            cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
            results[i] = Generated(prompt_ids=encoded[i], new_ids=new[:cut], batch_index=b, row=r)
        bar.update(len(idx))
    bar.close()
    return [g for g in results if g is not None]


def _eos_ids(loaded: LoadedModel) -> list[int]:
    cfg = getattr(loaded.model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if eos is None:
        eos = loaded.tokenizer.eos_token_id
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [int(eos)]
