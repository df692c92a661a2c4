"""The deployment policy's schema: a YAML file that says which model is served, which vectors are
dialled in (and how far a request may move them), which detectors watch every response and what
each does when it fires, the limits, the API keys and their rights, and where events are stored.

Validated in two steps: :func:`load_policy` checks the file's schema (Pydantic; every error names
its field) and :func:`steerwatch.policy.resolve.resolve_policy` checks the files it refers to
(SHA-256 of every vector and detector file, each vector against the served model's weights
fingerprint). Paths are relative to the policy file. See docs/serve.md for a complete example.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import SteerwatchError

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
    strength: float = Field(0.0, allow_inf_nan=False)  # applied to every request unless it sets its own steering
    layers: list[int] | None = None  # default: the vector's default layers
    positions: Literal["all", "prompt", "generated"] = "all"
    # bound on per-request |strength| of add and clamp (one unit: a fraction of the typical residual
    # norm); working doses on the embedded model are 0.02-0.04 (over 6 layers), 10 is far past any
    max_abs_strength: float = Field(0.05, gt=0, le=10)

    @model_validator(mode="after")
    def _bound(self) -> VectorPolicy:
        if self.op != "ablate" and abs(self.strength) > self.max_abs_strength:
            raise ValueError(f"strength {self.strength} exceeds max_abs_strength {self.max_abs_strength}")
        return self


class SteerRef(_Strict):
    vector: str
    strength: float = Field(allow_inf_nan=False)


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
    max_messages: int = Field(256, ge=1, le=100_000)  # messages in one chat request (checked before rendering)
    max_steering_items: int = Field(16, ge=1, le=1024)  # entries in one request's `steering`
    max_batch: int = Field(8, ge=1, le=256)
    max_queue: int = Field(64, ge=1, le=100_000)  # requests waiting for the worker; beyond: 503 + Retry-After
    batch_wait_ms: float = Field(10.0, ge=0, le=5000)
    max_combined_strength: float = Field(0.5, gt=0, le=100)  # sum of |strength| (add, clamp) dialled together
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
        total = sum(abs(v.strength) for v in self.vectors if v.op != "ablate")
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
    if path.is_dir():
        raise PolicyError(f"policy file {path} is a directory, not a file")
    if not path.is_file():
        raise PolicyError(f"policy file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
                          "save the policy file as UTF-8") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path} is not valid YAML: {exc}") from None
    return policy_from_dict(data, path=path.resolve())
