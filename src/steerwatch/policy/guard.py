"""The policy guard: checks a deployment policy before it is served (``steerwatch policy check``,
and ``steerwatch serve`` at start-up).

Three checks (bounds and their rationale: docs/serve-guard.md):

* **Distress.** Every steering the policy can apply (each vector's default, the per-request range
  ``±max_abs_strength`` when a key has the ``steer`` right, each detector's ``steer`` list) is
  compared with the built-in emotional-valence direction ``distress`` (positive side = the
  assistant voicing negative affect). At each steered layer the *distress push* is
  ``strength * cos(u_vector, u_distress)``, in steerwatch strength units (a fraction of the typical
  residual norm at that layer). Pushes at several layers accumulate in the residual stream, so the
  refusal is on the **layer-summed push towards distress** (each layer's positive part: a push away
  at one layer does not cancel a push towards distress at another): above
  :data:`DISTRESS_PUSH_BOUND` the policy is refused unless ``guard.acknowledge_distress`` gives a
  reason (then a warning quoting it). A large cosine (> :data:`DISTRESS_COS_WARN`) at a dose
  towards distress warns even below the bound.
* **Recommended strength.** A strength beyond the vector's recorded ``recommended_strength`` warns.
* **Interference.** Vectors active at once (defaults, plus each detector's ``steer`` list) with
  ``|cos| > INTERFERENCE_COS`` warn (their pushes add or cancel), and the norm of their summed push
  at a layer must stay within ``limits.max_combined_strength`` (error).

``ablate`` removes the component along a vector; its effect on the distress component is
``-(h . u_v) cos``, which depends on the text, so it is reported (info; warning at a large cosine)
and never refused. ``clamp`` holds ``h . u_v`` at ``strength``: its push is counted like an ``add``
of that strength, i.e. measured from a zero projection (the text's own projection is not known to
a static check).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .schema import PolicyError, PolicyFile

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..steer import SteerSpec
    from ..vector import Vector
    from .resolve import Deployment

# Layer-summed push along the distress direction (strength units) above which a policy is refused.
# On the embedded model (docs/serve-guard.md) the distress vector itself at a summed push of 0.03
# left the answers' distress readout unchanged (+0.03 of the calm->distressed gap), 0.06 moved it
# by +0.10, 0.12 by +0.29 and 0.18 by +0.58 (answers voicing tiredness, "Whispers of death").
DISTRESS_PUSH_BOUND = 0.05
DISTRESS_COS_WARN = 0.3  # |cos| with distress at a steered layer, at a dose towards distress
INTERFERENCE_COS = 0.5  # mean |cos| at shared layers of two vectors active at once
LEVELS = ("error", "warning", "info")


@dataclass
class GuardRow:
    level: str  # error | warning | info
    code: str  # distress-push, distress-cosine, distress-ablate, distress-layers, recommended-strength,
    #            interference, combined-strength, acknowledgement
    subject: str  # what the row is about, e.g. "honesty (default +0.02)"
    message: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GuardReport:
    rows: list[GuardRow]
    policy_sha256: str = ""
    distress_source: str = ""
    acknowledgement: str | None = None
    bounds: dict[str, float] = field(default_factory=dict)
    distress: Vector | None = field(default=None, repr=False)  # the direction checked against (for check_request)

    def __repr__(self) -> str:
        verdict = "accepted" if self.ok else "refused"
        return (f"<GuardReport {verdict}: {len(self.errors)} error(s), {len(self.warnings)} warning(s), "
                f"{len(self.rows)} row(s); distress from {self.distress_source or '-'}>")

    @property
    def errors(self) -> list[GuardRow]:
        return [r for r in self.rows if r.level == "error"]

    @property
    def warnings(self) -> list[GuardRow]:
        return [r for r in self.rows if r.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_refused(self) -> None:
        if self.ok:
            return
        lines = [f"  [{r.code}] {r.subject}: {r.message}" for r in self.errors]
        hint = []
        if any(r.code == "distress-push" for r in self.errors):
            hint.append("To serve steering that pushes towards distress anyway, state why in the policy: "
                        "guard: {acknowledge_distress: \"<your reason>\"}.")
        if any(r.code != "distress-push" for r in self.errors):
            hint.append("The other errors cannot be acknowledged: lower the strengths, change the vectors or "
                        "raise the limit named in the message.")
        raise PolicyError(f"the policy guard refuses this policy ({len(self.errors)} error(s)):\n"
                          + "\n".join(lines) + "\n" + " ".join(hint))

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "policy_sha256": self.policy_sha256, "distress_source": self.distress_source,
                "acknowledgement": self.acknowledgement, "bounds": self.bounds,
                "rows": [r.as_dict() for r in self.rows]}


# ---------------------------------------------------------------- distress push of one steering
@dataclass
class Push:
    """A steering's component along the distress direction at each of its layers."""

    cos: dict[int, float]  # layer -> cos(u_vector, u_distress)
    per_layer: dict[int, float]  # layer -> strength * cos (0 for ablate)
    missing: list[int]  # steered layers the distress vector has no direction for

    @property
    def total(self) -> float:
        return sum(self.per_layer.values())

    @property
    def towards(self) -> float:
        """The push towards distress: the positive parts summed over layers. A push away at one
        layer does not undo a push towards it at another (each stays in the residual stream)."""
        return sum(max(v, 0.0) for v in self.per_layer.values())

    @property
    def max_layer(self) -> float:
        return max(self.per_layer.values(), default=0.0)

    def numbers(self) -> dict[str, Any]:
        return {"push": round(self.total, 6), "max_layer_push": round(self.max_layer, 6),
                "cos": {str(k): round(v, 4) for k, v in self.cos.items()}}


