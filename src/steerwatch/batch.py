"""The one batched forward pass outside generation: pad token-id lists into a batch, run the model
once, optionally stop after a block or compute the vocabulary logits only where they are needed.

Extraction (``record``), teacher-forced detector scores (``watch.score``), the rescoring of
steered generations (``runtime``) and the evaluation metrics (``evals.metrics``) all go through
:func:`forward`; ``runtime`` pads its generation batches with :func:`pad` (left side).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .layers import decoder_blocks

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .models import LoadedModel


class StopForward(Exception):
    """Raised after the deepest block a pass needs; :func:`forward` catches it."""


def pad_id(tokenizer: Any) -> int:
    """The id padding is filled with: the pad token, else the end-of-sequence token, else 0. Padded
    positions are masked out, so the value never changes a result; one rule keeps batches equal."""
    for tid in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(tid, int):
            return tid
    return 0


def length_batches(lengths: Sequence[int], batch_size: int, *, sort: bool = True) -> Iterator[list[int]]:
    """Indices in batches of ``batch_size``, shortest sequences first (little padding per batch);
    ``sort=False``: in the given order (the unsorted baseline of bench/bench_calibrate.py)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i]) if sort else list(range(len(lengths)))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def pad(seqs: Sequence[Sequence[int]], pad_token: int, *,
        side: Literal["right", "left"] = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)``, both (batch, longest): right padding for teacher-forced passes (a
    row's positions are its token indices), left padding for generation (the last prompt tokens
    line up)."""
    import torch

    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_token, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if not len(s):
            continue
        row = torch.as_tensor(list(s), dtype=torch.long)
        if side == "right":
            ids[r, :len(s)], att[r, :len(s)] = row, 1
        else:
            ids[r, width - len(s):], att[r, width - len(s):] = row, 1
    return ids, att


def _accepts_logits_to_keep(model: Any) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


def _stop_hook(lm: LoadedModel, stop_after: int | None) -> Any:
    """A hook raising :class:`StopForward` after block ``stop_after`` (None: no hook); the caller
    removes it."""
    if stop_after is None:
        return None

    def stop(*_a: Any) -> None:
        raise StopForward

    return decoder_blocks(lm.model, layers_path=lm.layers_path)[stop_after].register_forward_hook(stop)


def forward(lm: LoadedModel, seqs: Sequence[Sequence[int]], *, stop_after: int | None = None,
            logits_at: Sequence[Sequence[int]] | None = None, logits: bool = False,
            grad: bool = False) -> torch.Tensor | None:
    """One right-padded, teacher-forced forward pass (no KV cache) over ``seqs``.

    ``stop_after``: stop after decoder block ``stop_after`` (the hooks the caller registered have
    read what they need); returns None. ``logits_at``: one non-empty list of positions per row;
    returns float32 logits (batch, k, vocab) at those positions only (shorter lists repeat their
    last position), computing the vocabulary projection (a quarter of a small model's compute, by
    far its largest tensor) only there when the model takes ``logits_to_keep``. ``logits``: the
    logits at every position (batch, longest, vocab). Neither: the pass runs for its hooks only.
    ``grad``: keep the autograd graph (for training a steering vector through the frozen model,
    :mod:`steerwatch.extract.optimise`); otherwise the pass runs under ``inference_mode``.
    """
    import torch

    ids, att = pad(seqs, pad_id(lm.tokenizer))
    kwargs: dict[str, Any] = {}
    keep = None
    if logits_at is not None:
        k = max(len(p) for p in logits_at)
        keep = torch.tensor([list(p) + [p[-1]] * (k - len(p)) for p in logits_at], dtype=torch.long)
        if _accepts_logits_to_keep(lm.model):
            # one 1-D index tensor (the union of the rows' positions), which every transformers release
            # with logits_to_keep reads the same way; each row's positions are picked from it below
            union = torch.unique(keep)
            kwargs["logits_to_keep"] = union.to(lm.device)
            keep = torch.searchsorted(union, keep)
    handle = _stop_hook(lm, stop_after)
    try:
        with torch.enable_grad() if grad else torch.inference_mode():
            out = lm.model(input_ids=ids.to(lm.device), attention_mask=att.to(lm.device), use_cache=False, **kwargs)
    except StopForward:
        return None
    finally:
        if handle is not None:
            handle.remove()
    if keep is None and not logits:
        return None
    result = out.logits.float().cpu()
    if keep is not None:
        result = torch.take_along_dim(result, keep[..., None], dim=1)
    return result


def _cache_keyword(model: Any) -> str | None:
    """The keyword ``model.forward`` takes its KV cache by: ``cache`` since transformers 5.2x,
    ``past_key_values`` before; None when it takes neither (no prefix caching then)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return None
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    return None


