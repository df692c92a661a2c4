"""llama.cpp control vectors: the GGUF files that ``llama-cli``/``llama-server --control-vector`` read.

The format, as llama.cpp reads and applies it (read in ggml-org/llama.cpp; see docs/interop.md):

* ``common/common.cpp``, ``common_control_vector_load_one``: every tensor must be named
  ``direction.<N>``, be F32 and 1-D, and all must have the same length n_embd; N = 0 is refused
  ("invalid (zero) direction tensor layer index") and any other tensor name makes it skip the
  whole file. ``direction.N`` goes to buffer offset ``(N - 1) * n_embd``, multiplied by the file's
  scale (1.0 for ``--control-vector``, SCALE for ``--control-vector-scaled``); tensors for the same
  N, in one file or several, are summed. No metadata key is read.
* ``src/llama-adapter.cpp``, ``llama_adapter_cvec``: ``tensors[0]`` is always null ("there's never
  a tensor for layer 0"); ``tensors[il]`` for ``il = 1 .. n_layer - 1`` is filled from offset
  ``(il - 1) * n_embd``. The two ``- 1`` cancel: ``tensors[il]`` holds ``direction.il``.
* ``src/models/*.cpp`` (e.g. ``qwen2.cpp``): at the end of decoder block ``il`` (0-based), after
  the FFN residual add, ``cur = build_cvec(cur, il)`` -> ``cvec->apply_to(ctx, cur, il)`` adds
  ``tensors[il]`` to every token's residual; the result is ``l_out`` of block ``il``.

So ``direction.N`` is added to the output of decoder block N, which is steerwatch layer N
(``layers.LAYER_CONVENTION``): the numbers map one to one, and steerwatch layer 0 has no slot.

The tensors are raw residual-space pushes (no normalisation on load). Export writes
``strength * residual_norm[layer] * unit_direction``, the exact push ``steerwatch generate --steer
v.sv:+strength`` adds, so ``--control-vector FILE`` reproduces it. Writers agree on metadata that
llama.cpp ignores: ``general.architecture = "controlvector"``, ``controlvector.model_hint``,
``controlvector.layer_count``; steerwatch adds ``steerwatch.metadata`` (the vector's provenance as
JSON) and ``steerwatch.strength`` so that an import restores the strength units.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import LayerResolutionError, SteerSpecError, VectorFileError, VectorMismatchError
from ..io import file_sha256
from ..layers import LAYER_CONVENTION

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..models import LoadedModel
    from ..vector import Vector

ARCH = "controlvector"
KEY_MODEL_HINT = f"{ARCH}.model_hint"
KEY_LAYER_COUNT = f"{ARCH}.layer_count"
KEY_META = "steerwatch.metadata"
KEY_STRENGTH = "steerwatch.strength"
IMPORTED_METHOD = "gguf_import"
_NAME = re.compile(r"direction\.(\d+)")
_NORM_RTOL = 1e-4  # |raw tensor| vs |strength| * residual norm, for trusting steerwatch metadata


@dataclass
class ControlVectorFile:
    """A control-vector GGUF as llama.cpp would apply it at scale 1.0.

    ``pushes[layer]`` is the float32 tensor (n_embd,) added to the output of decoder block
    ``layer`` (= steerwatch layer ``layer``); tensors with the same index are summed, as llama.cpp
    does."""

    path: Path
    pushes: dict[int, torch.Tensor]
    n_embd: int
    architecture: str | None
    model_hint: str | None
    layer_count: int | None
    sha256: str
    steerwatch_meta: dict[str, Any] | None = None
    strength: float | None = None
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        layers = sorted(self.pushes)
        span = f"layers {layers[0]}-{layers[-1]}" if layers else "no layers"
        strength = "" if self.strength is None else f", strength {self.strength:+g}"
        return (f"<ControlVectorFile {self.path.name!r}: {len(layers)} directions ({span}), n_embd {self.n_embd}, "
                f"architecture {self.architecture}{strength}>")

    @property
    def layers(self) -> list[int]:
        return sorted(self.pushes)


# ---------------------------------------------------------------------------------------- export
def export_layers(vector: Vector, layers: Sequence[int] | Literal["all"] | None) -> list[int]:
    """The layers an export writes: ``None`` -> the vector's default layers, ``"all"`` -> every
    stored layer llama.cpp can address (all but 0), else the given ones. Layer 0 given explicitly
    (or among the defaults) is an error, never silently dropped: llama.cpp has no slot for it."""
    if layers == "all":
        chosen = [layer for layer in vector.layers if layer != 0]
        if not chosen:
            raise LayerResolutionError(f"vector {vector.concept!r} has only layer 0, which llama.cpp cannot express")
        return chosen
    chosen = sorted(set(vector.default_layers if layers is None else (int(x) for x in layers)))
    if not chosen:
        raise LayerResolutionError("no layers to export; give at least one layer")
    missing = [layer for layer in chosen if layer not in vector.directions]
    if missing:
        raise LayerResolutionError(f"vector {vector.concept!r} has no direction for layer(s) {missing}; "
                                   f"it has layers {vector.layers}")
    if 0 in chosen:
        where = "the vector's default layers include" if layers is None else "you asked for"
        raise LayerResolutionError(
            f"{where} layer 0, which a llama.cpp control vector cannot express: direction.N is added to the "
            "output of block N and llama.cpp refuses direction.0 (there is no slot before block 1). Export "
            "layers 1 and up (e.g. --layers 1,2 or --all-layers, which leaves layer 0 out)")
    return chosen


def export_control_vector(vector: Vector, path: str | Path, *, strength: float | None = None,
                          layers: Sequence[int] | Literal["all"] | None = None,
                          model_hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector; returns the path.

    Each ``direction.<layer>`` tensor is ``strength * residual_norm[layer] * direction[layer]``
    (float32), the push steerwatch's ``add`` applies at that strength, so llama.cpp's
    ``--control-vector FILE`` reproduces ``--steer v.sv:+strength`` and
    ``--control-vector-scaled FILE:K`` gives K times it. ``strength`` defaults to the vector's
    ``recommended_strength``; without one it must be given. ``layers``: None (the vector's
    default layers), ``"all"`` (every layer but 0), or a list. ``model_hint`` is informative only
    (llama.cpp never reads it); default: the vector's model name."""
    import gguf
    import numpy as np

    if strength is None:
        strength = vector.recommended_strength
        if strength is None:
            raise SteerSpecError(
                f"vector {vector.concept!r} has no recommended strength, so the export needs one: pass "
                "strength=... (CLI: --strength 0.02). The file stores the push itself (strength x residual "
                "norm x direction); llama.cpp's --control-vector-scaled FILE:K then multiplies it by K")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) \
            or strength == 0:
        raise SteerSpecError(f"strength must be a finite non-zero number, got {strength!r}")
    strength = float(strength)
    chosen = export_layers(vector, layers)
    path = Path(path)
    if path.is_dir():
        raise VectorFileError(f"{path} is a directory; give a file name such as {vector.concept}.gguf")
    arrays = {}
    for layer in chosen:
        u = vector.direction(layer).detach().to("cpu").double()
        push = (u * (strength * vector.norm(layer))).float().numpy()
        if push.shape != (vector.hidden_size,) or not np.isfinite(push).all():
            raise VectorFileError(f"refusing to export: the push for layer {layer} has shape {push.shape} or "
                                  "non-finite values")
        arrays[layer] = push
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), ARCH)
    try:
        writer.add_string(KEY_MODEL_HINT, model_hint or vector.model_name)
        writer.add_uint32(KEY_LAYER_COUNT, len(arrays))
        writer.add_string(KEY_META, json.dumps(vector.metadata()))
        writer.add_float64(KEY_STRENGTH, strength)
        for layer, arr in arrays.items():
            writer.add_tensor(f"direction.{layer}", arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


# ---------------------------------------------------------------------------------------- read
def _field(reader: Any, key: str) -> Any:
    """A scalar or string metadata value (None if absent or an array), read from the field's raw
    parts so that it works with old gguf releases too (``ReaderField.contents`` is recent)."""
    import gguf

    f = reader.get_field(key)
    if f is None or not f.types or f.types[0] == gguf.GGUFValueType.ARRAY or not f.data:
        return None
    part = f.parts[f.data[0]]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    return part.tolist()[0]


def read_control_vector(path: str | Path) -> ControlVectorFile:
    """Read and validate a control-vector GGUF the way llama.cpp's loader does, and stricter:
    the architecture, when present, must be ``controlvector``; every tensor must be a finite F32
    ``direction.<N>`` with N >= 1 and one common length."""
    import gguf
    import numpy as np
    import torch

    path = Path(path)
    if not path.is_file():
        raise VectorFileError(f"control vector file {path} does not exist")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise VectorFileError(f"{path} is not a GGUF file (it does not start with the GGUF magic); "
                              "a llama.cpp control vector is a .gguf file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/struct.error/IndexError on broken files
        raise VectorFileError(f"{path} is a corrupt or truncated GGUF file ({exc})") from None
    arch = _field(reader, "general.architecture")
    if arch is not None and arch != ARCH:
        raise VectorFileError(f"{path} is a GGUF file with general.architecture {arch!r}, not a control vector "
                              f"({ARCH!r}); is it a model file? Give the .gguf written by a control-vector tool "
                              "(steerwatch export-gguf, llama-cvector-generator, repeng)")
    notes: list[str] = []
    if arch is None:
        notes.append("the file has no general.architecture; read as a control vector because all its tensors "
                     "are direction.<N>")
    pushes: dict[int, np.ndarray] = {}
    n_embd: int | None = None
    for t in reader.tensors:
        m = _NAME.fullmatch(t.name)
        if m is None:
            raise VectorFileError(f"{path}: unexpected tensor {t.name!r}; a control vector holds only "
                                  "direction.<layer> tensors (llama.cpp skips a file with any other tensor)")
        layer = int(m.group(1))
        if layer == 0:
            raise VectorFileError(f"{path}: tensor {t.name!r} has layer index 0, which llama.cpp refuses "
                                  "('invalid (zero) direction tensor layer index') and then skips the whole file; "
                                  "direction.N is added to the output of block N, for N >= 1")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise VectorFileError(f"{path}: tensor {t.name!r} has type {t.tensor_type.name}; llama.cpp reads only "
                                  "F32 direction tensors")
        dims = [int(d) for d in t.shape]
        if not dims or any(d != 1 for d in dims[1:]):
            raise VectorFileError(f"{path}: tensor {t.name!r} has shape {dims}; a direction is 1-D (n_embd,)")
        if n_embd is None:
            n_embd = dims[0]
        elif dims[0] != n_embd:
            raise VectorFileError(f"{path}: tensor {t.name!r} has {dims[0]} values but earlier tensors have "
                                  f"{n_embd}; all directions of a control vector have length n_embd")
        arr = np.array(t.data, dtype=np.float32, copy=True).reshape(-1)
        if not np.isfinite(arr).all():
            raise VectorFileError(f"{path}: tensor {t.name!r} contains NaN or infinite values")
        if layer in pushes:
            notes.append(f"several tensors for layer {layer}; summed, as llama.cpp does")
            pushes[layer] = pushes[layer] + arr
        else:
            pushes[layer] = arr
    if not pushes:
        raise VectorFileError(f"{path} holds no direction tensors; llama.cpp would apply nothing")
    hint = _field(reader, KEY_MODEL_HINT)
    count = _field(reader, KEY_LAYER_COUNT)
    meta_raw = _field(reader, KEY_META)
    strength = _field(reader, KEY_STRENGTH)
    del reader  # release the memory map
    meta = None
    if meta_raw is not None:
        try:
            meta = json.loads(meta_raw)
            if not isinstance(meta, dict):
                raise ValueError
        except (ValueError, TypeError):
            notes.append(f"{KEY_META} is not a JSON object; ignored")
            meta = None
    return ControlVectorFile(
        path=path, pushes={k: torch.from_numpy(v) for k, v in sorted(pushes.items())}, n_embd=int(n_embd or 0),
        architecture=arch, model_hint=hint if isinstance(hint, str) else None,
        layer_count=int(count) if isinstance(count, (int, float)) else None,
        sha256=file_sha256(path), steerwatch_meta=meta,
        strength=float(strength) if isinstance(strength, (int, float)) else None, notes=notes,
    )


# ---------------------------------------------------------------------------------------- import
def _steerwatch_norms(cv: ControlVectorFile, layers: list[int]) -> dict[int, dict[str, float]] | None:
    """The residual-norm rows of a steerwatch export, if its metadata is complete and agrees with
    the tensors (|push| = |strength| * residual norm at every layer); else None."""
    meta, s = cv.steerwatch_meta, cv.strength
    if meta is None or s is None or s == 0 or meta.get("layer_convention") != LAYER_CONVENTION:
        return None
    rows = meta.get("residual_norm")
    if not isinstance(rows, dict):
        return None
    out = {}
    for layer in layers:
        row = rows.get(str(layer))
        if not isinstance(row, dict):
            return None
        mean = row.get("mean")
        if not isinstance(mean, (int, float)) or not math.isfinite(mean) or mean <= 0:
            return None
        if not math.isclose(float(cv.pushes[layer].double().norm()), abs(s) * mean, rel_tol=_NORM_RTOL):
            return None
        out[layer] = dict(row)
    return out


def import_control_vector(path: str | Path, loaded: LoadedModel, *, concept: str | None = None,
                          force: bool = False) -> Vector:
    """Read a llama.cpp control vector into a steerwatch :class:`Vector` for ``loaded``.

    Layer N of the vector is the file's ``direction.N`` (same block output, see the module doc).
    Directions are the tensors normalised to unit length; the vector reproduces the file's push
    exactly at its ``recommended_strength``:

    * a file written by ``export_control_vector`` (its ``steerwatch.*`` metadata agrees with the
      tensors) gets back its residual norms, provenance and export strength, so strengths keep
      their steerwatch meaning; exported from other weights (fingerprint) is an error unless
      ``force``;
    * any other file (llama-cvector-generator, repeng, ...) has no residual-norm statistics: each
      layer's "residual norm" is set to the tensor's own norm and the recommended strength to 1.0,
      so steerwatch strength s equals llama.cpp scale s (``extra["gguf_import"]["strength_unit"]``
      says which case applied).

    The model supplies identity (name, fingerprint) and the checks: n_embd must equal its hidden
    size and every N must be below its layer count."""
    from ..vector import Vector

    cv = read_control_vector(path)
    if cv.n_embd != loaded.hidden_size:
        raise VectorMismatchError(f"{cv.path}: the control vector has n_embd {cv.n_embd} but model {loaded.name!r} "
                                  f"has hidden size {loaded.hidden_size}; it was made for another model")
    too_deep = [layer for layer in cv.layers if layer >= loaded.n_layers]
    if too_deep:
        raise VectorMismatchError(f"{cv.path}: the control vector has direction.{too_deep[0]} but model "
                                  f"{loaded.name!r} has {loaded.n_layers} layers (valid 1..{loaded.n_layers - 1}); "
                                  "it was made for another model (llama.cpp would silently ignore those layers)")
    notes = list(cv.notes)
    layers = []
    for layer in cv.layers:
        if float(cv.pushes[layer].norm()) == 0.0:
            notes.append(f"direction.{layer} is all zeros (adds nothing in llama.cpp); left out")
        else:
            layers.append(layer)
    if not layers:
        raise VectorFileError(f"{cv.path}: every direction tensor is zero; there is nothing to import")
    norms = _steerwatch_norms(cv, layers)
    if cv.steerwatch_meta is not None and norms is None:
        notes.append("the steerwatch metadata does not match the tensors (edited after export?); "
                     "imported as a foreign control vector")
    info: dict[str, Any] = {"file": cv.path.name, "sha256": cv.sha256, "model_hint": cv.model_hint,
                            "layer_count": cv.layer_count, "notes": notes}
    pushes = {layer: cv.pushes[layer].double() for layer in layers}
    if norms is not None:
        meta = cv.steerwatch_meta or {}
        s = float(cv.strength or 0.0)
        if meta.get("model_fingerprint") != loaded.fingerprint and not force:
            raise VectorMismatchError(
                f"{cv.path} was exported from model {meta.get('model_name')!r} (weights fingerprint "
                f"{meta.get('model_fingerprint')}) but the loaded model {loaded.name!r} has fingerprint "
                f"{loaded.fingerprint}; import it with the model it was built on, or pass force=True "
                "(CLI: --force) if you know the weights are compatible")
        sign = 1.0 if s > 0 else -1.0
        directions = {layer: (sign * p / p.norm()).float() for layer, p in pushes.items()}
        info.update(strength_unit="residual_norm", exported_strength=s,
                    source_default_layers=meta.get("default_layers"),
                    exported_from={"model_name": meta.get("model_name"),
                                   "model_fingerprint": meta.get("model_fingerprint")})
        validation = {int(k): v for k, v in (meta.get("validation") or {}).items() if int(k) in directions}
        extra = dict(meta.get("extra") or {})
        extra["gguf_import"] = info
        return Vector(
            directions=directions, concept=concept or str(meta.get("concept") or cv.path.stem),
            model_name=loaded.name, model_fingerprint=loaded.fingerprint, hidden_size=loaded.hidden_size,
            method=str(meta.get("method") or IMPORTED_METHOD),
            read_position=str(meta.get("read_position") or "unknown"),
            default_layers=list(layers), residual_norm=norms, n_model_layers=loaded.n_layers,
            dataset=dict(meta.get("dataset") or {}), validation=validation, recommended_strength=s, extra=extra,
        )
    info.update(strength_unit="gguf_tensor_norm",
                note="no residual-norm statistics in the file: each layer's residual_norm is the tensor's own "
                     "norm, so strength s here equals llama.cpp scale s (1.0 = the file as llama.cpp applies it)")
    return Vector(
        directions={layer: (p / p.norm()).float() for layer, p in pushes.items()},
        concept=concept or cv.path.stem, model_name=loaded.name, model_fingerprint=loaded.fingerprint,
        hidden_size=loaded.hidden_size, method=IMPORTED_METHOD, read_position="unknown", default_layers=list(layers),
        residual_norm={layer: {"mean": float(p.norm()), "std": 0.0, "n_tokens": 0} for layer, p in pushes.items()},
        n_model_layers=loaded.n_layers,
        dataset={"name": cv.path.stem, "source": f"llama.cpp control vector {cv.path.name}", "sha256": cv.sha256},
        recommended_strength=1.0, extra={"gguf_import": info},
    )