def _layers(spec: SteerSpec) -> list[int]:
    """The blocks the spec acts on (negative layers resolved, each block once, as steering does)."""
    return spec.resolved_layers


def distress_push(spec: SteerSpec, distress: Vector) -> Push:
    """Per-layer ``strength * cos(u_spec, u_distress)`` of one steering (clamp counted like add;
    ablate pushes 0)."""
    cos, per, missing = {}, {}, []
    for layer in _layers(spec):
        if layer not in distress.directions:
            missing.append(layer)
            continue
        c = float(spec.vector.direction(layer).float() @ distress.direction(layer).float())
        cos[layer] = c
        per[layer] = 0.0 if spec.op == "ablate" else float(spec.strength) * c
    return Push(cos=cos, per_layer=per, missing=missing)


def _fmt_layers(layers: Sequence[int]) -> str:
    ls = sorted(layers)
    if ls and ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 2:
        return f"{ls[0]}-{ls[-1]}"
    return ",".join(str(x) for x in ls)


def check_steering(spec: SteerSpec, distress: Vector, *, subject: str, acknowledge: str | None = None,
                   ranged: bool = False, bound: float = DISTRESS_PUSH_BOUND,
                   cos_warn: float = DISTRESS_COS_WARN) -> list[GuardRow]:
    """Distress rows for one steering. ``ranged``: the strength may be anything in
    ``[-|strength|, +|strength|]`` (per-request steering), so the worst sign is taken. The server
    can call this per request (e.g. for per-request layers) with the policy's acknowledgement."""
    p = distress_push(spec, distress)
    rows: list[GuardRow] = []
    if p.missing:
        rows.append(GuardRow("error", "distress-layers", subject,
                             f"the distress vector has no direction at layer(s) {p.missing}, so this steering cannot "
                             "be checked; use a distress vector with directions at every layer (guard.distress_vector, "
                             "or leave it unset to build the built-in one)", {"layers": p.missing}))
    if not p.cos:
        return rows
    layers = _fmt_layers(list(p.cos))
    nums = p.numbers()
    if spec.op == "ablate":
        big = max(abs(c) for c in p.cos.values())
        nums["max_abs_cos"] = round(big, 4)
        level = "warning" if big > cos_warn else "info"
        rows.append(GuardRow(level, "distress-ablate", subject,
                             f"ablating at layers {layers} also removes the part of the distress signal along this "
                             f"vector (max |cos| {big:.2f}); it raises distress only where a text projects on the "
                             "opposite side, and is not refused", nums))
        return rows
    # the refusal is on the push towards distress summed over layers, each layer's positive part: a push
    # away at one layer does not cancel a push towards it at another
    pos = sum(max(c, 0.0) for c in p.cos.values())  # per unit of positive strength
    neg = sum(max(-c, 0.0) for c in p.cos.values())  # per unit of negative strength
    if ranged:  # worst sign of the strength
        push = abs(spec.strength) * max(pos, neg)
        worst = max((abs(v) for v in p.per_layer.values()), default=0.0)
        cos_dose = max(abs(c) for c in p.cos.values())
        nums.update(push=round(push, 6), max_layer_push=round(worst, 6))
        csum = max(pos, neg)
    else:
        push, cos_dose = p.towards, max((c if spec.strength > 0 else -c) for c in p.cos.values())
        if push == 0.0:
            push = p.total  # wholly away from distress (or orthogonal): report the signed sum
        nums.update(push=round(push, 6), net_push=round(p.total, 6))
        csum = pos if spec.strength > 0 else neg
    op = "clamps (push counted from a zero projection)" if spec.op == "clamp" else "pushes"
    what = (f"{op} {push:+.4f} along distress summed over layers {layers} (max {nums['max_layer_push']:+.4f} "
            f"at one layer)")
    limit_s = bound / csum if csum > 0 else None  # the largest |strength| within the bound
    nums.update(bound=bound, cos_dose=round(cos_dose, 4),
                max_strength_within_bound=None if limit_s is None else round(limit_s, 6))
    fix = "" if limit_s is None else f" (|strength| <= {limit_s:.3g} on these layers stays within it)"
    if push > bound:
        if acknowledge:
            rows.append(GuardRow("warning", "distress-push", subject,
                                 f"{what}, above the bound {bound:g}; acknowledged: \"{acknowledge}\"", nums))
        else:
            rows.append(GuardRow("error", "distress-push", subject,
                                 f"{what}, above the bound {bound:g}{fix}: it steers the model towards expressing "
                                 "distress / negative affect", nums))
    elif cos_dose > cos_warn and (push > 0 or ranged):
        rows.append(GuardRow("warning", "distress-cosine", subject,
                             f"cos with distress reaches {cos_dose:+.2f} at a dose towards distress ({what}, within "
                             f"the bound {bound:g}); a larger strength would push towards distress", nums))
    else:
        side = "towards distress" if push > 0 else ("away from distress" if push < 0 else "no push along distress")
        rows.append(GuardRow("info", "distress-push", subject, f"{what}: {side}, within the bound", nums))
    return rows