def new_cache(lm: LoadedModel) -> Any | None:
    """An empty KV cache :func:`extend` can fill and whose rows can be repeated, or None when this model
    or transformers release cannot (then callers run full sequences through :func:`forward`)."""
    try:
        from transformers.cache_utils import DynamicCache
    except ImportError:  # pragma: no cover - transformers without cache_utils
        return None
    if _cache_keyword(lm.model) is None or not hasattr(DynamicCache, "batch_select_indices"):
        return None
    try:
        return DynamicCache(config=lm.model.config)
    except TypeError:  # pragma: no cover - releases whose DynamicCache takes no config
        return DynamicCache()


def sliding_window(lm: LoadedModel) -> int | None:
    """The model's sliding attention window in tokens, if it has one: a prefix cache whose rows hold
    padding in the middle would slide over other tokens than the plain pass, so callers keep cached
    passes within it."""
    cfg = getattr(lm.model, "config", None)
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    window = getattr(cfg, "sliding_window", None)
    return int(window) if isinstance(window, int) and window > 0 else None


def repeat_rows(cache: Any, rows: Sequence[int]) -> None:
    """Make row ``i`` of the cache a copy of its old row ``rows[i]`` (rows may repeat), in place."""
    import torch

    cache.batch_select_indices(torch.as_tensor(list(rows), dtype=torch.long))


def _cached_pass(lm: LoadedModel, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, *, cache: Any,
                 stop_after: int | None) -> None:
    """One inference pass of ``ids`` continuing ``cache`` (filled in place) under ``mask`` (2D over the
    cache and the new tokens, or a custom 4D one) at ``positions``, stopping after ``stop_after``."""
    import torch

    keyword = _cache_keyword(lm.model) or "past_key_values"
    handle = _stop_hook(lm, stop_after)
    try:
        with torch.inference_mode():
            lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                     position_ids=positions.to(lm.device), use_cache=True, **{keyword: cache})
    except StopForward:
        pass
    finally:
        if handle is not None:
            handle.remove()


def extend(lm: LoadedModel, seqs: Sequence[Sequence[int]], *, cache: Any, past_mask: torch.Tensor | None,
           start: Sequence[int], stop_after: int | None = None) -> torch.Tensor:
    """Continue ``cache`` (filled by earlier calls, one row per seq) with ``seqs``, right-padded, as one
    teacher-forced pass for the hooks the caller registered. ``past_mask``: (batch, cached length), 1
    where the cache holds a real token (padding from earlier calls stays masked); ``start``: each row's
    number of real tokens so far, so its new tokens get positions ``start + j`` as in one unbroken pass.
    Returns the attention mask over the cache after this call (the next call's ``past_mask``).
    ``stop_after`` as in :func:`forward`: blocks past it never run, so the cache holds the layers up to
    it, all a later pass stopping there needs."""
    import torch

    ids, att = pad(seqs, pad_id(lm.tokenizer))
    full = att if past_mask is None else torch.cat([past_mask, att], dim=1)
    positions = torch.as_tensor(list(start), dtype=torch.long)[:, None] + torch.arange(ids.shape[1])[None, :]
    _cached_pass(lm, ids, full, positions, cache=cache, stop_after=stop_after)
    return full


def tree_mask_kind(lm: LoadedModel) -> str | None:
    """How this model takes a custom 4D attention mask: ``"bool"`` (sdpa: True attends), ``"additive"``
    (eager: 0 or the dtype's minimum, added to the scores), or None (another attention kernel, or a
    transformers release that may rebuild the mask: callers use :func:`extend` passes instead)."""
    impl = getattr(getattr(lm.model, "config", None), "_attn_implementation", None)
    try:
        from transformers import masking_utils  # noqa: F401 - releases that pass a 4D mask through as-is
    except ImportError:  # pragma: no cover - transformers before masking_utils
        return None
    return {"sdpa": "bool", "eager": "additive"}.get(str(impl))


def extend_tree(lm: LoadedModel, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, *, cache: Any,
                stop_after: int | None = None) -> None:
    """One teacher-forced pass of ``ids`` (batch, width) continuing ``cache`` under a custom attention
    ``mask`` (batch, width, cached + width; True: the query may read that key), so that one row can
    hold several sequences that share a prefix (a prompt and each of its completions, each completion
    seeing the prompt and itself but not the others). ``positions``: each token's position in its own
    sequence. Only for a model :func:`tree_mask_kind` accepts; for the caller's hooks (returns None)."""
    import torch

    kind = tree_mask_kind(lm)
    if kind is None:  # pragma: no cover - callers check first
        raise ValueError("this model takes no custom attention mask")
    full = mask[:, None]
    if kind == "additive":
        dtype = next(lm.model.parameters()).dtype
        full = torch.zeros(full.shape, dtype=dtype).masked_fill(~full, torch.finfo(dtype).min)
    _cached_pass(lm, ids, full, positions, cache=cache, stop_after=stop_after)
