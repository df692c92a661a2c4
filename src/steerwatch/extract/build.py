"""The extraction pipeline: contrast set -> recorded activations -> per-layer directions ->
per-layer validation -> a :class:`~steerwatch.vector.Vector`.

Every layer is recorded in one pass and gets a direction (they are small); the vector's
*default layers* (what steering uses unless told otherwise) are the chosen ones.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ExtractionError
from ..layers import check_layers
from ..vector import best_layer
from .methods import check_method, extract_direction
from .metrics import MIN_VAL_PAIRS, auroc_interval, separation

if TYPE_CHECKING:  # pragma: no cover
    from ..data import ContrastSet
    from ..models import LoadedModel
    from ..vector import Vector

# --layers auto looks for the best-separating layer in this band of relative depth: the first
# blocks mostly encode tokens and the last ones mostly the next-token prediction, and steering at
# either end works poorly even when a probe separates well there.
AUTO_BAND = (0.2, 0.75)


@dataclass
class LayerRow:
    layer: int
    auroc: float
    paired_acc: float
    cohens_d: float
    norm: float
    selected: bool = False
    # validation of the read direction (only when the vector has one, see ``read_method``)
    read_auroc: float | None = None
    read_paired_acc: float | None = None
    # the AUROC's conservative 95 % interval and the validation pairs it rests on
    # (:func:`steerwatch.extract.metrics.auroc_interval`); None for rows of an older vector file
    auroc_lo: float | None = None
    auroc_hi: float | None = None
    n_val: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def layer_rows(vector: Vector) -> list[LayerRow]:
    """The per-layer validation table of a built vector, rebuilt from what its file stores (the rows
    :func:`build_vector` returned, for a vector loaded from disk)."""
    rows = []
    for layer in vector.layers:
        val = vector.validation.get(layer, {})
        read = vector.read_validation.get(layer, {})
        rows.append(LayerRow(layer=layer, auroc=val.get("auroc", float("nan")),
                             paired_acc=val.get("paired_acc", float("nan")),
                             cohens_d=val.get("cohens_d", float("nan")), norm=vector.norm(layer),
                             selected=layer in vector.default_layers, read_auroc=read.get("auroc"),
                             read_paired_acc=read.get("paired_acc"), auroc_lo=val.get("auroc_lo"),
                             auroc_hi=val.get("auroc_hi"),
                             n_val=None if val.get("n_val") is None else int(val["n_val"])))
    return rows


def small_validation_warning(rows: Sequence[LayerRow], n_val: int, *, minimum: int = MIN_VAL_PAIRS) -> str | None:
    """One line when the validation split has fewer than ``minimum`` pairs: the best layer's AUROC
    with its 95 % interval, how many layers look perfect, and how to get more validation pairs;
    None when there are enough."""
    if n_val >= minimum or not rows:
        return None
    best = best_layer({r.layer: {"auroc": r.auroc, "cohens_d": r.cohens_d} for r in rows})
    row = next(r for r in rows if r.layer == best)
    lo, hi = auroc_interval(row.auroc, n_val, n_val)
    perfect = sum(1 for r in rows if round(r.auroc, 3) == 1.0)
    tied = f"; {perfect} of {len(rows)} layers score 1.000" if perfect > 1 else ""
    return (f"only {n_val} validation pairs (fewer than {minimum}): the best val AUROC {row.auroc:.3f} "
            f"(layer {best}) has a 95% interval of {lo:.2f}-{hi:.2f}{tied}, so the per-layer AUROCs cannot tell "
            "layers apart; add pairs, or mark more of them \"split\": \"val\" (unmarked pairs go ~20 % to val)")


def _span(layers: Sequence[int]) -> str:
    ls = sorted(layers)
    if len(ls) > 1 and ls == list(range(ls[0], ls[-1] + 1)):
        return f"{ls[0]}-{ls[-1]}"
    return ",".join(str(x) for x in ls)


def explain_layers(vector: Vector, rows: Sequence[LayerRow], *, auto: bool, given: str = "as given with --layers"
                   ) -> str:
    """One line on the two layer choices, which answer different questions: the layer that *reads*
    the concept best (:func:`steerwatch.vector.best_layer` over every layer; what ``watch fit``
    and reports use) and the default *steering* layers (``--layers auto``: a window that ends one
    layer after the best layer within :data:`AUTO_BAND` of depth, see :func:`choose_layers`; or
    the layers given; ``given`` says where from)."""
    by = {r.layer: r for r in rows}
    best = vector.best_layer()
    brow = by[best]
    ties = sum(1 for r in rows if round(r.auroc, 3) == round(brow.auroc, 3))
    tie = f", ties {ties - 1} other layer(s), broken by Cohen's d" if ties > 1 else ""
    read = f"reading: best at layer {best} (val AUROC {brow.auroc:.3f}{tie})"
    steer = vector.default_layers
    if not auto:
        return f"layers: steering at {_span(steer)} ({given}); {read}"
    n = vector.n_model_layers or len(vector.layers)
    band = band_layers(n)
    banded = vector.best_layer(among=band)
    why = (f"the {len(steer)} layers up to one after layer {banded}, the best within the middle band "
           f"{_span(band)}, where steering works" if len(steer) > 1 else
           f"layer {banded}, the best within the middle band {_span(band)}, where steering works")
    same = "the same layer" if banded == best else "the first and last blocks can read well but steer poorly"
    return f"layers: steering at {_span(steer)} = {why}; {read}; {same}"


def default_window(n_layers: int) -> int:
    """How many layers ``--layers auto`` steers by default: a quarter of the depth (6 of 24)."""
    return max(1, round(n_layers / 4))


def band_layers(n_layers: int, band: tuple[float, float] = AUTO_BAND) -> list[int]:
    """The layers within ``band`` of relative depth (at least one)."""
    lo = int(band[0] * n_layers)
    return list(range(lo, max(lo + 1, round(band[1] * n_layers))))


def choose_layers(rows: Sequence[LayerRow], n_layers: int, *, k: int = 1,
                  band: tuple[float, float] = AUTO_BAND) -> list[int]:
    """The best layer (:func:`steerwatch.vector.best_layer`) within ``band`` of depth, and a
    window of ``k`` contiguous layers that ends one layer after it (k >= 2; shifted to stay inside the
    model): the push is written in the layers leading up to where the concept reads best.

    Why a window, and why this placement: on the embedded model's bait *dev* split, a small push
    spread over 6 layers turned more sycophantic answers into corrections than a larger push at the
    single best layer (which mostly produced hedges), and the window 9-14 (best layer 13) did
    better than 10-15 (docs/results.md)."""
    band_set = set(band_layers(n_layers, band))
    cand = [r for r in rows if r.layer in band_set] or list(rows)
    best = best_layer({r.layer: {"auroc": r.auroc, "cohens_d": r.cohens_d} for r in cand})
    k = max(1, min(k, n_layers))
    start = min(max(0, best - max(k - 2, 0)), n_layers - k)
    return list(range(start, start + k))


def resolve_read(read: str, data: ContrastSet) -> str:
    from ..record import check_read

    shared = all(p.prompt is not None for p in data.pairs)
    if read == "auto":
        return "completion_mean"
    check_read(read)
    if read == "last_prompt" and shared:
        raise ExtractionError(
            "read position 'last_prompt' gives identical activations for both sides, because every pair shares "
            "its prompt; the label lives in the completion. Use --read completion_mean (or last_token)")
    return read


DEFAULT_METHOD = "mean_diff"


def resolve_method(method: str | None, data: ContrastSet) -> str:
    """``method`` if given, else the data set's own default (a built-in concept's card may name one),
    else :data:`DEFAULT_METHOD`."""
    return check_method(method or data.default_method or DEFAULT_METHOD)


def resolve_read_method(read_method: str | None, data: ContrastSet, method: str) -> str | None:
    """The method of the vector's separate read directions: ``read_method`` if given (``"none"``:
    no separate read directions), else the data set's default; None when it would equal ``method``
    (then detectors read the steering directions)."""
    chosen = read_method or data.default_read_method
    if chosen is None or chosen == "none":
        return None
    check_method(chosen)
    return None if chosen == method else chosen


def build_vector(loaded: LoadedModel, data: ContrastSet, *, method: str | None = None,
                 read_method: str | None = None, read: str = "auto",
                 layers: str | Sequence[int] = "auto", n_auto: int | None = None, batch_size: int = 8,
                 concept: str | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = None, prefix_cache: bool = True) -> tuple[Vector, list[LayerRow]]:
    """Build a vector from a contrast set. Returns the vector and the per-layer validation table.

    method: an extraction method (see :mod:`steerwatch.extract.methods`); None uses the data set's
    default (:func:`resolve_method`).
    read_method: a second method whose directions detectors read instead (stored as the vector's
    read directions, validated per layer in ``read_auroc``); None uses the data set's default
    (cheating and conscientiousness: ``lda``), ``"none"`` stores none (:func:`resolve_read_method`).
    layers: ``"auto"`` (a window of ``n_auto`` layers centred on the best validation AUROC within
    :data:`AUTO_BAND`; ``n_auto`` defaults to :func:`default_window`) or a list of layer indices to
    use as the default steering layers. Directions are stored for all layers.

    prefix_cache: record through the prompt-prefix KV cache (:func:`steerwatch.record.record`: a pair's
    shared prompt runs once; same features up to float rounding); False runs every example whole.

    Each row carries its AUROC's 95 % interval (``auroc_lo``, ``auroc_hi``) and ``n_val``; with fewer
    than :data:`~steerwatch.extract.metrics.MIN_VAL_PAIRS` validation pairs the returned vector's
    ``warnings`` holds :func:`small_validation_warning`'s line (also passed to ``log``).
    """
    import torch

    from ..chat import encode_example
    from ..record import NormStats, record
    from ..vector import Vector

    method = resolve_method(method, data)
    read_method = resolve_read_method(read_method, data, method)
    read = resolve_read(read, data)
    train, val = data.train, data.val
    if len(train) < 2:
        raise ExtractionError(f"{data.name}: need at least 2 training pairs, got {len(train)}")
    if len(val) < 2:
        raise ExtractionError(f"{data.name}: need at least 2 validation pairs (split 'val'), got {len(val)}; "
                              "add \"split\": \"val\" to some pairs or use a larger data set")
    total = loaded.n_layers
    if layers != "auto":
        if isinstance(layers, str):
            raise ExtractionError(f"layers must be 'auto' or a list of integers, got {layers!r}")
        layers = check_layers(list(layers), total)
        if not layers:
            raise ExtractionError("layers must not be empty")
    pairs = train + val
    examples = []
    for p in pairs:
        examples.append(encode_example(loaded.tokenizer, prompt=p.prompt, completion=p.positive, system=p.system))
        examples.append(encode_example(loaded.tokenizer, prompt=p.prompt, completion=p.negative, system=p.system))
    all_layers = list(range(total))
    norms = NormStats()
    feats = record(loaded, examples, layers=all_layers, read=read, batch_size=batch_size, norms=norms,
                   progress=progress, desc=f"recording {data.name}", prefix_cache=prefix_cache)  # (2n, L, d)
    pos, neg = feats[0::2], feats[1::2]
    nt = len(train)
    stats = norms.summary()
    directions: dict[int, torch.Tensor] = {}
    read_dirs: dict[int, torch.Tensor] = {}
    read_validation: dict[int, dict[str, float]] = {}
    rows: list[LayerRow] = []
    validation: dict[int, dict[str, float]] = {}
    for layer in all_layers:
        d = extract_direction(method, pos[:nt, layer], neg[:nt, layer])
        directions[layer] = d
        sep = separation(pos[nt:, layer] @ d, neg[nt:, layer] @ d)
        lo, hi = auroc_interval(sep["auroc"], len(val), len(val))
        row = LayerRow(layer=layer, auroc=sep["auroc"], paired_acc=sep["paired_acc"],
                       cohens_d=sep["cohens_d"], norm=stats[layer]["mean"], auroc_lo=lo, auroc_hi=hi,
                       n_val=len(val))
        validation[layer] = {"auroc": sep["auroc"], "paired_acc": sep["paired_acc"], "cohens_d": sep["cohens_d"],
                             "auroc_lo": lo, "auroc_hi": hi, "n_val": len(val)}
        if read_method is not None:
            rd = extract_direction(read_method, pos[:nt, layer], neg[:nt, layer])
            read_dirs[layer] = rd
            rsep = separation(pos[nt:, layer] @ rd, neg[nt:, layer] @ rd)
            read_validation[layer] = {"auroc": rsep["auroc"], "paired_acc": rsep["paired_acc"],
                                      "cohens_d": rsep["cohens_d"]}
            row.read_auroc, row.read_paired_acc = rsep["auroc"], rsep["paired_acc"]
        rows.append(row)
    k = default_window(total) if n_auto is None else n_auto
    chosen = choose_layers(rows, total, k=k) if layers == "auto" else [int(x) for x in layers]
    for r in rows:
        r.selected = r.layer in chosen
    vec = Vector(
        directions=directions, concept=concept or data.name, model_name=loaded.name,
        model_fingerprint=loaded.fingerprint, hidden_size=loaded.hidden_size, method=method,
        read_position=read, default_layers=chosen, residual_norm=stats, n_model_layers=total,
        dataset=data.describe(),
        validation=validation,
        read_directions=read_dirs, read_method=read_method, read_validation=read_validation,
    )
    warning = small_validation_warning(rows, len(val))
    if warning is not None:
        vec.warnings.append(warning)
        if log is not None:
            log(warning)
    return vec, rows