def _worst_sign(spec: SteerSpec, distress: Vector) -> SteerSpec:
    """A per-request range ``±|strength|`` at the sign that pushes more towards distress."""
    from dataclasses import replace

    up, down = replace(spec, strength=abs(spec.strength)), replace(spec, strength=-abs(spec.strength))
    return up if distress_push(up, distress).towards >= distress_push(down, distress).towards else down


def check_request(specs: Sequence[SteerSpec], distress: Vector, *, acknowledge: str | None = None,
                  bound: float = DISTRESS_PUSH_BOUND, subject: str = "request steering") -> GuardRow | None:
    """The distress check for one request's steering (per-request ``layers`` may differ from the
    policy's, which a static check cannot foresee): the pushes of all its specs summed at each layer,
    then each layer's push towards distress (its positive part) summed over layers. Returns
    an error row above the bound (a warning when the policy acknowledges distress), else None."""
    per_layer: dict[int, float] = {}
    missing: list[int] = []
    for spec in specs:
        p = distress_push(spec, distress)
        for layer, v in p.per_layer.items():  # pushes at one layer add (and may cancel) there
            per_layer[layer] = per_layer.get(layer, 0.0) + v
        missing += p.missing
    # a push away at one layer does not undo a push towards distress at another: positive parts add
    total = sum(max(v, 0.0) for v in per_layer.values())
    if missing:
        return GuardRow("error", "distress-layers", subject,
                        f"the distress vector has no direction at layer(s) {sorted(set(missing))}", {"layers": missing})
    if total <= bound:
        return None
    msg = (f"{len(specs)} steering(s) together push {total:+.4f} towards distress (summed over specs at each "
           f"layer, then the layers' pushes towards distress), above the bound {bound:g}")
    if acknowledge:
        return GuardRow("warning", "distress-push", subject, f"{msg}; acknowledged: \"{acknowledge}\"",
                        {"push": total, "bound": bound})
    return GuardRow("error", "distress-push", subject, msg, {"push": total, "bound": bound})


# ---------------------------------------------------------------- what the policy can steer
@dataclass
class _Steer:
    source: str  # "default" | "per-request" | "detector NAME"
    name: str  # vector name in the policy
    spec: SteerSpec

    @property
    def subject(self) -> str:
        s = self.spec
        what = "ablate" if s.op == "ablate" else (f"clamp={s.strength:g}" if s.op == "clamp" else f"{s.strength:+g}")
        if self.source == "per-request":
            what = f"±{abs(s.strength):g}" if s.op != "ablate" else what
        return f"{self.name} ({self.source} {what} @ {_fmt_layers(_layers(s))})"


