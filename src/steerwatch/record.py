"""Read hooks (:class:`ReadHooks`, the one way steerwatch reads the residual stream) and
extraction's batched, padding-aware collection of features (:func:`record`).

Nothing is kept but the reduced features: per example and layer one vector (the last prompt
token, or the mean over the completion), and running residual-norm statistics per layer
(every real token but the first of each sequence, whose norm is an outlier in many models).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ExtractionError
from .layers import block_output, check_layers, decoder_blocks, normalize_layer
from .types import READ_POSITIONS

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .chat import Encoded
    from .models import LoadedModel



@dataclass
class NormStats:
    """Running mean/std of residual L2 norms per layer."""

    total: dict[int, float] = field(default_factory=dict)
    total_sq: dict[int, float] = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)

    def add(self, layer: int, norms: torch.Tensor) -> None:
        self.total[layer] = self.total.get(layer, 0.0) + float(norms.sum())
        self.total_sq[layer] = self.total_sq.get(layer, 0.0) + float((norms.double() ** 2).sum())
        self.count[layer] = self.count.get(layer, 0) + int(norms.numel())

    def summary(self) -> dict[int, dict[str, float]]:
        out = {}
        for layer, n in self.count.items():
            mean = self.total[layer] / n
            var = max(self.total_sq[layer] / n - mean * mean, 0.0)
            out[layer] = {"mean": mean, "std": var ** 0.5, "n_tokens": n}
        return out


def check_read(read: str) -> str:
    if read not in READ_POSITIONS:
        raise ExtractionError(f"unknown read position {read!r}; valid: {', '.join(READ_POSITIONS)}")
    return read


class ReadHooks:
    """Read hooks on decoder blocks: at each chosen layer the block output, a (batch, seq, d)
    float32 tensor, goes through ``reduce(layer, h)`` and only what that returns is kept, one dict
    ``{layer: result}`` per forward call in :attr:`calls`. The one read mechanism: extraction reduces
    to per-example features and norm statistics, detectors to per-token projections (also step by
    step during generation). Removed on exit; never changes the model's output."""

    def __init__(self, loaded: LoadedModel, layers: Sequence[int],
                 reduce: Callable[[int, torch.Tensor], Any]) -> None:
        blocks = decoder_blocks(loaded.model, layers_path=loaded.layers_path)
        self.layers = sorted({normalize_layer(x, len(blocks)) for x in layers})  # several readers may share one
        if not self.layers:
            raise ExtractionError("ReadHooks needs at least one layer")
        self.calls: list[dict[int, Any]] = []
        self._current: dict[int, Any] = {}
        self._handles: list[Any] = []
        for layer in self.layers:
            def hook(_m: Any, _i: Any, output: Any, layer: int = layer) -> None:
                self._current[layer] = reduce(layer, block_output(output).float())
                if len(self._current) == len(self.layers):
                    self.calls.append(self._current)
                    self._current = {}
            self._handles.append(blocks[layer].register_forward_hook(hook))

    @property
    def last(self) -> int:
        """The deepest layer read: a teacher-forced pass can stop after it."""
        return self.layers[-1]

    def take(self) -> list[dict[int, Any]]:
        """The recorded calls (oldest first); clears them."""
        calls, self.calls = self.calls, []
        return calls

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> ReadHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def record(loaded: LoadedModel, examples: Sequence[Encoded], *, layers: Sequence[int], read: str,
           batch_size: int = 8, norms: NormStats | None = None, progress: bool = False,
           desc: str = "recording", prefix_cache: bool = True) -> torch.Tensor:
    """Run the model over ``examples`` and return features of shape (n_examples, len(layers), d_model).

    read: ``completion_mean`` (mean over completion tokens), ``last_prompt`` (last prompt token)
    or ``last_token`` (last token of the example). Batches are right-padded; padded positions are
    never read and never counted in norm statistics.

    prefix_cache: examples with a completion are recorded through a KV cache, so that what several
    examples share runs once: the opening every prompt shares (the chat template's system turn), once
    for the whole set, and the prompt of a contrast pair (both sides). Each batch is then one pass
    over that cache whose rows each hold a prompt's remainder followed by all its completions, under
    an attention mask that lets each completion see the prompt and itself only (a model whose
    attention takes no custom mask makes it two passes: the prompts' remainders, then each
    example's completion over a copy of their cache). The
    features and norm statistics equal the plain passes' up to float rounding (tests/test_record_cache.py;
    bench/bench_extract.py measures the speed). Examples without a completion, models that take no
    cache, and batches longer than a sliding attention window run as plain passes.
    """
    import torch
    from tqdm.auto import tqdm

    from .batch import extend, new_cache, sliding_window, tree_mask_kind

    check_read(read)
    if batch_size < 1:
        raise ExtractionError(f"batch_size must be >= 1, got {batch_size}")
    blocks = decoder_blocks(loaded.model, layers_path=loaded.layers_path)
    layers = check_layers(list(layers), len(blocks))
    n, d = len(examples), loaded.hidden_size
    out = torch.zeros(n, len(layers), d, dtype=torch.float32)
    state: dict[str, Any] = {}

    def reduce(layer: int, h: torch.Tensor) -> torch.Tensor | None:
        if norms is not None:
            kept = h.norm(dim=-1)[state["norm_mask"]]
            if state.get("norm_repeat") is not None:  # a shared token stands for every example sharing it
                kept = kept.repeat_interleave(state["norm_repeat"])
            norms.add(layer, kept.cpu())
        if state["weights"] is None:
            return None
        if state.get("rows_of") is not None:  # several examples share a row (a prompt and its completions)
            h = h[state["rows_of"]]
        return torch.einsum("bs,bsd->bd", state["weights"], h).cpu()  # weights: (batch, seq), rows sum to 1

    cached = [i for i, e in enumerate(examples) if _cacheable(e)] if prefix_cache else []
    if cached and new_cache(loaded) is None:
        cached = []
    window = sliding_window(loaded)
    tree = tree_mask_kind(loaded) is not None
    opening = _opening(examples, cached)
    batches = []
    plain = sorted(set(range(n)) - set(cached))
    for groups in _group_batches(examples, cached, batch_size, packed=tree):
        if window is not None and _cached_width(examples, groups, opening) > window:
            plain.extend(i for g in groups for i in g)  # a cache with padding inside would slide over other tokens
        else:
            batches.append(groups)
    bar = tqdm(total=n, desc=desc, disable=not progress, unit="ex")
    with ReadHooks(loaded, layers, reduce) as hooks:
        base = None
        if batches and opening > 0:  # the opening every cached prompt shares: one pass for the whole set
            mask = torch.zeros((1, opening), dtype=torch.bool)
            mask[0, 1:] = True  # every token but the sequence's first
            n_cached = sum(len(g) for groups in batches for g in groups)
            state.update(weights=None, norm_mask=mask.to(loaded.device),
                         norm_repeat=torch.tensor([n_cached], device=loaded.device))
            cache = new_cache(loaded)
            first = examples[batches[0][0][0]].ids[:opening]
            base = (cache, extend(loaded, [first], cache=cache, past_mask=None, start=[0], stop_after=hooks.last))
            hooks.take()
        for groups in batches:
            idx = [i for g in groups for i in g]
            run = _record_tree if tree else _record_cached
            feats = run(loaded, examples, groups, read, state, hooks, opening=opening, base=base,
                        norms_off=norms is None)
            for slot, layer in enumerate(layers):
                out[idx, slot] = feats[layer]
            bar.update(len(idx))
        for idx in length_batches_of(examples, sorted(plain), batch_size):
            batch = [examples[i] for i in idx]
            state["rows_of"] = None
            _record_plain(loaded, batch, read, state, hooks)
            (call,) = hooks.take()
            for slot, layer in enumerate(layers):
                out[idx, slot] = call[layer]
            bar.update(len(batch))
    bar.close()
    return out


