"""The Vector: one unit direction per layer plus provenance, in one safetensors file.

File layout (extension ``.sv`` by convention, any name works):
  tensors  ``direction.<layer>``: float32, shape (hidden_size,), unit norm; the positive
           direction points towards the concept's *positive* side (e.g. honest, sycophantic).
           Optionally ``read.<layer>`` for the same layers: a second set of unit directions,
           extracted with ``read_method`` from the same activations, that detectors read instead
           of ``direction`` (a direction that separates well is not always one that steers well:
           the mean difference steers best, a covariance-whitened one reads best).
  header   ``__metadata__["steerwatch"]``: JSON with the fields of :class:`Vector` below.

Layer numbers follow :data:`steerwatch.layers.LAYER_CONVENTION` (output of decoder block i).
Strength units: steering adds ``strength * residual_norm[layer]["mean"] * direction``, so a
strength of 0.1 is a push of 10 % of the typical residual-stream norm at that layer.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import VectorFileError, VectorMismatchError
from .layers import LAYER_CONVENTION

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .models import LoadedModel

FORMAT_VERSION = 1
_REQUIRED = ("concept", "model_name", "model_fingerprint", "hidden_size", "layer_convention",
             "method", "read_position", "default_layers", "residual_norm")


# A vector's residual-norm statistics may differ from the model's measured residual norm by at most
# this factor. Extraction data and the probe text below give norms within a few times of each other;
# a file whose norms are off by more was edited or built elsewhere, and its strength unit means nothing
# (a norm of 1e30 turns +0.01 into a push of 1e28).
NORM_FACTOR = 100.0
_NORM_PROBE = ("The committee met on Tuesday to review the budget for the coming year. Everyone agreed that "
               "the report was clear, and the meeting ended a little earlier than planned.")


def measured_residual_norms(loaded: LoadedModel) -> dict[int, float]:
    """The model's mean residual-stream norm at each layer over a short fixed text (each sequence's
    first token left out, as extraction does); measured once per loaded model."""
    if loaded.measured_norms is not None:
        return loaded.measured_norms
    from .batch import forward
    from .record import ReadHooks

    ids = [int(t) for t in loaded.tokenizer(_NORM_PROBE, add_special_tokens=True)["input_ids"]]
    with ReadHooks(loaded, list(range(loaded.n_layers)),
                   lambda _layer, h: float(h[0, 1:].norm(dim=-1).mean())) as hooks:
        forward(loaded, [ids])
        (call,) = hooks.take()
    loaded.measured_norms = {int(k): float(v) for k, v in call.items()}
    return loaded.measured_norms


def check_residual_norm(vector: Vector, loaded: LoadedModel, *, factor: float = NORM_FACTOR) -> None:
    """Raise VectorMismatchError when the vector's residual-norm statistics (its strength unit) are
    more than ``factor`` times off the model's measured residual norm at any of its layers."""
    measured = measured_residual_norms(loaded)
    for layer in vector.layers:
        have, want = vector.norm(layer), measured.get(layer)
        if want is None or want <= 0:
            continue
        if not (want / factor <= have <= want * factor):
            raise VectorMismatchError(
                f"vector {vector.concept!r} records a residual norm {have:.4g} at layer {layer}, but model "
                f"{loaded.name!r} measured {want:.4g} there ({have / want:.3g} times; at most {factor:g} is "
                "accepted); its strength unit would be wrong by that factor: rebuild the vector on this model "
                "with steerwatch extract")


def best_layer(validation: Mapping[int, Mapping[str, float]]) -> int:
    """THE best-layer rule, for steering windows, detectors and reports alike: the highest
    validation AUROC rounded to 3 decimals (finer differences are noise at these validation sizes),
    ties to the larger Cohen's d, then to the deeper layer. ``validation``: layer -> {"auroc",
    "cohens_d", ...}."""
    if not validation:
        raise VectorFileError("no validation rows to choose a best layer from")
    return max(validation, key=lambda layer: (round(float(validation[layer]["auroc"]), 3),
                                              float(validation[layer].get("cohens_d", 0.0)), layer))