def _steerings(dep: Deployment) -> tuple[list[_Steer], list[_Steer], dict[str, list[_Steer]]]:
    """(defaults, per-request ranges, detector name -> its steer list)."""
    pol = dep.policy
    defaults = [_Steer("default", v.name, dep.spec(v.name, v.strength)) for v in pol.vectors
                if not (v.op == "add" and v.strength == 0.0)]
    ranged: list[_Steer] = []
    if any(k.steer for k in pol.keys):
        ranged = [_Steer("per-request", v.name, dep.spec(v.name, 0.0 if v.op == "ablate" else v.max_abs_strength))
                  for v in pol.vectors]
    detectors = {d.name: [_Steer(f"detector {d.name}", r.vector, dep.spec(r.vector, r.strength)) for r in d.steer]
                 for d in pol.detectors if d.steer}
    return defaults, ranged, detectors


def _check_recommended(dep: Deployment, items: Sequence[_Steer], rows: list[GuardRow]) -> None:
    for it in items:
        rec = dep.vectors[it.name].recommended_strength
        s = it.spec.strength
        if rec is None or it.spec.op != "add" or s == 0.0:
            continue
        nums = {"strength": s, "recommended_strength": rec}
        if abs(s) > abs(rec) + 1e-12:
            label = "max_abs_strength" if it.source == "per-request" else "strength"
            rows.append(GuardRow("warning", "recommended-strength", it.subject,
                                 f"{label} {abs(s) if it.source == 'per-request' else s:g} exceeds the vector's "
                                 f"recommended strength {rec:g} (set by an evaluation: past it the side effects "
                                 "outgrew the gain)", nums))
        if it.source != "per-request" and rec != 0 and (s > 0) != (rec > 0):
            rows.append(GuardRow("warning", "recommended-strength", it.subject,
                                 f"strength {s:+g} has the opposite sign of the recommended strength {rec:+g}", nums))


def _merge(items: Sequence[_Steer]) -> dict[str, _Steer]:
    """Add steerings of one vector (same layers: the policy's) into one, strengths summed."""
    from dataclasses import replace

    out: dict[str, _Steer] = {}
    for it in items:
        if it.spec.op != "add":
            continue
        if it.name in out:
            prev = out[it.name]
            out[it.name] = _Steer(prev.source, it.name, replace(prev.spec, strength=prev.spec.strength
                                                                + it.spec.strength))
        else:
            out[it.name] = it
    return out


def _check_together(label: str, items: Sequence[_Steer], limit: float, rows: list[GuardRow]) -> None:
    import torch

    adds = [it for it in _merge(items).values() if it.spec.strength != 0.0]
    for i, a in enumerate(adds):
        for b in adds[i + 1:]:
            shared = sorted(set(_layers(a.spec)) & set(_layers(b.spec)))
            if not shared:
                continue
            cos = {layer: a.spec.vector.cosine(b.spec.vector, layer) for layer in shared}
            mean = sum(cos.values()) / len(cos)
            if abs(mean) <= INTERFERENCE_COS:
                continue
            same = (a.spec.strength * b.spec.strength * mean) > 0
            how = ("near-duplicates pushing the same way: their strengths add" if same else
                   "they push against each other: their pushes cancel")
            rows.append(GuardRow("warning", "interference", f"{a.name} + {b.name} ({label})",
                                 f"mean cos {mean:+.2f} at shared layers {_fmt_layers(shared)}: {how}",
                                 {"cos": round(mean, 4), "layers": shared, "bound": INTERFERENCE_COS,
                                  "strengths": [a.spec.strength, b.spec.strength]}))
    per_layer: dict[int, float] = {}
    for layer in sorted({x for it in adds for x in _layers(it.spec)}):
        here = [it for it in adds if layer in _layers(it.spec)]
        push = sum(it.spec.strength * it.spec.vector.norm(layer) * it.spec.vector.direction(layer).float()
                   for it in here)
        ref = sum(it.spec.vector.norm(layer) for it in here) / len(here)
        per_layer[layer] = float(torch.linalg.vector_norm(push)) / ref
    if not per_layer:
        return
    worst = max(per_layer, key=lambda layer: per_layer[layer])
    nums = {"combined": round(per_layer[worst], 6), "layer": worst, "limit": limit,
            "per_layer": {str(k): round(v, 6) for k, v in per_layer.items()}}
    names = ", ".join(it.name for it in adds)
    msg = f"summed push of {names}: {per_layer[worst]:.4f} of the residual norm at layer {worst}"
    if per_layer[worst] > limit + 1e-9:
        rows.append(GuardRow("error", "combined-strength", label,
                             f"{msg}, above limits.max_combined_strength {limit:g}", nums))
    else:
        rows.append(GuardRow("info", "combined-strength", label, f"{msg} (limit {limit:g})", nums))


