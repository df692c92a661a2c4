"""Write hooks: add / ablate / clamp along concept directions, at inference time only.

Units. ``add`` pushes ``strength * norm_L * u_L`` into the output of block L, where ``u_L`` is the
vector's unit direction and ``norm_L`` the typical (mean) residual-stream L2 norm at that layer,
measured on the extraction data without each sequence's first token. So ``+0.1`` adds 10 % of a
typical residual's length towards the concept, ``-0.1`` away from it, on any model and layer.
``clamp`` sets the projection ``h . u_L`` to ``strength * norm_L`` (same unit). ``ablate`` removes
the component along ``u_L`` (``clamp`` to 0).

Order at a layer: projections (ablate, clamp) act first, in the order given; then all adds.

Positions: ``all``; ``prompt`` (the tokens of the prompt, i.e. the first forward pass of a
``generate()`` call or any plain forward); ``generated`` (the forward passes that continue from a
KV cache: every generated token after the first). Position filters rely on the KV cache
(``use_cache=True``, the default of ``generate``).

Per-row steering: ``attach(model, rows=[specs_row0, specs_row1, ...])`` gives each row of the
batch its own specs (the server batches requests with different steering this way).

Hooks never mutate the model: they are registered on entry and removed on every exit path.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .errors import LayerResolutionError, SteerSpecError
from .layers import block_output, check_layers, decoder_blocks, normalize_layer, parse_layer_list, replace_block_output
from .types import OPS, POSITIONS, Op, Position

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .models import LoadedModel
    from .vector import Vector

@dataclass(frozen=True)
class SteerSpec:
    """One steering instruction: a vector, an operation, a strength, layers and positions.

    ``layers`` is what was asked for (negative layers count from the end); ``resolved_layers`` the
    decoder blocks it acts on, each at most once."""

    vector: Vector
    op: Op = "add"
    strength: float = 0.0
    layers: tuple[int, ...] | None = None  # None: the vector's default layers
    positions: Position = "all"

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise SteerSpecError(f"unknown steering operation {self.op!r}; valid: {', '.join(OPS)}")
        if self.positions not in POSITIONS:
            raise SteerSpecError(f"unknown positions {self.positions!r}; valid: {', '.join(POSITIONS)}")
        if not isinstance(self.strength, (int, float)) or not math.isfinite(self.strength):
            raise SteerSpecError(f"strength must be a finite number, got {self.strength!r}")
        for layer in self.resolved_layers:
            if layer not in self.vector.directions:
                raise SteerSpecError(f"vector {self.vector.concept!r} has no direction for layer {layer}; "
                                     f"it has layers {self.vector.layers}")

    @property
    def resolved_layers(self) -> list[int]:
        """The blocks this spec acts on: negative layers counted from the end (when the vector
        records the model's depth), each block once (a repeat is an error: it would push twice)."""
        asked = list(self.layers) if self.layers is not None else list(self.vector.default_layers)
        total = self.vector.n_model_layers
        try:
            out = [normalize_layer(x, total) if x < 0 and total else int(x) for x in asked]
        except LayerResolutionError as exc:
            raise SteerSpecError(f"vector {self.vector.concept!r}: {exc}") from None
        if len(set(out)) != len(out):
            twice = sorted({x for x in out if out.count(x) > 1})
            raise SteerSpecError(f"vector {self.vector.concept!r}: layer {twice[0]} is named more than once "
                                 f"(layers {', '.join(str(x) for x in asked)}); give each decoder block at most once")
        return out

    def describe(self) -> str:
        layers = ",".join(str(x) for x in self.resolved_layers)
        what = {"add": f"{self.strength:+g}", "ablate": "ablate", "clamp": f"clamp={self.strength:g}"}[self.op]
        pos = "" if self.positions == "all" else f":{self.positions}"
        return f"{self.vector.concept}@{layers}:{what}{pos}"


_SPEC = re.compile(r"^(?P<path>.+?)(?:@(?P<layers>-?\d+(?:-\d+)?(?:,-?\d+(?:-\d+)?)*))?(?::(?P<op>[^:]+))?"
                   r"(?::(?P<pos>all|prompt|generated))?$")


def parse_steer_spec(text: str, *, load: Callable[[str], Vector] | None = None) -> SteerSpec:
    """Parse ``PATH[@LAYERS][:OP][:POSITIONS]``.

    OP: a signed strength (``+0.3``, ``-0.2``, ``0.1``), ``ablate``, or ``clamp=VALUE``.
    Examples: ``honesty.sv:+0.3``, ``cheating.sv:ablate``, ``honesty.sv@12,13:+0.2:generated``.
    """
    if load is None:
        from .vector import load_vector

        load = load_vector
    m = _SPEC.match(text.strip())
    if not m or not m.group("op"):
        raise SteerSpecError(
            f"cannot parse steering spec {text!r}; expected PATH[@LAYERS]:OP[:POSITIONS] with OP a signed "
            "strength (+0.3), 'ablate' or 'clamp=VALUE', e.g. honesty.sv:+0.3 or cheating.sv@12:ablate")
    op_text = m.group("op")
    op: Op
    if op_text == "ablate":
        op, strength = "ablate", 0.0
    elif op_text.startswith("clamp="):
        op = "clamp"
        try:
            strength = float(op_text[6:])
        except ValueError:
            raise SteerSpecError(f"clamp value in {text!r} must be a number, e.g. clamp=0.5") from None
    else:
        op = "add"
        try:
            strength = float(op_text)
        except ValueError:
            raise SteerSpecError(f"unknown operation {op_text!r} in {text!r}; use a signed strength (+0.3), "
                                 "'ablate' or 'clamp=VALUE'") from None
    try:
        layers = tuple(parse_layer_list(m.group("layers"))) if m.group("layers") else None
    except ValueError as exc:
        raise SteerSpecError(f"cannot read the layers in {text!r} ({exc}); write them like @12,13 or @9-14") from None
    vector = load(m.group("path"))
    positions = cast(Position, m.group("pos") or "all")  # the pattern admits only valid positions
    return SteerSpec(vector=vector, op=op, strength=strength, layers=layers, positions=positions)


# ---------------------------------------------------------------------------- compiled hooks
@dataclass
class _LayerPlan:
    adds: dict[str, torch.Tensor]  # positions -> (B, d) summed push, B = rows or 1
    projs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]]  # positions -> [(U (B,d), T (B,))]