@dataclass
class Vector:
    """Directions per layer + provenance. ``directions[layer]`` is a unit tensor (hidden_size,)."""

    directions: dict[int, torch.Tensor]
    concept: str
    model_name: str
    model_fingerprint: str
    hidden_size: int
    method: str
    read_position: str
    default_layers: list[int]
    residual_norm: dict[int, dict[str, float]]  # layer -> {"mean", "std", "n_tokens"}
    n_model_layers: int | None = None
    layer_convention: str = LAYER_CONVENTION
    dataset: dict[str, Any] = field(default_factory=dict)  # name, sha256, n_train, n_val
    validation: dict[int, dict[str, float]] = field(default_factory=dict)  # layer -> {"auroc", ...}
    recommended_strength: float | None = None
    # directions for reading (detectors), when they differ from the steering ones; same layers
    read_directions: dict[int, torch.Tensor] = field(default_factory=dict)
    read_method: str | None = None
    read_validation: dict[int, dict[str, float]] = field(default_factory=dict)
    library_version: str = ""
    created_at: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # what the build found worth a warning (e.g. too few validation pairs to trust the AUROCs); set by
    # steerwatch.extract.build.build_vector, not saved (the validation rows keep n_val and the intervals)
    warnings: list[str] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.library_version:
            from . import __version__

            self.library_version = __version__
        if not self.created_at:
            self.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # ------------------------------------------------------------------ display
    def _summary(self) -> tuple[str, str]:
        layers = self.layers
        span = (f"{layers[0]}-{layers[-1]}" if layers and layers == list(range(layers[0], layers[-1] + 1))
                else ",".join(map(str, layers)))
        best = self.best_layer() if self.validation else None
        au = self.auroc(best) if best is not None else None
        quality = f", best layer {best} (val AUROC {au:.3f})" if au is not None else ""
        rec = f", recommended strength {self.recommended_strength:+g}" if self.recommended_strength is not None else ""
        return (f"{self.concept!r} ({self.method}) for {self.model_name}, {len(layers)} layers {span}{quality}{rec}",
                f"default layers {self.default_layers}")

    def __repr__(self) -> str:
        """One line (a vector holds hundreds of thousands of numbers; printing them helps no one)."""
        head, layers = self._summary()
        return f"<Vector {head}; {layers}>"

    def _repr_html_(self) -> str:
        import html

        head, layers = self._summary()
        return f"<b>Vector</b> {html.escape(head)}<br><small>{html.escape(layers)}</small>"

    # ------------------------------------------------------------------ access
    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def direction(self, layer: int) -> torch.Tensor:
        if layer not in self.directions:
            raise VectorFileError(
                f"vector {self.concept!r} has no direction for layer {layer}; it has layers {self.layers}"
            )
        return self.directions[layer]

    def norm(self, layer: int) -> float:
        if layer not in self.residual_norm:
            raise VectorFileError(
                f"vector {self.concept!r} has no residual-norm statistics for layer {layer}; "
                f"it has them for {sorted(self.residual_norm)}"
            )
        return float(self.residual_norm[layer]["mean"])

    def best_layer(self, *, read: bool = False, among: Sequence[int] | None = None) -> int:
        """The layer whose validation separates best (:func:`best_layer`): of the steering
        directions, or with ``read`` of the directions a detector reads; ``among`` restricts the
        candidates. A vector without validation gives its first default layer."""
        table = self.read_validation if (read and self.read_directions) else self.validation
        rows = {layer: row for layer, row in table.items() if among is None or layer in among}
        return best_layer(rows) if rows else self.default_layers[0]

    def auroc(self, layer: int) -> float | None:
        row = self.validation.get(layer)
        return None if row is None else row.get("auroc")

    def read_direction(self, layer: int) -> torch.Tensor:
        """The direction a detector reads at ``layer``: the read direction when the vector has
        them, else the steering direction."""
        if not self.read_directions:
            return self.direction(layer)
        if layer not in self.read_directions:
            raise VectorFileError(f"vector {self.concept!r} has no read direction for layer {layer}; "
                                  f"it has layers {sorted(self.read_directions)}")
        return self.read_directions[layer]

    def read_auroc(self, layer: int) -> float | None:
        """Validation AUROC of :meth:`read_direction` at ``layer``."""
        if not self.read_directions:
            return self.auroc(layer)
        row = self.read_validation.get(layer)
        return None if row is None else row.get("auroc")

    # ------------------------------------------------------------------ checks
    def check_model(self, loaded: LoadedModel, *, force: bool = False) -> None:
        """Raise VectorMismatchError if this vector was built on another model."""
        if self.hidden_size != loaded.hidden_size:
            raise VectorMismatchError(
                f"vector {self.concept!r} has hidden size {self.hidden_size} but model {loaded.name!r} has "
                f"{loaded.hidden_size}; it cannot be applied to this model (rebuild it with steerwatch extract)"
            )
        if self.n_model_layers is not None and max(self.layers) >= loaded.n_layers:
            raise VectorMismatchError(
                f"vector {self.concept!r} has layers up to {max(self.layers)} but model {loaded.name!r} has "
                f"{loaded.n_layers} layers"
            )
        if not force and self.model_fingerprint != loaded.fingerprint:
            raise VectorMismatchError(
                f"vector {self.concept!r} was built on model {self.model_name!r} (weights fingerprint "
                f"{self.model_fingerprint}) but the loaded model {loaded.name!r} has fingerprint "
                f"{loaded.fingerprint}; rebuild the vector on this model, or pass force=True "
                "(CLI: --force) if you know the weights are compatible"
            )

    # ------------------------------------------------------------------ arithmetic
    def _combine(self, terms: list[tuple[float, Vector]], concept: str) -> Vector:
        import torch

        common = set(self.directions)
        for _, v in terms:
            if v.hidden_size != self.hidden_size:
                raise VectorMismatchError(
                    f"cannot combine vectors of hidden size {self.hidden_size} and {v.hidden_size}")
            if v.model_fingerprint != self.model_fingerprint:
                raise VectorMismatchError(
                    f"cannot combine vectors built on different models ({self.model_name} "
                    f"{self.model_fingerprint} vs {v.model_name} {v.model_fingerprint})")
            common &= set(v.directions)
        if not common:
            raise VectorFileError("the vectors share no layer; arithmetic needs at least one common layer")
        dirs = {}
        for layer in sorted(common):
            total = torch.zeros(self.hidden_size, dtype=torch.float32)
            for w, v in terms:
                total += float(w) * v.directions[layer]
            n = float(total.norm())
            if n < 1e-8:
                raise VectorFileError(f"the combination is zero at layer {layer}; it has no direction")
            dirs[layer] = total / n
        defaults = [layer for layer in self.default_layers if layer in common] or [sorted(common)[0]]
        return Vector(
            directions=dirs, concept=concept, model_name=self.model_name,
            model_fingerprint=self.model_fingerprint, hidden_size=self.hidden_size,
            method="arithmetic", read_position=self.read_position, default_layers=defaults,
            residual_norm={k: v for k, v in self.residual_norm.items() if k in common},
            n_model_layers=self.n_model_layers,
            extra={"terms": [[float(w), v.concept] for w, v in terms]},
        )

    def __neg__(self) -> Vector:
        return self._combine([(-1.0, self)], f"-{self.concept}")

    def __add__(self, other: Vector) -> Vector:
        return self._combine([(1.0, self), (1.0, other)], f"{self.concept}+{other.concept}")

    def __sub__(self, other: Vector) -> Vector:
        return self._combine([(1.0, self), (-1.0, other)], f"{self.concept}-{other.concept}")

    def cosine(self, other: Vector, layer: int) -> float:
        return float(self.direction(layer) @ other.direction(layer))

    # ------------------------------------------------------------------ io
    def metadata(self) -> dict[str, Any]:
        meta = asdict(self)
        meta.pop("directions")
        meta.pop("read_directions")
        meta.pop("warnings")
        meta["format_version"] = FORMAT_VERSION
        meta["residual_norm"] = {str(k): v for k, v in self.residual_norm.items()}
        meta["validation"] = {str(k): v for k, v in self.validation.items()}
        meta["read_validation"] = {str(k): v for k, v in self.read_validation.items()}
        return meta

    def save(self, path: str | Path) -> Path:
        import torch
        from safetensors.torch import save_file

        path = Path(path)
        if self.read_directions and set(self.read_directions) != set(self.directions):
            raise VectorFileError(f"refusing to save: read directions for layers {sorted(self.read_directions)} "
                                  f"but directions for {self.layers}; they must cover the same layers")
        tensors = {}
        for prefix, dirs in (("direction", self.directions), ("read", self.read_directions)):
            for layer, d in dirs.items():
                t = d.detach().to("cpu", torch.float32).contiguous()
                if t.shape != (self.hidden_size,) or not torch.isfinite(t).all():
                    raise VectorFileError(f"refusing to save: {prefix} for layer {layer} has shape "
                                          f"{tuple(t.shape)} or non-finite values")
                tensors[f"{prefix}.{layer}"] = t
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"steerwatch": json.dumps(self.metadata())})
        return path