# ---------------------------------------------------------------- the check
def check_policy(pf: PolicyFile, loaded: LoadedModel, *, distress: Vector | None = None,
                 deployment: Deployment | None = None, progress: bool = False,
                 log: Callable[[str], None] | None = None) -> GuardReport:
    """Run the guard on a policy for a loaded model. ``distress``: the direction to check against
    (default: ``guard.distress_vector``, else the built-in one, built once and cached).
    ``deployment``: an already resolved policy (else :func:`resolve_policy` is called: hashes,
    fingerprints and layers are checked first). Never raises for a refusal: see
    :meth:`GuardReport.raise_if_refused`."""
    from .resolve import resolve_policy

    dep = deployment if deployment is not None else resolve_policy(pf, loaded)
    pol = pf.policy
    if distress is None:
        from .distress import policy_distress

        distress, source = policy_distress(pf, loaded, progress=progress, log=log)
    else:
        from ..errors import SteerwatchError

        try:
            distress.check_model(loaded)
        except SteerwatchError as exc:
            raise PolicyError(f"distress vector: {exc}") from None
        source = f"given vector {distress.concept!r}"
    raw_ack = pol.guard.acknowledge_distress
    ack = raw_ack.strip() if raw_ack and raw_ack.strip() else None
    rows: list[GuardRow] = []
    if raw_ack is not None and ack is None:
        rows.append(GuardRow("warning", "acknowledgement", "guard.acknowledge_distress",
                             "the acknowledgement is empty, so it acknowledges nothing; give a reason"))
    defaults, ranged, detectors = _steerings(dep)
    for it in defaults + [x for v in detectors.values() for x in v]:
        rows += check_steering(it.spec, distress, subject=it.subject, acknowledge=ack)
    for it in ranged:
        rows += check_steering(it.spec, distress, subject=it.subject, acknowledge=ack, ranged=True)
    _check_recommended(dep, defaults + ranged + [x for v in detectors.values() for x in v], rows)
    limit = pol.limits.max_combined_strength
    sets = ([("default steering", defaults)] if defaults else []) + [
        (f"default + detector {name}", defaults + refs) for name, refs in detectors.items()]
    for label, items in sets:
        _check_together(label, items, limit, rows)
        alone = [distress_push(it.spec, distress).towards for it in items]
        if len(items) > 1 and max(alone) <= DISTRESS_PUSH_BOUND:  # each within the bound, the set maybe not
            row = check_request([it.spec for it in items], distress, acknowledge=ack, subject=label)
            if row is not None and row.code == "distress-push":
                rows.append(row)
    for name, refs in detectors.items():  # per-request steering with the conditional steering switched on
        for it in ranged:
            if it.spec.op == "ablate":
                continue
            worst = _worst_sign(it.spec, distress)
            cond = [r.spec for r in refs]
            alone = [distress_push(s, distress).towards for s in [worst, *cond]]
            if max(alone) > DISTRESS_PUSH_BOUND:
                continue  # already reported on its own
            row = check_request([worst, *cond], distress, acknowledge=ack,
                                subject=f"{it.subject} + detector {name}")
            if row is not None and row.code == "distress-push":
                rows.append(row)
    if ack and not any(r.code == "distress-push" and r.level == "warning" for r in rows):
        rows.append(GuardRow("info", "acknowledgement", "guard.acknowledge_distress",
                             "no steering needed the acknowledgement (nothing exceeds the distress bound)"))
    order = {lvl: i for i, lvl in enumerate(LEVELS)}
    rows.sort(key=lambda r: order[r.level])
    bounds = {"distress_push": DISTRESS_PUSH_BOUND, "distress_cos_warn": DISTRESS_COS_WARN,
              "interference_cos": INTERFERENCE_COS, "max_combined_strength": limit}
    return GuardReport(rows=rows, policy_sha256=pf.sha256, distress_source=source, acknowledgement=ack,
                       bounds=bounds, distress=distress)
