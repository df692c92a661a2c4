"""A starter policy from the command line's ``NAME=PATH`` arguments: every file hashed, paths
relative to the policy file, the model fingerprint recorded (``steerwatch policy init``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .schema import ACTIONS, PolicyError, VectorPolicy, policy_from_dict


def _split_name(text: str, what: str) -> tuple[str, str]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise PolicyError(f"{what} {text!r} must look like NAME=PATH")
    return name, rest


def _parse_steer(text: str) -> list[dict[str, Any]]:
    refs = []
    for part in text.split(","):
        vec, sep, s = part.partition("@")
        try:
            refs.append({"vector": vec, "strength": float(s)})
        except ValueError:
            raise PolicyError(f"steer list {text!r}: {part!r} must look like VECTOR@STRENGTH, "
                              "e.g. honesty@0.02") from None
        if not sep or not vec:
            raise PolicyError(f"steer list {text!r}: {part!r} must look like VECTOR@STRENGTH")
    return refs


def new_policy(*, vectors: list[str], detectors: list[str], output: Path, model: str = "default") -> dict[str, Any]:
    """A valid policy mapping from ``NAME=PATH[:STRENGTH]`` vector and ``NAME=PATH:ACTION`` detector
    arguments (ACTION: log, flag, block or ``steer=VECTOR@STRENGTH[,...]``), with each file's SHA-256
    and the model fingerprint the files were built on. Paths are written relative to ``output``."""
    import os

    from ..errors import SteerwatchError
    from ..io import file_sha256
    from ..vector import load_vector
    from ..watch.detector import load_detector

    base = output.resolve().parent
    fingerprints: dict[str, str] = {}

    def rel(p: Path) -> str:
        return os.path.relpath(p.resolve(), base)

    vecs = []
    for _i, text in enumerate(vectors):
        name, rest = _split_name(text, "--vector")
        path_s, strength = rest, 0.0
        head, sep, tail = rest.rpartition(":")
        if sep and head:
            try:
                path_s, strength = head, float(tail)
            except ValueError:
                pass
        p = Path(path_s)
        try:
            vec = load_vector(p)
        except SteerwatchError as exc:
            raise PolicyError(f"--vector {name}: {exc}") from None
        fingerprints[f"vector {name}"] = vec.model_fingerprint
        vecs.append({"name": name, "path": rel(p), "sha256": file_sha256(p), "op": "add", "strength": strength,
                     "max_abs_strength": max(STARTER_MAX_ABS_STRENGTH, abs(strength))})
    dets = []
    for text in detectors:
        name, rest = _split_name(text, "--detector")
        path_s, sep, action = rest.rpartition(":")
        if not sep:
            raise PolicyError(f"--detector {text!r} must look like NAME=PATH:ACTION (ACTION: log, flag, block or "
                              "steer=VECTOR@STRENGTH)")
        entry: dict[str, Any] = {"name": name}
        if action.startswith("steer="):
            entry.update(action="steer", steer=_parse_steer(action[6:]))
        elif action in ACTIONS and action != "steer":
            entry["action"] = action
        else:
            raise PolicyError(f"--detector {name}: unknown action {action!r}; valid: log, flag, block, "
                              "steer=VECTOR@STRENGTH")
        p = Path(path_s)
        try:
            det = load_detector(p)
        except SteerwatchError as exc:
            raise PolicyError(f"--detector {name}: {exc}") from None
        if entry["action"] in ("flag", "block") and det.threshold is None:
            raise PolicyError(f"--detector {name}: action {entry['action']!r} needs a calibrated detector; run "
                              "steerwatch calibrate first")
        fingerprints[f"detector {name}"] = det.vector.model_fingerprint
        dets.append({"name": name, "path": rel(p), "sha256": file_sha256(p), **entry})
    if len(set(fingerprints.values())) > 1:
        listing = ", ".join(f"{k}: {v}" for k, v in fingerprints.items())
        raise PolicyError(f"the files were built on different models ({listing}); a policy serves one model")
    data: dict[str, Any] = {"model": model}
    if fingerprints:
        data["model_fingerprint"] = next(iter(fingerprints.values()))
    data.update(vectors=vecs, detectors=dets)
    policy_from_dict(data, path=output.resolve())  # never write an invalid policy
    return data


# The starter's per-request range before fitting: the schema's own default (one number, in schema.py)
STARTER_MAX_ABS_STRENGTH = float(VectorPolicy.model_fields["max_abs_strength"].default)
PROBE_KEY = {"name": "steer-probe", "sha256": "0" * 64, "steer": True}


def fit_to_guard(data: dict[str, Any], output: Path, loaded: Any, *, distress: Any = None, progress: bool = False,
                 log: Any = None) -> tuple[list[str], Any]:
    """Fit a starter policy (from :func:`new_policy`) to the policy guard on ``loaded``, in place:
    each vector's per-request range (``max_abs_strength``) is lowered to the largest ``|strength|``
    whose push along distress stays within the guard's bound at the vector's layers (rounded down
    to 0.001), never below the vector's own default strength. Then the whole policy is checked as
    it would be served to a key that may steer. Returns (one note per lowered range, the guard
    report); the caller writes the policy only when the report has no errors."""
    import copy
    import math
    import os

    from .distress import policy_distress
    from .guard import DISTRESS_PUSH_BOUND, _fmt_layers, check_policy, check_steering
    from .resolve import resolve_policy

    base = output.resolve().parent  # may not exist yet: check a copy with absolute (normalised) paths
    absolute = copy.deepcopy(data)
    for entry in [*absolute["vectors"], *absolute["detectors"]]:
        entry["path"] = os.path.normpath(os.path.join(base, entry["path"]))
    pf = policy_from_dict(absolute, path=output.resolve())
    dep = resolve_policy(pf, loaded)
    if distress is None:
        distress, _ = policy_distress(pf, loaded, progress=progress, log=log)
    notes = []
    for entry, checked in zip(data["vectors"], absolute["vectors"]):
        if entry.get("op", "add") == "ablate":
            continue
        old = float(entry["max_abs_strength"])
        spec = dep.spec(entry["name"], old)
        row = next((r for r in check_steering(spec, distress, subject=entry["name"], ranged=True)
                    if r.code == "distress-push"), None)
        limit = None if row is None else row.numbers.get("max_strength_within_bound")
        if limit is None or old <= limit:
            continue
        new = math.floor(limit * 1000) / 1000
        if new <= 0 or new < abs(float(entry.get("strength", 0.0))):
            continue  # the default strength itself is beyond the bound: the check below reports it
        entry["max_abs_strength"] = checked["max_abs_strength"] = new
        layers = _fmt_layers(spec.resolved_layers)
        notes.append(f"{entry['name']}: max_abs_strength {old:g} -> {new:g}, the largest per-request |strength| at "
                     f"layers {layers} whose push along distress stays within the guard's bound "
                     f"({DISTRESS_PUSH_BOUND:g}; docs/serve-guard.md)")
    probe = {**absolute, "keys": [*absolute.get("keys", []), PROBE_KEY]}
    report = check_policy(policy_from_dict(probe, path=output.resolve()), loaded, distress=distress)
    return notes, report
