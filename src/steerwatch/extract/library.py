"""Several concepts at once on one model: each concept's per-layer validation AUROC (the
model-side part of ``steerwatch data check --model``) and the cosine similarity between concept
vectors (which concepts are near-duplicates of each other?)."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from .build import LayerRow, band_layers, build_vector, layer_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..vector import Vector


@dataclass
class ConceptQuality:
    concept: str
    best_layer: int
    best_auroc: float
    default_layers: list[int]
    rows: list[LayerRow]
    n_train: int
    n_val: int
    method: str = ""
    read_method: str | None = None
    best_read_layer: int | None = None
    best_read_auroc: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"concept": self.concept, "method": self.method, "best_layer": self.best_layer,
                "best_auroc": self.best_auroc, "read_method": self.read_method,
                "best_read_layer": self.best_read_layer, "best_read_auroc": self.best_read_auroc,
                "default_layers": self.default_layers, "n_train": self.n_train, "n_val": self.n_val,
                "layers": [r.as_dict() for r in self.rows]}


def builtin_cache_path(loaded: LoadedModel, concept: str, *, cache_root: Path | None = None) -> Path:
    """Where :func:`builtin_vector` keeps a built-in concept's vector for ``loaded``:
    ``<cache>/vectors/<model fingerprint>/<concept>-<key>.sv``, the key a hash of the concept's
    data, its card's methods and the steerwatch version (cache: $STEERWATCH_CACHE or
    ~/.cache/steerwatch, as for models)."""
    from .. import __version__
    from ..data import load_concept
    from ..models import cache_dir

    data = load_concept(concept)
    key = hashlib.sha256(json.dumps([data.sha256, data.default_method, data.default_read_method,
                                     __version__]).encode()).hexdigest()[:12]
    root = Path(cache_root) if cache_root is not None else cache_dir()
    return root / "vectors" / loaded.fingerprint / f"{concept}-{key}.sv"


def builtin_vector(loaded: LoadedModel, concept: str, *, cache_root: Path | None = None, progress: bool = False,
                   log: Callable[[str], None] | None = None) -> tuple[Vector, list[LayerRow], Path]:
    """A built-in concept's vector on ``loaded``, built as ``steerwatch extract CONCEPT`` builds it
    (the card's methods, read position auto, layers auto) once and then read from the cache
    (:func:`builtin_cache_path`); a corrupt or foreign cache entry is rebuilt, never trusted.
    Returns the vector, its per-layer validation rows and the cache path."""
    from ..data import load_concept
    from ..vector import load_vector

    path = builtin_cache_path(loaded, concept, cache_root=cache_root)
    if path.is_file():
        try:
            vec = load_vector(path)
            vec.check_model(loaded)
            return vec, layer_rows(vec), path
        except SteerwatchError as exc:
            if log:
                log(f"rebuilding the cached {concept} vector ({exc})")
    if log:
        log(f"building the built-in {concept} vector on {loaded.name} (once; cached at {path})")
    vec, rows = build_vector(loaded, load_concept(concept), progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")  # concurrent builders never see half a file
    vec.save(tmp)
    tmp.replace(path)
    return vec, rows, path


def build_library(loaded: LoadedModel, sources: Sequence[str], *, method: str | None = None,
                  batch_size: int = 8, save_dir: str | Path | None = None, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> tuple[dict[str, Vector], list[ConceptQuality]]:
    """Build one vector per source (built-in concept name or pair file) with the default settings
    (``method`` None: each concept's own methods, read directions included) and report each one's
    per-layer validation. With ``save_dir`` the vectors are written there as ``<concept>.sv``."""
    from ..data import load_contrast

    sets = [load_contrast(s) for s in sources]  # all data is validated before any forward pass
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise SteerwatchError(f"two sources share a name ({', '.join(names)}); rename a file")
    vectors: dict[str, Vector] = {}
    quality: list[ConceptQuality] = []
    for data in sets:
        if log:
            log(f"{data.name}: {len(data.train)} train / {len(data.val)} val pairs")
        vec, rows = build_vector(loaded, data, method=method, batch_size=batch_size, progress=progress)
        by_layer = {r.layer: r for r in rows}
        best = by_layer[vec.best_layer()]
        rbest = by_layer[vec.best_layer(read=True)] if vec.read_method else None
        vectors[data.name] = vec
        quality.append(ConceptQuality(concept=data.name, best_layer=best.layer, best_auroc=best.auroc,
                                      default_layers=vec.default_layers, rows=rows, n_train=len(data.train),
                                      n_val=len(data.val), method=vec.method, read_method=vec.read_method,
                                      best_read_layer=rbest.layer if rbest else None,
                                      best_read_auroc=rbest.read_auroc if rbest else None))
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
            vec.save(Path(save_dir) / f"{data.name}.sv")
    return vectors, quality


def cosine_matrix(vectors: dict[str, Vector], *, layers: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Pairwise cosine similarity between vectors, averaged over ``layers`` (default: the
    middle band of depth that ``--layers auto`` searches). Tidy rows ``{a, b, cosine, layers}``
    for every ordered pair, the diagonal included."""
    names = list(vectors)
    if not names:
        return []
    first = vectors[names[0]]
    if layers is None:
        layers = band_layers(first.n_model_layers or len(first.layers))
    for n in names:
        missing = [layer for layer in layers if layer not in vectors[n].layers]
        if missing:
            raise SteerwatchError(f"vector {n!r} has no direction at layer(s) {missing}; "
                                  f"it has {vectors[n].layers}. Pass --layers with layers all vectors share")
        if vectors[n].hidden_size != first.hidden_size:
            raise SteerwatchError(f"vector {n!r} has hidden size {vectors[n].hidden_size}, {names[0]!r} has "
                                  f"{first.hidden_size}: vectors from different models cannot be compared")
    rows = []
    for a in names:
        for b in names:
            cos = sum(vectors[a].cosine(vectors[b], layer) for layer in layers) / len(layers)
            rows.append({"a": a, "b": b, "cosine": cos, "layers": list(layers)})
    return rows