def length_batches_of(examples: Sequence[Encoded], subset: Sequence[int], batch_size: int) -> list[list[int]]:
    """``subset`` of ``examples`` in length-sorted batches (indices into ``examples``)."""
    from .batch import length_batches

    return [[subset[j] for j in b] for b in length_batches([len(examples[i].ids) for i in subset], batch_size)]


def _record_plain(loaded: LoadedModel, batch: Sequence[Encoded], read: str, state: dict[str, Any],
                  hooks: ReadHooks) -> None:
    import torch

    from .batch import forward

    width = max(len(e.ids) for e in batch)
    weights = torch.zeros((len(batch), width), dtype=torch.float32)
    mask = torch.zeros((len(batch), width), dtype=torch.bool)
    for r, e in enumerate(batch):
        mask[r, 1:len(e.ids)] = True  # every real token but the first (an outlier norm in many models)
        weights[r] = _read_weights(e, read, width)
    state.update(weights=weights.to(loaded.device), norm_mask=mask.to(loaded.device), norm_repeat=None)
    forward(loaded, [e.ids for e in batch], stop_after=hooks.last)


def _read_weights(e: Encoded, read: str, width: int, offset: int = 0) -> torch.Tensor:
    """One row of read weights over positions ``offset .. offset + width`` of example ``e``."""
    import torch

    row = torch.zeros(width, dtype=torch.float32)
    if read == "completion_mean":
        a, b = e.span
        row[a - offset:b - offset] = 1.0 / (b - a)
    elif read == "last_prompt":
        row[e.last_prompt - offset] = 1.0
    else:
        row[len(e.ids) - 1 - offset] = 1.0
    return row


