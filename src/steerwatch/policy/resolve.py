"""A policy resolved against a loaded model: every file it names checked (SHA-256, the model's
weights fingerprint, layers) and loaded, into the :class:`Deployment` the server runs."""
from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SteerwatchError
from ..io import file_sha256
from ..layers import check_layers
from .schema import KeyPolicy, Policy, PolicyError, PolicyFile, VectorPolicy, hash_key

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..steer import SteerSpec
    from ..types import ConditionalMode
    from ..vector import Vector
    from ..watch.detector import Detector


def _checked_file(pf: PolicyFile, field_name: str, rel: str, sha: str) -> Path:
    p = pf.resolve(rel)
    if not p.is_file():
        raise PolicyError(f"{field_name}: file {p} does not exist")
    actual = file_sha256(p)
    if actual != sha:
        raise PolicyError(f"{field_name}: {p} has SHA-256 {actual}, the policy says {sha}; the file changed "
                          "since the policy was written (re-check it and update the hash)")
    return p


@dataclass
class ResolvedDetector:
    detector: Detector
    action: str
    steer: list[SteerSpec] = field(default_factory=list)
    mode: ConditionalMode = "token"


@dataclass
class Deployment:
    """A policy resolved against a loaded model: everything the engine needs."""

    policy: Policy
    policy_sha256: str
    loaded: LoadedModel
    vectors: dict[str, Vector]
    vector_policies: dict[str, VectorPolicy]
    detectors: list[ResolvedDetector]
    base_dir: Path | None = None

    @property
    def served_name(self) -> str:
        return self.policy.served_name or self.loaded.name

    def spec(self, name: str, strength: float, *, layers: list[int] | None = None) -> SteerSpec:
        from ..steer import SteerSpec

        vp = self.vector_policies[name]
        lay = tuple(layers) if layers is not None else (tuple(vp.layers) if vp.layers else None)
        return SteerSpec(vector=self.vectors[name], op=vp.op, strength=float(strength), layers=lay,
                         positions=vp.positions)

    def default_steering(self) -> list[SteerSpec]:
        return [self.spec(v.name, v.strength) for v in self.policy.vectors
                if not (v.op == "add" and v.strength == 0.0)]

    def conditional_steering(self) -> tuple[str | None, list[SteerSpec]]:
        """(detector name, its specs) of the detector whose action is ``steer`` (at most one), else
        (None, []): steering that can switch on during any answer, on top of the request's own."""
        for rd in self.detectors:
            if rd.action == "steer":
                return rd.detector.name, list(rd.steer)
        return None, []

    def key(self, presented: str | None) -> KeyPolicy | None:
        """The key entry matching a presented API key (constant-time compare), else None."""
        if presented is None:
            return None
        digest = hash_key(presented)
        found = None
        for k in self.policy.keys:
            if hmac.compare_digest(k.sha256, digest):
                found = k
        return found


def resolve_policy(pf: PolicyFile, loaded: LoadedModel) -> Deployment:
    """Check every referenced file (hashes, model fingerprint, layers) and build the deployment."""
    from ..vector import check_residual_norm, load_vector
    from ..watch.detector import load_detector

    pol = pf.policy
    if pol.model_fingerprint and pol.model_fingerprint != loaded.fingerprint:
        raise PolicyError(f"model_fingerprint: the policy expects weights {pol.model_fingerprint}, model "
                          f"{loaded.name!r} has {loaded.fingerprint}")
    vectors: dict[str, Vector] = {}
    for i, vp in enumerate(pol.vectors):
        where = f"vectors.{i} ({vp.name})"
        p = _checked_file(pf, where, vp.path, vp.sha256)
        try:
            vec = load_vector(p)
            vec.check_model(loaded)
            check_residual_norm(vec, loaded)
        except SteerwatchError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        vectors[vp.name] = vec
    dep = Deployment(policy=pol, policy_sha256=pf.sha256, loaded=loaded, vectors=vectors,
                     vector_policies={v.name: v for v in pol.vectors}, detectors=[],
                     base_dir=pf.path.parent if pf.path else None)
    for i, vp in enumerate(pol.vectors):
        try:
            # the layers exist in the vector (SteerSpec checks) and in the model
            check_layers(dep.spec(vp.name, vp.strength).resolved_layers, loaded.n_layers)
        except SteerwatchError as exc:
            raise PolicyError(f"vectors.{i} ({vp.name}): {exc}") from None
    for i, dp in enumerate(pol.detectors):
        where = f"detectors.{i} ({dp.name})"
        p = _checked_file(pf, where, dp.path, dp.sha256)
        try:
            det = load_detector(p)
            det.vector.check_model(loaded)
            check_residual_norm(det.vector, loaded)
        except SteerwatchError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        det.name = dp.name
        if dp.threshold is not None:
            det.threshold = float(dp.threshold)
        if dp.action in ("flag", "block") and det.threshold is None:
            raise PolicyError(f"{where}: action {dp.action!r} needs a threshold; calibrate the detector "
                              "(steerwatch calibrate) or set threshold: in the policy")
        specs = [dep.spec(ref.vector, ref.strength) for ref in dp.steer]
        if dp.action == "steer" and dp.mode == "prompt":
            raise PolicyError(f"{where}: mode 'prompt' is not supported by the server (it generates from token ids, "
                              "and the whole-answer decision is calibrated on chat messages); use mode: token, "
                              "or steerwatch generate --steer-if ... --if-mode prompt in-process")
        if dp.action == "steer":
            key = "prompt_threshold" if dp.mode == "prompt" else "trigger_threshold"
            if det.calibration.get(key) is None:
                raise PolicyError(f"{where}: action 'steer' in mode {dp.mode!r} needs the detector's {key}; "
                                  "run steerwatch calibrate on it")
        dep.detectors.append(ResolvedDetector(detector=det, action=dp.action, steer=specs, mode=dp.mode))
    return dep
