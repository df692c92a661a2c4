"""Read hooks: batched, padding-aware collection of residual-stream features.

Nothing is kept but the reduced features: per example and layer one vector (the last prompt
token, or the mean over the completion), and running residual-norm statistics per layer
(every real token but the first of each sequence, whose norm is an outlier in many models).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ExtractionError
from .layers import block_output, check_layers, decoder_blocks

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .chat import Encoded
    from .models import LoadedModel

READ_POSITIONS = ("completion_mean", "last_prompt", "last_token")


class _StopForward(Exception):
    pass


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


def record(loaded: LoadedModel, examples: Sequence[Encoded], *, layers: Sequence[int], read: str,
           batch_size: int = 8, norms: NormStats | None = None, progress: bool = False,
           desc: str = "recording") -> torch.Tensor:
    """Run the model over ``examples`` and return features of shape (n_examples, len(layers), d_model).

    read: ``completion_mean`` (mean over completion tokens), ``last_prompt`` (last prompt token)
    or ``last_token`` (last token of the example). Batches are right-padded; padded positions are
    never read and never counted in norm statistics.
    """
    import torch
    from tqdm.auto import tqdm

    check_read(read)
    if batch_size < 1:
        raise ExtractionError(f"batch_size must be >= 1, got {batch_size}")
    blocks = decoder_blocks(loaded.model, layers_path=loaded.layers_path)
    layers = check_layers(list(layers), len(blocks))
    model = loaded.model
    device = loaded.device
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    n, d = len(examples), loaded.hidden_size
    out = torch.zeros(n, len(layers), d, dtype=torch.float32)
    order = sorted(range(n), key=lambda i: len(examples[i].ids))  # similar lengths batch together
    last = max(layers)

    state: dict[str, torch.Tensor] = {}

    def make_hook(slot: int, layer: int):
        def hook(_mod, _inp, output):
            h = block_output(output).float()  # (batch, seq, d)
            w = state["weights"]  # (batch, seq) read weights, rows sum to 1
            feats = torch.einsum("bs,bsd->bd", w, h)
            out[state["rows"], slot] = feats.cpu()
            if norms is not None:
                mask = state["norm_mask"]
                norms.add(layer, h.norm(dim=-1)[mask].cpu())
            if layer == last:
                raise _StopForward
        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(slot, layer)) for slot, layer in enumerate(layers)]
    try:
        bar = tqdm(total=n, desc=desc, disable=not progress, unit="ex")
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                batch = [examples[i] for i in idx]
                width = max(len(e.ids) for e in batch)
                ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                att = torch.zeros((len(batch), width), dtype=torch.long)
                weights = torch.zeros((len(batch), width), dtype=torch.float32)
                for r, e in enumerate(batch):
                    ids[r, : len(e.ids)] = torch.tensor(e.ids)
                    att[r, : len(e.ids)] = 1
                    if read == "completion_mean":
                        a, b = e.span
                        weights[r, a:b] = 1.0 / (b - a)
                    elif read == "last_prompt":
                        weights[r, e.last_prompt] = 1.0
                    else:
                        weights[r, len(e.ids) - 1] = 1.0
                norm_mask = att.bool().clone()
                norm_mask[:, 0] = False
                state.update(rows=torch.tensor(idx), weights=weights.to(device), norm_mask=norm_mask.to(device))
                try:
                    model(input_ids=ids.to(device), attention_mask=att.to(device), use_cache=False)
                except _StopForward:
                    pass
                bar.update(len(batch))
        bar.close()
    finally:
        for h in handles:
            h.remove()
    return out