def _prompt_len(e: Encoded) -> int:
    return e.last_prompt + 1


def _cacheable(e: Encoded) -> bool:
    """A prompt and at least one completion token after it: the three cached passes need both."""
    return e.has_completion and len(e.ids) > _prompt_len(e)


def _group_batches(examples: Sequence[Encoded], subset: Sequence[int], batch_size: int, *,
                   packed: bool = False) -> list[list[list[int]]]:
    """``subset`` grouped by identical prompt tokens (a contrast pair's two sides share one), groups in
    batches of at most ``batch_size`` examples (a larger group is split), shortest completions first;
    ``packed`` (the one-pass tree mask, a row per group): shortest packed row first."""
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i in subset:
        e = examples[i]
        by_prompt.setdefault(tuple(e.ids[:_prompt_len(e)]), []).append(i)

    def completions(g: Sequence[int]) -> list[int]:
        return [len(examples[i].ids) - _prompt_len(examples[i]) for i in g]

    if packed:  # a row holds the prompt's rest and every completion: its width is their sum (cheating
        # pairs, batch 8: 6.3 % of the grid is padding, against 8.2 % sorted as below)
        groups = sorted(by_prompt.values(), key=lambda g: (_prompt_len(examples[g[0]]) + sum(completions(g)), g[0]))
    else:  # the completion pass runs the most tokens (every example), so its padding matters most: groups
        # sorted by their longest completion, then prompt length (honesty pairs: 1.65x fewer padded
        # tokens than whole passes at batch 8, against 1.60x sorted by total length)
        groups = sorted(by_prompt.values(), key=lambda g: (max(completions(g)), _prompt_len(examples[g[0]])))
    batches: list[list[list[int]]] = []
    size = 0
    for g in groups:
        for start in range(0, len(g), batch_size):
            part = g[start:start + batch_size]
            if not batches or size + len(part) > batch_size:
                batches.append([])
                size = 0
            batches[-1].append(part)
            size += len(part)
    return batches


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first = seqs[0]
    k = min(len(s) for s in seqs)
    for j in range(k):
        if any(s[j] != first[j] for s in seqs[1:]):
            return j
    return k


def _opening(examples: Sequence[Encoded], subset: Sequence[int]) -> int:
    """Tokens every prompt of ``subset`` starts with, leaving each prompt at least one token of its
    own (the prompt pass reads the prompt's last token)."""
    if not subset:
        return 0
    prompts = [examples[i].ids[:_prompt_len(examples[i])] for i in subset]
    return min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)


def _cached_width(examples: Sequence[Encoded], groups: Sequence[Sequence[int]], opening: int) -> int:
    """The cache length a batch's passes reach: opening + longest prompt rest + longest completion."""
    rest = max(_prompt_len(examples[g[0]]) - opening for g in groups)
    completion = max(len(examples[i].ids) - _prompt_len(examples[i]) for g in groups for i in g)
    return opening + rest + completion