def _compile(rows: Sequence[Sequence[SteerSpec]], n_layers: int, *, dtype, device) -> dict[int, _LayerPlan]:
    import torch

    B = len(rows)
    plans: dict[int, _LayerPlan] = {}
    adds: dict[tuple[int, str], torch.Tensor] = {}
    proj_slots: dict[tuple[int, str], list[list[tuple[torch.Tensor, float] | None]]] = {}
    for r, specs in enumerate(rows):
        counters: dict[tuple[int, str], int] = {}
        for spec in specs:
            layers = check_layers(spec.resolved_layers, n_layers)
            for layer in layers:
                u = spec.vector.direction(layer).to(torch.float32)
                scale = spec.vector.norm(layer)
                key = (layer, spec.positions)
                if spec.op == "add":
                    if spec.strength == 0.0:
                        continue
                    buf = adds.setdefault(key, torch.zeros(B, u.numel(), dtype=torch.float32))
                    buf[r] += float(spec.strength) * scale * u
                else:
                    target = 0.0 if spec.op == "ablate" else float(spec.strength) * scale
                    j = counters.get(key, 0)
                    counters[key] = j + 1
                    slots = proj_slots.setdefault(key, [])
                    while len(slots) <= j:
                        slots.append([None] * B)
                    slots[j][r] = (u, target)
    for (layer, pos), buf in adds.items():
        plan = plans.setdefault(layer, _LayerPlan(adds={}, projs={}))
        plan.adds[pos] = buf.to(device=device, dtype=dtype)
    for (layer, pos), slots in proj_slots.items():
        plan = plans.setdefault(layer, _LayerPlan(adds={}, projs={}))
        for slot in slots:
            d = next(x for x in slot if x is not None)[0].numel()
            U = torch.zeros(B, d, dtype=torch.float32)
            T = torch.zeros(B, dtype=torch.float32)
            for r, item in enumerate(slot):
                if item is not None:
                    U[r], T[r] = item[0], item[1]
            plan.projs.setdefault(pos, []).append((U.to(device=device, dtype=dtype), T.to(device=device, dtype=dtype)))
    return plans


def _apply(h: torch.Tensor, plan: _LayerPlan, phase: str, per_row: bool) -> torch.Tensor:
    # h: (batch, seq, d)
    active = ("all", phase)
    for pos in active:
        for U, T in plan.projs.get(pos, ()):
            if per_row and U.shape[0] != h.shape[0]:
                raise SteerSpecError(f"per-row steering was set up for {U.shape[0]} rows but the batch has "
                                     f"{h.shape[0]}; give one list of specs per batch row")
            coef = (h * U[:, None, :]).sum(-1)  # (batch, seq) projection on the unit direction
            h = h + (T[:, None] - coef)[..., None] * U[:, None, :]  # rows without this op have U = 0
    for pos in active:
        delta = plan.adds.get(pos)
        if delta is not None:
            if per_row and delta.shape[0] != h.shape[0]:
                raise SteerSpecError(f"per-row steering was set up for {delta.shape[0]} rows but the batch has "
                                     f"{h.shape[0]}; give one list of specs per batch row")
            h = h + delta[:, None, :]
    return h


