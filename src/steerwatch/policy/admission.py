"""Admission: what a request may do under a deployment policy. Who may steer, with which vectors,
how far (per vector and combined), what the policy guard says about the distress push, and how
many tokens it may ask for. The server asks here before a request reaches the engine; every
refusal is a :class:`Refusal` that names the field, the limit and an OpenAI-style error code.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import SteerwatchError
from ..layers import check_layers
from .schema import PolicyError

if TYPE_CHECKING:  # pragma: no cover
    from ..steer import SteerSpec
    from .resolve import Deployment
    from .schema import KeyPolicy


class SteeringItem(Protocol):
    """One entry of a request's ``steering`` list."""

    vector: str
    strength: float
    layers: list[int] | None


class Refusal(PolicyError):
    """A request the policy does not admit: HTTP ``status``, the request field (``param``) and an
    OpenAI-style error ``code``."""

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind


@dataclass
class Admission:
    """What an admitted request runs with."""

    steering: list[SteerSpec]
    max_tokens: int


def admit_steering(dep: Deployment, items: Sequence[SteeringItem] | None, key: KeyPolicy | None, *,
                   guard_report: Any = None) -> list[SteerSpec]:
    """The steering a request runs with: the policy's default steering when it asks for none,
    else its own items, if its key has the ``steer`` right and every item is within the policy's
    bounds and the guard's. ``guard_report``: the start-up guard report (its distress direction).

    What is bounded is the push actually applied: ``add`` and ``clamp`` strengths (same unit) by
    ``max_abs_strength`` and, summed, by ``max_combined_strength``; a vector steers each block at
    most once (negative layers normalised first), so repeats cannot multiply a push; and the
    detector's conditional steering, which can switch on during the answer, counts on top of the
    request's own (the worst case) in the combined strength and the guard's distress check."""
    if items is None:
        return dep.default_steering()
    if key is None or not key.steer:
        raise Refusal(403, "this API key may not set per-request steering (the policy gives the 'steer' right per "
                           "key)", kind="permission_error", param="steering", code="steering_forbidden")
    n_layers = dep.loaded.n_layers
    specs, total = [], 0.0
    seen: dict[tuple[str, int], int] = {}  # (vector, block) -> the item that steers it
    for i, item in enumerate(items):
        vp = dep.vector_policies.get(item.vector)
        if vp is None:
            raise Refusal(400, f"steering.{i}: unknown vector {item.vector!r}; this policy has "
                               f"{', '.join(sorted(dep.vector_policies)) or 'none'}", param=f"steering.{i}.vector",
                          code="unknown_vector")
        if not math.isfinite(item.strength) or (vp.op != "ablate" and abs(item.strength) > vp.max_abs_strength):
            raise Refusal(400, f"steering.{i}: strength {item.strength:g} for {item.vector!r} ({vp.op}) is out of "
                               f"bounds (|strength| <= {vp.max_abs_strength:g})", param=f"steering.{i}.strength",
                          code="strength_out_of_bounds")
        try:
            layers = None if item.layers is None else check_layers(item.layers, n_layers)
            spec = dep.spec(item.vector, item.strength, layers=layers)
            resolved = check_layers(spec.resolved_layers, n_layers)
        except SteerwatchError as exc:
            raise Refusal(400, f"steering.{i}: {exc}", param=f"steering.{i}.layers", code="invalid_layers") from None
        for layer in resolved:
            prev = seen.setdefault((item.vector, layer), i)
            if prev != i:
                raise Refusal(400, f"steering.{i}: vector {item.vector!r} already steers layer {layer} "
                                   f"(steering.{prev}); give each vector at most once per layer (a repeat would "
                                   "apply its push again)", param=f"steering.{i}", code="duplicate_steering")
        total += abs(item.strength) if vp.op != "ablate" else 0.0
        if not (vp.op == "add" and item.strength == 0.0):
            specs.append(spec)
    cond_name, cond = dep.conditional_steering()
    cond_total = sum(abs(s.strength) for s in cond if s.op != "ablate")
    also = (f" with detector {cond_name!r}'s conditional steering, which can switch on during the answer"
            if cond else "")
    if guard_report is not None and guard_report.distress is not None and specs:
        from .guard import check_request

        row = check_request(specs + cond, guard_report.distress, acknowledge=guard_report.acknowledgement)
        if row is not None and row.level == "error":
            raise Refusal(400, f"steering refused by the policy guard: {row.message}{also}", param="steering",
                          code="distress_steering")
    limit = dep.policy.limits.max_combined_strength
    if specs and total + cond_total > limit:  # with no steering of its own, the policy's check stands
        parts = f" ({total:g} requested + {cond_total:g}{also})" if cond_total else ""
        raise Refusal(400, f"the steering strengths add up to {total + cond_total:g}{parts}, above the policy's "
                           f"max_combined_strength {limit:g}", param="steering", code="strength_out_of_bounds")
    return specs


def admit_tokens(dep: Deployment, asked: int | None, n_prompt_tokens: int, *, prompt_param: str = "messages") -> int:
    """The completion token limit a request runs with (``asked``, else the policy default), if the
    prompt and the ask are within the policy's limits."""
    lim = dep.policy.limits
    if asked is not None and asked > lim.max_tokens:
        raise Refusal(400, f"max_tokens {asked} exceeds this server's limit of {lim.max_tokens}",
                      param="max_tokens", code="too_many_tokens")
    if n_prompt_tokens > lim.max_prompt_tokens:
        raise Refusal(400, f"the prompt has {n_prompt_tokens} tokens, above this server's limit of "
                           f"{lim.max_prompt_tokens}", param=prompt_param, code="prompt_too_long")
    ctx = dep.loaded.context_length
    if ctx is not None and n_prompt_tokens >= ctx:
        raise Refusal(400, f"the prompt has {n_prompt_tokens} tokens; this model's context is {ctx} tokens "
                           "(prompt and completion together): shorten the prompt", param=prompt_param,
                      code="context_length_exceeded")
    if ctx is not None and asked is not None and n_prompt_tokens + asked > ctx:
        raise Refusal(400, f"the prompt has {n_prompt_tokens} tokens and max_tokens is {asked}: "
                           f"{n_prompt_tokens + asked} in all, above this model's context of {ctx} tokens; lower "
                           f"max_tokens to {ctx - n_prompt_tokens} or shorten the prompt", param="max_tokens",
                      code="context_length_exceeded")
    n = asked or lim.default_max_tokens
    return n if ctx is None else min(n, ctx - n_prompt_tokens)  # the default shrinks to fit the context


def admit(dep: Deployment, *, steering: Sequence[SteeringItem] | None, key: KeyPolicy | None,
          asked_max_tokens: int | None, n_prompt_tokens: int, guard_report: Any = None,
          prompt_param: str = "messages") -> Admission:
    """Everything a request may do, or a :class:`Refusal` saying what it may not."""
    max_tokens = admit_tokens(dep, asked_max_tokens, n_prompt_tokens, prompt_param=prompt_param)
    return Admission(steering=admit_steering(dep, steering, key, guard_report=guard_report), max_tokens=max_tokens)