def _record_cached(loaded: LoadedModel, examples: Sequence[Encoded], groups: Sequence[Sequence[int]], read: str,
                   state: dict[str, Any], hooks: ReadHooks, *, opening: int, base: tuple[Any, torch.Tensor] | None,
                   norms_off: bool) -> dict[int, torch.Tensor]:
    """Features of the examples of ``groups`` (in group order) through two passes over a KV cache that
    starts as ``base`` (the cache and attention mask of the ``opening`` tokens every prompt shares, run
    once by :func:`record`; None when there is no opening): each group's prompt rest, each example's
    completion. Norm statistics count a shared token once per example that contains it, as the plain
    pass would; ``norms_off`` (no statistics kept) lets a ``last_prompt`` read skip the completions."""
    import copy

    import torch

    from .batch import extend, new_cache, repeat_rows

    dev = loaded.device
    prompts = [examples[g[0]].ids[:_prompt_len(examples[g[0]])] for g in groups]
    sizes = [len(g) for g in groups]
    n_ex = sum(sizes)
    shared = opening
    past = None
    if base is None:
        cache = new_cache(loaded)
    else:
        with torch.inference_mode():
            cache = copy.deepcopy(base[0])  # each batch repeats the opening's rows in its own copy
        repeat_rows(cache, [0] * len(groups))
        past = base[1].expand(len(groups), -1)
    # each distinct prompt's rest: the last prompt token is read here
    rests = [p[shared:] for p in prompts]
    width = max(len(r) for r in rests)
    mask = torch.zeros((len(groups), width), dtype=torch.bool)
    weights = torch.zeros((len(groups), width), dtype=torch.float32)
    repeat: list[int] = []
    for r, rest in enumerate(rests):
        mask[r, (1 if shared == 0 else 0):len(rest)] = True
        if read == "last_prompt":
            weights[r, len(rest) - 1] = 1.0
        repeat.extend([sizes[r]] * int(mask[r].sum()))
    state.update(weights=weights.to(dev), norm_mask=mask.to(dev),
                 norm_repeat=torch.tensor(repeat, dtype=torch.long, device=dev))
    past = extend(loaded, rests, cache=cache, past_mask=past, start=[shared] * len(groups), stop_after=hooks.last)
    (prompt_call,) = hooks.take()
    rows = [r for r, g in enumerate(groups) for _ in g]
    if read == "last_prompt" and norms_off:
        return {layer: f[rows] for layer, f in prompt_call.items()}
    # each example's completion: completion means and last tokens are read here
    repeat_rows(cache, rows)
    past = past[rows]
    batch = [examples[i] for g in groups for i in g]
    comps = [e.ids[_prompt_len(e):] for e in batch]
    width = max(len(c) for c in comps)
    mask = torch.zeros((n_ex, width), dtype=torch.bool)
    weights = torch.zeros((n_ex, width), dtype=torch.float32)
    for r, (e, c) in enumerate(zip(batch, comps)):
        mask[r, :len(c)] = True
        weights[r] = _read_weights(e, read, width, offset=_prompt_len(e))
    state.update(weights=weights.to(dev), norm_mask=mask.to(dev), norm_repeat=None)
    extend(loaded, comps, cache=cache, past_mask=past, start=[_prompt_len(e) for e in batch], stop_after=hooks.last)
    (call,) = hooks.take()
    if read == "last_prompt":  # the completion pass ran for the norm statistics only
        return {layer: f[rows] for layer, f in prompt_call.items()}
    return call


