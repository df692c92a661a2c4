"""A detector: a concept vector read at one layer, with a sign (which end of the projection is the
problem), an aggregation rule for whole responses, and (once calibrated) a threshold.

Score of a token = ``sign * (h_L . u_L)``: the projection of the token's residual stream at layer
``L`` (block-output convention) on the vector's unit read direction (its ``read.<layer>``
directions when the file has them, e.g. ``lda`` for cheating; else the steering direction),
signed so that *high means the problem is present*. For vectors whose positive side is the
problem (sycophancy, cheating, manipulation, concealment, distress) ``sign = +1``; for vectors
whose positive side is the good behaviour (honesty, conscientiousness) ``sign = -1``, so that the
honesty vector becomes a deception detector.

Response score (``aggregate``): ``mean`` over the assistant's tokens is the default, because the
vectors are extracted and validated on the mean over completion tokens, so the mean is the
quantity whose separation was measured; ``max`` (the highest token) reacts to one bad line in a
long answer but is noisier; ``last`` is the last assistant token; ``max_turn`` is the highest
per-message mean over the assistant's turns (agent trajectories).

Detector files are JSON next to their vector (``honesty.det.json``); they name the vector file
and check its hash on load.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError, VectorFileError
from ..types import AGGREGATES

if TYPE_CHECKING:  # pragma: no cover
    from ..vector import Vector

GOOD_SIDE_CONCEPTS = ("honesty", "conscientiousness")
DETECTOR_FORMAT = "steerwatch-detector/1"


def aggregate_scores(vals: Sequence[float], how: str) -> float:
    """``mean``, ``max`` or ``last`` of a non-empty list of token scores."""
    if how == "max":
        return max(vals)
    if how == "last":
        return vals[-1]
    return sum(vals) / len(vals)


def default_sign(concept: str) -> int:
    return -1 if concept in GOOD_SIDE_CONCEPTS else 1


@dataclass
class Detector:
    vector: Vector
    layer: int
    sign: int = 1
    aggregate: str = "mean"
    name: str = ""
    threshold: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)  # fpr_target, achieved_fpr, n, sha256, source
    vector_path: str | None = None

    def __post_init__(self) -> None:
        if self.sign not in (1, -1):
            raise SteerwatchError(f"detector sign must be +1 or -1, got {self.sign!r}")
        if self.aggregate not in AGGREGATES:
            raise SteerwatchError(f"unknown aggregate {self.aggregate!r}; valid: {', '.join(AGGREGATES)}")
        if self.layer not in self.vector.directions:
            raise SteerwatchError(f"vector {self.vector.concept!r} has no direction at layer {self.layer}; "
                                  f"it has {self.vector.layers}")
        if not self.name:
            self.name = self.vector.concept

    def __repr__(self) -> str:
        """One line: the vector's numbers stay out of it."""
        thr = "uncalibrated" if self.threshold is None else f"threshold {self.threshold:.4g}" + (
            f" (FPR {self.calibration['fpr_target']:g})" if "fpr_target" in self.calibration else "")
        sign = "+" if self.sign > 0 else "-"
        return (f"<Detector {self.name!r}: {sign}{self.vector.concept} at layer {self.layer}, {self.aggregate}, "
                f"{thr}>")

    def _repr_html_(self) -> str:
        import html

        return html.escape(repr(self))

    @classmethod
    def from_vector(cls, vector: Vector, *, layer: int | None = None, sign: int | None = None,
                    aggregate: str = "mean", name: str | None = None, vector_path: str | None = None) -> Detector:
        return cls(vector=vector, layer=vector.best_layer(read=True) if layer is None else layer,
                   sign=default_sign(vector.concept) if sign is None else sign, aggregate=aggregate,
                   name=name or vector.concept, vector_path=vector_path)

    def unit(self) -> Any:
        return self.vector.read_direction(self.layer) * self.sign  # (d,)

    @property
    def calibrated(self) -> bool:
        return self.threshold is not None

    def response(self, token_scores: Sequence[float]) -> float | None:
        """One response's score from its token scores, by this detector's aggregate (``max_turn``,
        the highest per-message mean, is the mean for a single response); None when nothing was
        scored. The one place a generated answer's score is decided."""
        if not token_scores:
            return None
        return aggregate_scores(token_scores, "mean" if self.aggregate == "max_turn" else self.aggregate)

    def flagged(self, score: float | None) -> bool:
        """Whether a response score crosses the calibrated threshold: never for an uncalibrated
        detector or an unscored response. The one place a flag is decided."""
        return self.threshold is not None and score is not None and score > self.threshold

    def flag(self, score: float) -> bool:
        if self.threshold is None:
            raise SteerwatchError(f"detector {self.name!r} is not calibrated; run `steerwatch calibrate` first")
        return score > self.threshold

    # ------------------------------------------------------------ files
    def to_json(self) -> dict[str, Any]:
        return {"format": DETECTOR_FORMAT, "name": self.name, "concept": self.vector.concept,
                "vector": self.vector_path, "vector_sha256": _vector_hash(self.vector), "layer": self.layer,
                "sign": self.sign, "aggregate": self.aggregate, "threshold": self.threshold,
                "calibration": self.calibration, "model_name": self.vector.model_name,
                "model_fingerprint": self.vector.model_fingerprint}

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        meta = self.to_json()
        if self.vector_path:  # store the vector path relative to the detector file when possible
            vp = Path(self.vector_path).resolve()
            try:
                meta["vector"] = str(vp.relative_to(p.resolve().parent))
            except ValueError:
                meta["vector"] = str(vp)
        p.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        return p


def _vector_hash(vector: Vector) -> str:
    h = hashlib.sha256()
    for layer in vector.layers:
        h.update(vector.direction(layer).float().numpy().tobytes())
    for layer in sorted(vector.read_directions):
        h.update(b"read")
        h.update(vector.read_directions[layer].float().numpy().tobytes())
    return h.hexdigest()


def load_detector(path: str | Path) -> Detector:
    """Load a detector file (and its vector). A plain vector file (.sv) is accepted too: it becomes
    an uncalibrated detector at the vector's best validation layer."""
    from ..vector import load_vector

    p = Path(path)
    if p.suffix == ".sv":
        return Detector.from_vector(load_vector(p), vector_path=str(p))
    if not p.is_file():
        raise VectorFileError(f"{p}: detector file does not exist")
    try:
        meta = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VectorFileError(f"{p}: not a detector file (invalid JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != DETECTOR_FORMAT:
        raise VectorFileError(f"{p}: not a steerwatch detector file (format {DETECTOR_FORMAT!r} expected)")
    for key in ("vector", "layer", "sign", "aggregate"):
        if key not in meta:
            raise VectorFileError(f"{p}: detector file lacks the field {key!r}")
    vp = Path(meta["vector"])
    if not vp.is_absolute():
        vp = p.resolve().parent / vp
    vector = load_vector(vp)
    if meta.get("vector_sha256") and meta["vector_sha256"] != _vector_hash(vector):
        raise VectorFileError(f"{p}: the vector file {vp} changed since this detector was calibrated; "
                              "calibrate again")
    return Detector(vector=vector, layer=int(meta["layer"]), sign=int(meta["sign"]), aggregate=meta["aggregate"],
                    name=meta.get("name") or vector.concept, threshold=meta.get("threshold"),
                    calibration=meta.get("calibration") or {}, vector_path=str(vp))