def _read_header(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise VectorFileError(f"{path} is truncated or not a steerwatch vector file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8 or n > 100_000_000:
            raise VectorFileError(f"{path} is truncated or not a safetensors file (header length {n} "
                                  f"exceeds the file size {size})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise VectorFileError(f"{path} has a corrupt header; it is not a steerwatch vector file") from None
    try:  # valid JSON is not enough: the header must be a safetensors header
        if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
            raise TypeError
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise VectorFileError(f"{path} has a corrupt header; it is not a steerwatch vector file") from None
    if 8 + n + end > size:
        raise VectorFileError(f"{path} is truncated: its header promises {8 + n + end} bytes, the file has {size}")
    return header


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _layer_table(meta: dict[str, Any], key: str, *, required: bool) -> str | None:
    """``key`` is {"<layer>": {"<stat>": number, ...}}; the first violation, or None."""
    table = meta.get(key)
    if table is None and not required:
        return None
    if not isinstance(table, dict):
        return f"{key} must be an object of layer -> statistics, got {type(table).__name__}"
    for k, row in table.items():
        if not (isinstance(k, str) and k.isdigit()):
            return f"{key} has the key {k!r}; keys must be layer numbers"
        if not isinstance(row, dict):
            return f"{key}.{k} must be an object of statistics, got {type(row).__name__}"
        for stat, v in row.items():  # NaN is allowed here (a degenerate validation split writes it)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
                return f"{key}.{k}.{stat} must be a number, got {v!r}"
    return None


def _schema_error(meta: dict[str, Any]) -> str | None:
    """The first field of a vector file's metadata with the wrong type, named; None when it is sound.
    (The schema of :meth:`Vector.metadata`; values are checked further by :func:`load_vector`.)"""
    for key in ("concept", "model_name", "model_fingerprint", "layer_convention", "method", "read_position"):
        if not isinstance(meta[key], str):
            return f"{key} must be a string, got {type(meta[key]).__name__}"
    for key in ("read_method", "library_version", "created_at"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"{key} must be a string, got {type(meta[key]).__name__}"
    if not _is_int(meta["hidden_size"]) or meta["hidden_size"] <= 0:
        return f"hidden_size must be a positive integer, got {meta['hidden_size']!r}"
    if "format_version" in meta and not _is_int(meta["format_version"]):
        return f"format_version must be an integer, got {meta['format_version']!r}"
    n = meta.get("n_model_layers")
    if n is not None and (not _is_int(n) or n <= 0):
        return f"n_model_layers must be a positive integer or null, got {n!r}"
    d = meta["default_layers"]
    if not isinstance(d, list) or not all(_is_int(x) for x in d):
        return f"default_layers must be a list of layer numbers, got {d!r}"
    rs = meta.get("recommended_strength")
    if rs is not None and not _is_num(rs):
        return f"recommended_strength must be a finite number or null, got {rs!r}"
    for key in ("dataset", "extra"):
        if key in meta and not isinstance(meta[key], dict):
            return f"{key} must be an object, got {type(meta[key]).__name__}"
    for key, required in (("residual_norm", True), ("validation", False), ("read_validation", False)):
        bad = _layer_table(meta, key, required=required)
        if bad:
            return bad
    return None


def load_vector(path: str | Path) -> Vector:
    """Load and strictly validate a vector file."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"vector file {path} does not exist")
    header = _read_header(path)
    meta_raw = (header.get("__metadata__") or {}).get("steerwatch")
    if meta_raw is None:
        raise VectorFileError(f"{path} is a safetensors file without steerwatch metadata; "
                              "it was not written by steerwatch (see steerwatch import-gguf for llama.cpp files)")
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError:
        raise VectorFileError(f"{path}: the steerwatch metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise VectorFileError(f"{path}: the steerwatch metadata must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise VectorFileError(f"{path}: metadata lacks required field(s) {', '.join(missing)}")
    wrong = _schema_error(meta)
    if wrong:
        raise VectorFileError(f"{path}: {wrong} (the file's metadata is damaged or was edited; rebuild the vector "
                              "with steerwatch extract)")
    if meta.get("format_version", 1) > FORMAT_VERSION:
        raise VectorFileError(f"{path} has format version {meta['format_version']}; this steerwatch reads "
                              f"up to {FORMAT_VERSION}; upgrade steerwatch")
    if meta["layer_convention"] != LAYER_CONVENTION:
        raise VectorFileError(f"{path} uses layer convention {meta['layer_convention']!r}; "
                              f"steerwatch uses {LAYER_CONVENTION!r}")
    try:
        raw = load_file(str(path))
    except Exception as exc:
        raise VectorFileError(f"{path}: could not read tensors ({exc})") from None
    hidden = int(meta["hidden_size"])
    directions: dict[int, torch.Tensor] = {}
    read_dirs: dict[int, torch.Tensor] = {}
    for key, t in raw.items():
        prefix, _, num = key.partition(".")
        if prefix not in ("direction", "read") or not num.isdigit():
            raise VectorFileError(f"{path}: unexpected tensor {key!r}; expected direction.<layer> or read.<layer>")
        layer = int(num)
        if t.shape != (hidden,):
            raise VectorFileError(f"{path}: tensor {key} has shape {tuple(t.shape)}, expected ({hidden},) "
                                  "from the metadata's hidden_size")
        if not torch.isfinite(t).all():
            raise VectorFileError(f"{path}: tensor {key} contains NaN or infinite values")
        n = float(t.norm())
        if not math.isclose(n, 1.0, rel_tol=1e-3):
            raise VectorFileError(f"{path}: tensor {key} has norm {n:.4g}; directions must be unit vectors")
        (directions if prefix == "direction" else read_dirs)[layer] = t.to(torch.float32)
    if not directions:
        raise VectorFileError(f"{path} holds no directions")
    if read_dirs and set(read_dirs) != set(directions):
        raise VectorFileError(f"{path}: read directions for layers {sorted(read_dirs)} but directions for "
                              f"{sorted(directions)}; they must cover the same layers")
    norms = {int(k): v for k, v in meta["residual_norm"].items()}
    for layer in directions:
        st = norms.get(layer)
        if st is None or not (isinstance(st.get("mean"), (int, float)) and math.isfinite(st["mean"])
                              and st["mean"] > 0):
            raise VectorFileError(f"{path}: residual-norm statistics for layer {layer} are missing or invalid")
    defaults = [int(x) for x in meta["default_layers"]]
    bad = [x for x in defaults if x not in directions]
    if not defaults or bad:
        raise VectorFileError(f"{path}: default layers {defaults} are not among the stored layers {sorted(directions)}")
    return Vector(
        directions=directions, concept=meta["concept"], model_name=meta["model_name"],
        model_fingerprint=meta["model_fingerprint"], hidden_size=hidden, method=meta["method"],
        read_position=meta["read_position"], default_layers=defaults, residual_norm=norms,
        n_model_layers=meta.get("n_model_layers"), layer_convention=meta["layer_convention"],
        dataset=meta.get("dataset", {}), validation={int(k): v for k, v in meta.get("validation", {}).items()},
        recommended_strength=meta.get("recommended_strength"), read_directions=read_dirs,
        read_method=meta.get("read_method"),
        read_validation={int(k): v for k, v in (meta.get("read_validation") or {}).items()},
        library_version=meta.get("library_version", ""),
        created_at=meta.get("created_at", ""), extra=meta.get("extra", {}),
    )