def _record_tree(loaded: LoadedModel, examples: Sequence[Encoded], groups: Sequence[Sequence[int]], read: str,
                 state: dict[str, Any], hooks: ReadHooks, *, opening: int, base: tuple[Any, torch.Tensor] | None,
                 norms_off: bool) -> dict[int, torch.Tensor]:
    """Features of the examples of ``groups`` (in group order) through one pass over a KV cache that
    starts as ``base`` (as in :func:`_record_cached`): row ``r`` holds group ``r``'s prompt rest and
    then each of its examples' completions, every completion attending to the opening, the prompt
    rest and itself (positions as in its own unbroken sequence), never to its siblings. Norm
    statistics count a prompt token once per example that contains it, as the plain pass would."""
    import copy

    import torch

    from .batch import extend_tree, new_cache, pad_id, repeat_rows

    skip = read == "last_prompt" and norms_off  # the completions would be run for norm statistics only
    dev = loaded.device
    n_rows = len(groups)
    if base is None:
        cache, past_len = new_cache(loaded), 0
    else:
        with torch.inference_mode():
            cache = copy.deepcopy(base[0])
        repeat_rows(cache, [0] * n_rows)
        past_len = int(base[1].shape[1])
    rows: list[list[int]] = []
    positions: list[list[int]] = []
    layout: list[tuple[int, list[tuple[int, int]]]] = []  # per row: prompt-rest length, each completion's span
    for g in groups:
        head = examples[g[0]]
        rest = head.ids[opening:_prompt_len(head)]
        toks, pos, spans = list(rest), list(range(opening, _prompt_len(head))), []
        for i in g:
            e = examples[i]
            a = len(toks)
            if not skip:
                toks += e.ids[_prompt_len(e):]
                pos += range(_prompt_len(e), len(e.ids))
            spans.append((a, len(toks)))
        rows.append(toks)
        positions.append(pos)
        layout.append((len(rest), spans))
    width = max(len(t) for t in rows)
    n_ex = sum(len(g) for g in groups)
    ids = torch.full((n_rows, width), pad_id(loaded.tokenizer), dtype=torch.long)
    pos_t = torch.zeros((n_rows, width), dtype=torch.long)
    mask = torch.zeros((n_rows, width, past_len + width), dtype=torch.bool)
    norm_mask = torch.zeros((n_rows, width), dtype=torch.bool)
    weights = torch.zeros((n_ex, width), dtype=torch.float32)
    rows_of: list[int] = []
    repeat: list[int] = []
    ex = 0
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    for r, (g, toks, (n_rest, spans)) in enumerate(zip(groups, rows, layout)):
        ids[r, :len(toks)] = torch.as_tensor(toks, dtype=torch.long)
        pos_t[r, :len(toks)] = torch.as_tensor(positions[r], dtype=torch.long)
        pos_t[r, len(toks):] = positions[r][-1]
        mask[r, :len(toks), :past_len] = True  # the opening: every token reads it
        mask[r, :n_rest, past_len:past_len + n_rest] = causal[:n_rest, :n_rest]
        mask[r, len(toks):, 0] = True  # padding reads one key (an empty row would be NaN), never read itself
        norm_mask[r, (1 if opening == 0 else 0):n_rest] = True  # a sequence's first token is not counted
        repeat.extend([len(g)] * int(norm_mask[r, :n_rest].sum()))
        for i, (a, b) in zip(g, spans):
            e = examples[i]
            if read == "last_prompt":
                weights[ex, n_rest - 1] = 1.0
            else:
                weights[ex, a:b] = _read_weights(e, read, b - a, offset=_prompt_len(e))
            rows_of.append(r)
            ex += 1
            if b == a:  # skipped
                continue
            mask[r, a:b, past_len:past_len + n_rest] = True
            mask[r, a:b, past_len + a:past_len + b] = causal[:b - a, :b - a]
            norm_mask[r, a:b] = True
            repeat.extend([1] * (b - a))
    state.update(weights=weights.to(dev), norm_mask=norm_mask.to(dev), rows_of=torch.tensor(rows_of, device=dev),
                 norm_repeat=torch.tensor(repeat, dtype=torch.long, device=dev))
    extend_tree(loaded, ids, pos_t, mask, cache=cache, stop_after=hooks.last)
    state["rows_of"] = None
    (call,) = hooks.take()
    return call


def tokens_run(examples: Sequence[Encoded], *, batch_size: int, prefix_cache: bool = True) -> int:
    """The real (unpadded) tokens :func:`record` runs through the model for ``examples``: every token
    of every example without the prefix cache; with it, the opening all prompts share once, each
    batch's distinct prompts' rests once, every completion (examples without a completion whole). Ignores the
    sliding-window fallback. What bench/bench_extract.py prints beside the times."""
    cached = [i for i, e in enumerate(examples) if _cacheable(e)] if prefix_cache else []
    whole = set(range(len(examples))) - set(cached)
    total = sum(len(examples[i].ids) for i in whole)
    opening = _opening(examples, cached)
    total += opening
    for groups in _group_batches(examples, cached, batch_size):
        total += sum(_prompt_len(examples[g[0]]) - opening for g in groups)
        total += sum(len(examples[i].ids) - _prompt_len(examples[i]) for g in groups for i in g)
    return total
