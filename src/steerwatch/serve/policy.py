"""The deployment policy: a YAML file that says which model is served, which vectors are dialled
in (and how far a request may move them), which detectors watch every response and what each
does when it fires, the limits, the API keys and their rights, and where events are stored.

Validated in two steps: :func:`load_policy` checks the file's schema (Pydantic; every error names
its field) and :func:`resolve_policy` checks the files it refers to (SHA-256 of every vector and
detector file, each vector against the served model's weights fingerprint). Paths are relative
to the policy file. See docs/serve.md for a complete example.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SteerwatchError
from ..io import file_sha256
from ..layers import check_layers

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..steer import SteerSpec
    from ..types import ConditionalMode
    from ..vector import Vector
    from ..watch.detector import Detector

ACTIONS = ("log", "flag", "steer", "block")


class PolicyError(SteerwatchError):
    """The policy file is invalid or refers to files that do not match it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VectorPolicy(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    op: Literal["add", "ablate", "clamp"] = "add"
    strength: float = 0.0  # applied to every request unless the request overrides steering
    layers: list[int] | None = None  # default: the vector's default layers
    positions: Literal["all", "prompt", "generated"] = "all"
    # bound on per-request strengths; working doses on the embedded model are 0.02-0.04 (over 6 layers)
    max_abs_strength: float = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _bound(self) -> VectorPolicy:
        if self.op == "add" and abs(self.strength) > self.max_abs_strength:
            raise ValueError(f"strength {self.strength} exceeds max_abs_strength {self.max_abs_strength}")
        return self


class SteerRef(_Strict):
    vector: str
    strength: float


class DetectorPolicy(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    path: str  # a NAME.det.json file (steerwatch calibrate writes them)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    action: Literal["log", "flag", "steer", "block"] = "flag"
    threshold: float | None = None  # default: the detector file's calibrated threshold
    steer: list[SteerRef] = Field(default_factory=list)  # action "steer": what to switch on
    mode: Literal["token", "prompt"] = "token"  # action "steer": when to switch it on

    @model_validator(mode="after")
    def _steer(self) -> DetectorPolicy:
        if self.action == "steer" and not self.steer:
            raise ValueError("action 'steer' needs a 'steer' list, e.g. steer: [{vector: honesty, strength: 0.1}]")
        if self.action != "steer" and self.steer:
            raise ValueError(f"'steer' is only used with action 'steer' (this detector's action is {self.action!r})")
        return self


class Limits(_Strict):
    max_tokens: int = Field(512, ge=1)  # a request may ask for at most this many new tokens
    default_max_tokens: int = Field(128, ge=1)
    max_prompt_tokens: int = Field(4096, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_batch: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(10.0, ge=0, le=5000)
    max_combined_strength: float = Field(0.5, gt=0)  # sum of |strength| of the vectors dialled together
    default_temperature: float = Field(0.0, ge=0, le=2)  # when a request gives none: 0 = greedy

    @model_validator(mode="after")
    def _defaults(self) -> Limits:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"default_max_tokens {self.default_max_tokens} exceeds max_tokens {self.max_tokens}")
        return self


class Degeneration(_Strict):
    enabled: bool = True
    max_repeat: float = Field(0.5, gt=0, le=1)  # share of repeated word 4-grams in the response
    max_ppl: float | None = Field(None, gt=1)  # unsteered model's perplexity of the response
    min_tokens: int = Field(16, ge=1)  # shorter responses are not judged
    action: Literal["unsteered", "lower", "record"] = "unsteered"
    lower_factor: float = Field(0.5, gt=0, lt=1)


class KeyPolicy(_Strict):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # steerwatch policy hash-key KEY
    steer: bool = False  # may send per-request `steering`
    admin: bool = False  # may read /v1/watch/events

    @field_validator("sha256")
    @classmethod
    def _lower(cls, v: str) -> str:
        return v.lower()


class StorePolicy(_Strict):
    url: str = "sqlite:///steerwatch-events.db"  # relative sqlite paths are relative to the policy file
    store_all: bool = False  # also store responses that raised no flag


class GuardPolicy(_Strict):
    # A non-empty reason acknowledges steering that amplifies distress / negative emotion.
    acknowledge_distress: str | None = None
    distress_vector: str | None = None  # default: built from the built-in distress set (cached)


class ServerPolicy(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)


class Policy(_Strict):
    model: str = "default"
    model_fingerprint: str | None = None
    served_name: str | None = None  # the id in /v1/models (default: the model's name)
    system_prompt: str | None = None  # prepended to chat requests that have none
    vectors: list[VectorPolicy] = Field(default_factory=list)
    detectors: list[DetectorPolicy] = Field(default_factory=list)
    limits: Limits = Field(default_factory=Limits)
    degeneration: Degeneration = Field(default_factory=Degeneration)
    keys: list[KeyPolicy] = Field(default_factory=list)
    store: StorePolicy = Field(default_factory=StorePolicy)
    guard: GuardPolicy = Field(default_factory=GuardPolicy)
    server: ServerPolicy = Field(default_factory=ServerPolicy)

    @model_validator(mode="after")
    def _refs(self) -> Policy:
        for what, items in (("vector", self.vectors), ("detector", self.detectors), ("key", self.keys)):
            names = [x.name for x in items]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} names must be unique; repeated: {', '.join(dup)}")
        hashes = [k.sha256 for k in self.keys]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two keys have the same sha256")
        known = {v.name for v in self.vectors}
        for d in self.detectors:
            for ref in d.steer:
                if ref.vector not in known:
                    raise ValueError(f"detector {d.name!r} steers with vector {ref.vector!r}, which is not in "
                                     f"vectors ({', '.join(sorted(known)) or 'none'})")
        if sum(d.action == "steer" for d in self.detectors) > 1:
            raise ValueError("at most one detector may have action 'steer'")
        total = sum(abs(v.strength) for v in self.vectors if v.op == "add")
        if total > self.limits.max_combined_strength:
            raise ValueError(f"the default strengths add up to {total:g}, above limits.max_combined_strength "
                             f"{self.limits.max_combined_strength:g}")
        return self


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored in a policy for an API key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


@dataclass
class PolicyFile:
    policy: Policy
    path: Path | None
    sha256: str  # hash of the validated policy (canonical JSON): recorded with every event

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p


def policy_from_dict(data: Any, *, path: Path | None = None) -> PolicyFile:
    where = str(path) if path else "policy"
    if not isinstance(data, dict):
        raise PolicyError(f"{where}: the policy must be a mapping (YAML keys such as model:, vectors:, detectors:)")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{where} is invalid:\n{_format_errors(exc)}") from None
    canon = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return PolicyFile(policy=policy, path=path, sha256=hashlib.sha256(canon.encode()).hexdigest())


def load_policy(path: str | Path) -> PolicyFile:
    """Read and validate a policy file (YAML or JSON). Referenced files are checked by :func:`resolve_policy`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"policy file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path} is not valid YAML: {exc}") from None
    return policy_from_dict(data, path=path.resolve())


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
    from ..vector import load_vector
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
        except SteerwatchError as exc:
            raise PolicyError(f"{where}: {exc}") from None
        det.name = dp.name
        if dp.threshold is not None:
            det.threshold = float(dp.threshold)
        if dp.action in ("flag", "block") and det.threshold is None:
            raise PolicyError(f"{where}: action {dp.action!r} needs a threshold; calibrate the detector "
                              "(steerwatch calibrate) or set threshold: in the policy")
        specs = [dep.spec(ref.vector, ref.strength) for ref in dp.steer]
        if dp.action == "steer":
            key = "prompt_threshold" if dp.mode == "prompt" else "trigger_threshold"
            if det.calibration.get(key) is None:
                raise PolicyError(f"{where}: action 'steer' in mode {dp.mode!r} needs the detector's {key}; "
                                  "run steerwatch calibrate on it")
        dep.detectors.append(ResolvedDetector(detector=det, action=dp.action, steer=specs, mode=dp.mode))
    return dep
