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
           desc: str = "recording") -> torch.Tensor:
    """Run the model over ``examples`` and return features of shape (n_examples, len(layers), d_model).

    read: ``completion_mean`` (mean over completion tokens), ``last_prompt`` (last prompt token)
    or ``last_token`` (last token of the example). Batches are right-padded; padded positions are
    never read and never counted in norm statistics.
    """
    return record_reads(loaded, examples, layers=layers, reads=[read], batch_size=batch_size, norms=norms,
                        progress=progress, desc=desc)[read]


def record_reads(loaded: LoadedModel, examples: Sequence[Encoded], *, layers: Sequence[int], reads: Sequence[str],
                 batch_size: int = 8, norms: NormStats | None = None, progress: bool = False,
                 desc: str = "recording") -> dict[str, torch.Tensor]:
    """:func:`record` with several read positions from one forward pass: ``{read: (n_examples,
    len(layers), d_model)}``."""
    import torch
    from tqdm.auto import tqdm

    from .batch import forward, length_batches

    reads = list(dict.fromkeys(check_read(r) for r in reads))
    if not reads:
        raise ExtractionError("record_reads needs at least one read position")
    if batch_size < 1:
        raise ExtractionError(f"batch_size must be >= 1, got {batch_size}")
    blocks = decoder_blocks(loaded.model, layers_path=loaded.layers_path)
    layers = check_layers(list(layers), len(blocks))
    n, d = len(examples), loaded.hidden_size
    out = torch.zeros(len(reads), n, len(layers), d, dtype=torch.float32)
    state: dict[str, torch.Tensor] = {}

    def reduce(layer: int, h: torch.Tensor) -> torch.Tensor:
        if norms is not None:
            norms.add(layer, h.norm(dim=-1)[state["norm_mask"]].cpu())
        return torch.einsum("bks,bsd->kbd", state["weights"], h).cpu()  # weights: (batch, reads, seq), rows sum to 1

    bar = tqdm(total=n, desc=desc, disable=not progress, unit="ex")
    with ReadHooks(loaded, layers, reduce) as hooks:
        for idx in length_batches([len(e.ids) for e in examples], batch_size):
            batch = [examples[i] for i in idx]
            width = max(len(e.ids) for e in batch)
            weights = torch.zeros((len(batch), len(reads), width), dtype=torch.float32)
            mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for r, e in enumerate(batch):
                mask[r, 1:len(e.ids)] = True  # every real token but the first (an outlier norm in many models)
                for k, read in enumerate(reads):
                    if read == "completion_mean":
                        a, b = e.span
                        weights[r, k, a:b] = 1.0 / (b - a)
                    elif read == "last_prompt":
                        weights[r, k, e.last_prompt] = 1.0
                    else:
                        weights[r, k, len(e.ids) - 1] = 1.0
            state.update(weights=weights.to(loaded.device), norm_mask=mask.to(loaded.device))
            forward(loaded, [e.ids for e in batch], stop_after=hooks.last)
            (call,) = hooks.take()
            for slot, layer in enumerate(layers):
                out[:, idx, slot] = call[layer]
            bar.update(len(batch))
    bar.close()
    return {read: out[k] for k, read in enumerate(reads)}