class SteerHandle:
    """Long-lived steering: hooks stay until :meth:`remove` (idempotent). Also a context manager."""

    def __init__(self, model: Any, plans: dict[int, _LayerPlan], blocks, per_row: bool, gate: Any = None) -> None:
        self._handles: list[Any] = []
        self.gate = gate
        self._phase = "prompt"
        self.per_row = per_row
        self.layers = sorted(plans)

        def pre(_mod, _args, kwargs):
            # the KV cache: ``cache`` since transformers 5.2x, ``past_key_values`` before
            past = kwargs.get("cache", kwargs.get("past_key_values"))
            length = 0
            if past is not None:
                try:
                    length = int(past.get_seq_length())
                except (AttributeError, TypeError):
                    length = 1 if len(past) else 0
            self._phase = "generated" if length > 0 else "prompt"

        try:
            self._handles.append(model.register_forward_pre_hook(pre, with_kwargs=True))
            for layer, plan in plans.items():
                def hook(_mod, _inp, output, plan=plan):
                    h = block_output(output)
                    new = _apply(h, plan, self._phase, per_row)
                    if self.gate is not None:  # conditional steering: (batch,) 0/1, read at every call
                        g = self.gate.value.to(device=h.device, dtype=h.dtype)[:, None, None]
                        new = h + g * (new - h)
                    return replace_block_output(output, new)
                self._handles.append(blocks[layer].register_forward_hook(hook))
        except Exception:
            self.remove()
            raise

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __enter__(self) -> SteerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach(target: LoadedModel | Any, specs: Sequence[SteerSpec] | None = None, *,
           rows: Sequence[Sequence[SteerSpec]] | None = None, layers_path: str | None = None,
           force: bool = False, gate: Any = None) -> SteerHandle:
    """Register steering hooks and return a handle; call ``handle.remove()`` when done.

    ``target``: a :class:`~steerwatch.models.LoadedModel` (vectors are checked against its weights
    fingerprint unless ``force``) or a bare Hugging Face model (no fingerprint check).
    ``specs``: the same steering for every row. ``rows``: one list of specs per batch row.
    ``gate``: an object whose ``value`` is a (batch,) tensor of 0/1, read at every forward call:
    rows with 0 are left unsteered (conditional steering switches rows on as detectors fire).
    """

    from .models import LoadedModel

    if (specs is None) == (rows is None):
        raise SteerSpecError("give exactly one of specs=[...] (same steering for all rows) or rows=[[...], ...]")
    if isinstance(target, LoadedModel):
        model, layers_path = target.model, layers_path or target.layers_path
        for spec in (specs or [s for row in rows or [] for s in row]):
            spec.vector.check_model(target, force=force)
    else:
        model = target
    for spec in (specs or [s for row in rows or [] for s in row]):
        if not isinstance(spec, SteerSpec):
            raise SteerSpecError(f"steering specs must be SteerSpec objects, got {type(spec).__name__}")
        if spec.vector.hidden_size != model.config.hidden_size:
            raise SteerSpecError(f"vector {spec.vector.concept!r} has hidden size {spec.vector.hidden_size}, "
                                 f"the model has {model.config.hidden_size}")
    blocks = decoder_blocks(model, layers_path=layers_path)
    param = next(model.parameters())
    per_row = rows is not None
    plan_rows = rows if rows is not None else [list(specs or [])]
    plans = _compile(plan_rows, len(blocks), dtype=param.dtype, device=param.device)
    return SteerHandle(model, plans, blocks, per_row, gate=gate)


@contextmanager
def steering(target: LoadedModel | Any, specs: Sequence[SteerSpec] | None = None, *,
             rows: Sequence[Sequence[SteerSpec]] | None = None, layers_path: str | None = None,
             force: bool = False) -> Iterator[SteerHandle]:
    """``with steering(loaded, [SteerSpec(vec, strength=0.2)]): loaded.model.generate(...)``"""
    handle = attach(target, specs, rows=rows, layers_path=layers_path, force=force)
    try:
        yield handle
    finally:
        handle.remove()
