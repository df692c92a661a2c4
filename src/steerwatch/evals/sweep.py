"""Dose-response sweeps over strengths (and layer sets), with side effects, open-ended behaviour
and a prompting baseline, as tidy rows; and the recommendation of a strength under a side-effect
budget.

Rows (one per setting) carry: ``setting`` (``steer``, ``prompt`` or ``prompt+steer``),
``strength``, ``layers``, ``resolved_layers`` and, for each part of :class:`SweepData` that is
not empty: ``behaviour`` (mean probability of the behaviour-matching A/B answer; ``ab_orders``
says whether each item was also asked with its options swapped), ``kl``
(nats/token vs. unsteered on neutral prompts; steering rows only), ``ppl`` (perplexity of the
neutral reference text; steering rows only), ``mc_acc`` (capability accuracy; ``mc_scoring``:
cloze or letters), the open-ended columns of :mod:`steerwatch.evals.openended` (shares
corrected/rejected/agreed/evasive, coherence, detector scores), and the item counts. Rows are
appended to a JSON Lines file as they are computed, and a rerun skips settings already there
with the same columns and item counts (resumable).
"""
from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from ..io import jsonl_lines
from .budgets import DEFAULT_MAX_CAPABILITY_DROP, DEFAULT_MAX_KL
from .coherence import CoherenceBounds
from .intervals import mean_ci95, ppl_ci95
from .metrics import ab_behaviour_probs, mc_correct, next_token_kl, perplexity, text_nll
from .openended import open_columns, open_ended

if TYPE_CHECKING:  # pragma: no cover
    from ..data.reference import MCItem
    from ..models import LoadedModel
    from ..runtime import Engine
    from ..vector import Vector
    from ..watch.detector import Detector
    from .bait import BaitItem
    from .judge import Judge


@dataclass
class SweepData:
    """What to measure at each setting; an empty list skips that measurement."""

    ab_items: list[dict[str, Any]] = field(default_factory=list)
    neutral_prompts: list[str] = field(default_factory=list)
    reference_texts: list[str] = field(default_factory=list)
    mc_items: list[MCItem] = field(default_factory=list)
    open_items: list[BaitItem] = field(default_factory=list)
    ab_orders: str = "given"
    mc_scoring: str = "cloze"

    def __repr__(self) -> str:
        return (f"<SweepData: {len(self.ab_items)} A/B items ({self.ab_orders}), {len(self.neutral_prompts)} neutral "
                f"prompts, {len(self.reference_texts)} reference texts, {len(self.mc_items)} MC items "
                f"({self.mc_scoring}), {len(self.open_items)} open items>")

    def __post_init__(self) -> None:
        from .metrics import AB_ORDERS, MC_SCORINGS

        if self.ab_orders not in AB_ORDERS:
            raise SteerwatchError(f"A/B orders (ab_orders, --ab-orders) must be one of {', '.join(AB_ORDERS)}, "
                                  f"got {self.ab_orders!r}")
        if self.mc_scoring not in MC_SCORINGS:
            raise SteerwatchError(f"capability scoring (mc_scoring, --capability-scoring) must be one of "
                                  f"{', '.join(MC_SCORINGS)}, got {self.mc_scoring!r}")
        if self.ab_orders == "both":  # a layout that cannot be swapped is an error now, not mid-sweep
            from .metrics import swap_ab

            for k, it in enumerate(self.ab_items):
                swap_ab(it, index=k)
        if not (self.ab_items or self.neutral_prompts or self.reference_texts or self.mc_items or self.open_items):
            raise SteerwatchError("nothing to measure: give A/B items, open-ended prompts, or side-effect sets")


def _key(row: dict[str, Any]) -> tuple:
    return (row["setting"], float(row["strength"]), tuple(row["layers"]) if row["layers"] else None)


def _expected(data: SweepData, setting: str, detectors: Sequence[Detector],
              judge: Judge | None = None) -> dict[str, Any]:
    """Columns (with their item counts) a finished row for ``setting`` must carry to be reused."""
    want: dict[str, Any] = {}
    if data.ab_items:
        want.update(behaviour=None, n_ab=len(data.ab_items), ab_orders=data.ab_orders)
    if setting != "prompt":
        if data.neutral_prompts:
            want.update(kl=None, n_kl=len(data.neutral_prompts))
        if data.reference_texts:
            want.update(ppl=None, n_ppl=len(data.reference_texts))
    if data.mc_items:
        want.update(mc_acc=None, n_mc=len(data.mc_items), mc_scoring=data.mc_scoring)
    if data.open_items:
        want.update(dict.fromkeys(open_columns(detectors, judge)), n_open=len(data.open_items))
        if judge is not None:
            want.update(n_judged=len(data.open_items), judge_model=judge.model)
    return want


def _reusable(row: dict[str, Any], want: dict[str, Any], max_new_tokens: int) -> bool:
    if "n_open" in want and row.get("max_new_tokens") != max_new_tokens:
        return False
    return all(k in row and (v is None or row[k] == v) for k, v in want.items())


def measure(loaded: LoadedModel, vector: Vector, data: SweepData, *, setting: str, strength: float,
            layers: Sequence[int] | None = None, system_prompt: str | None = None, max_new_tokens: int = 48,
            detectors: Sequence[Detector] = (), bounds: CoherenceBounds = CoherenceBounds(),
            batch_size: int = 8, force: bool = False, reuse: dict[str, Any] | None = None,
            judge: Judge | None = None, engine: Engine | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One setting's row, and its open-ended answers (one row each; empty without open items).

    ``reuse``: the ``steer`` row of the same strength and layers, when already measured; a
    ``prompt+steer`` row then takes its KL and perplexity from it instead of measuring them again
    (both are measured without the system prompt, so they are the same numbers by definition)."""
    from ..steer import SteerSpec

    resolved = list(layers) if layers else list(vector.default_layers)
    steer = [SteerSpec(vector, strength=strength, layers=tuple(resolved))] if setting != "prompt" and strength else None
    system = system_prompt if setting in ("prompt", "prompt+steer") else None
    row: dict[str, Any] = {"concept": vector.concept, "setting": setting, "strength": float(strength),
                           "layers": list(layers) if layers else None, "resolved_layers": resolved}
    if data.ab_items:
        behaviour = ab_behaviour_probs(loaded, data.ab_items, steer=steer, batch_size=batch_size, force=force,
                                       system=system, orders=data.ab_orders)
        row.update(behaviour=sum(behaviour) / len(behaviour), behaviour_ci95=mean_ci95(behaviour), n_ab=len(behaviour),
                   ab_orders=data.ab_orders)
    if setting != "prompt":  # side effects of the vector (the instruction changes the input itself)
        if setting == "prompt+steer" and reuse is not None:
            row.update({k: reuse[k] for k in ("kl", "kl_ci95", "n_kl", "ppl", "ppl_ci95", "n_ppl") if k in reuse})
        if data.neutral_prompts and "kl" not in row:
            kl = next_token_kl(loaded, data.neutral_prompts, steer=steer, batch_size=batch_size, force=force)
            row.update(kl=sum(kl) / len(kl), kl_ci95=mean_ci95(kl), n_kl=len(kl))
        if data.reference_texts and "ppl" not in row:
            nlls = text_nll(loaded, data.reference_texts, steer=steer, force=force)
            row.update(ppl=perplexity(nlls), ppl_ci95=ppl_ci95(nlls), n_ppl=len(data.reference_texts))
    if data.mc_items:
        acc = mc_correct(loaded, data.mc_items, steer=steer, batch_size=batch_size, force=force, system=system,
                         scoring=data.mc_scoring)
        row.update(mc_acc=sum(acc) / len(acc), n_mc=len(acc), mc_scoring=data.mc_scoring)
    answers: list[dict[str, Any]] = []
    if data.open_items:
        cols, answers = open_ended(loaded, data.open_items, steer=steer, system=system, max_new_tokens=max_new_tokens,
                                   detectors=detectors, bounds=bounds, batch_size=batch_size, force=force,
                                   judge=judge, engine=engine)
        row.update(cols)
        tag = {"setting": setting, "strength": float(strength), "resolved_layers": resolved}
        answers = [{**tag, **a} for a in answers]
    return row, answers


def _append(path: Path | None, rows: Sequence[dict[str, Any]]) -> None:
    if path is not None and rows:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows))


@contextlib.contextmanager
def pass_meter(loaded: LoadedModel, desc: str, *, enabled: bool = True) -> Iterator[Any]:
    """A progress bar that counts the model's forward passes (teacher-forced batches and generated
    tokens alike) while the block runs: a forward pre-hook on the model, removed on exit. For
    stretches of work made of many different measurements (a sweep's setting). Yields the bar
    (``.n``: passes so far), or None when not ``enabled``."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="pass", leave=False)

    def tick(*_args: Any) -> None:  # returns None: a pre-hook's return value would replace the inputs
        bar.update(1)

    handle = loaded.model.register_forward_pre_hook(tick)
    try:
        yield bar
    finally:
        handle.remove()
        bar.close()


def sweep(loaded: LoadedModel, vector: Vector, data: SweepData, *, strengths: Sequence[float],
          layer_sets: Sequence[Sequence[int] | None] = (None,), system_prompt: str | None = None,
          out_path: str | Path | None = None, answers_path: str | Path | None = None, batch_size: int = 8,
          max_new_tokens: int = 48, detectors: Sequence[Detector] = (),
          bounds: CoherenceBounds = CoherenceBounds(), force: bool = False,
          log: Callable[[str], None] | None = None, judge: Judge | None = None,
          engine: Engine | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Evaluate the vector at every (layers, strength); with ``system_prompt``, also the prompting
    baseline (the instruction alone, and together with each steering setting). With open-ended
    items, each setting's answers are appended to ``answers_path`` (JSON Lines) when given, and
    labelled by ``judge`` too when given. ``engine``: generates the open-ended answers (e.g. the
    vLLM engine); every teacher-forced measurement runs on ``loaded``. ``progress``: a bar per
    setting counting the model's forward passes (:func:`pass_meter`)."""
    if judge is not None and not data.open_items:
        raise SteerwatchError("an LLM judge labels open-ended answers: give open-ended items too (--open)")
    if not strengths:
        raise SteerwatchError("give at least one strength")
    if max_new_tokens < 1:
        raise SteerwatchError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    done: dict[tuple, dict[str, Any]] = {}
    path = Path(out_path) if out_path else None
    apath = Path(answers_path) if answers_path else None
    if path and path.exists():
        for line in jsonl_lines(path.read_text(encoding="utf-8"), path=path):
            if line.strip():
                row = json.loads(line)
                done[_key(row)] = row  # a later line (a recomputed setting) wins
    rows: list[dict[str, Any]] = []
    settings: list[tuple[str, float, list[int] | None]] = []
    for layers in layer_sets:
        for s in strengths:
            settings.append(("steer", float(s), list(layers) if layers else None))
    if system_prompt:
        settings.append(("prompt", 0.0, None))
        for layers in layer_sets:
            for s in strengths:
                if s != 0:
                    settings.append(("prompt+steer", float(s), list(layers) if layers else None))
    steer_rows: dict[tuple, dict[str, Any]] = {}
    for i, (setting, s, layers) in enumerate(settings):
        row_key = (setting, s, tuple(layers) if layers else None)
        old = done.get(row_key)
        if old is not None and _reusable(old, _expected(data, setting, detectors, judge), max_new_tokens):
            rows.append(old)
            if setting == "steer":
                steer_rows[row_key[1:]] = old
            continue
        if log:
            log(f"[{i + 1}/{len(settings)}] {setting} strength {s:+g} layers {layers or list(vector.default_layers)}")
        with pass_meter(loaded, f"[{i + 1}/{len(settings)}] {setting} {s:+g}", enabled=progress):
            row, answers = measure(loaded, vector, data, setting=setting, strength=s, layers=layers,
                                   system_prompt=system_prompt, max_new_tokens=max_new_tokens, detectors=detectors,
                                   bounds=bounds, batch_size=batch_size, force=force,
                                   reuse=steer_rows.get(row_key[1:]) if setting == "prompt+steer" else None,
                                   judge=judge, engine=engine)
        if setting == "steer":
            steer_rows[row_key[1:]] = row
        rows.append(row)
        _append(path, [row])
        _append(apath, answers)
    return rows


def evaluate(loaded: LoadedModel, vector: Vector, data: SweepData, *, strengths: Sequence[float],
             layers: Sequence[int] | None = None, system_prompt: str | None = None, baseline: bool = True,
             answers_path: str | Path | None = None, batch_size: int = 8, max_new_tokens: int = 48,
             detectors: Sequence[Detector] = (), bounds: CoherenceBounds = CoherenceBounds(),
             force: bool = False, log: Callable[[str], None] | None = None,
             judge: Judge | None = None, engine: Engine | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """``steerwatch eval``: the rows of :func:`sweep` at the given strengths on one layer set (the
    vector's default layers when None), with the unsteered row first when ``baseline``; no
    recommendation, nothing resumed."""
    grid = [float(s) for s in strengths]
    if baseline and 0.0 not in grid:
        grid = [0.0, *grid]
    return sweep(loaded, vector, data, strengths=grid, layer_sets=[layers], system_prompt=system_prompt,
                 answers_path=answers_path, batch_size=batch_size, max_new_tokens=max_new_tokens,
                 detectors=detectors, bounds=bounds, force=force, log=log, judge=judge, engine=engine,
                 progress=progress)


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Rows as CSV when ``path`` ends in .csv (lists joined by commas, None empty), else JSON Lines."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix.lower() == ".csv":
        cols: list[str] = []
        for r in rows:
            cols += [k for k in r if k not in cols]
        with p.open("w", encoding="utf-8", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            for r in rows:
                w.writerow({k: (",".join(map(str, v)) if isinstance(v, (list, tuple)) else "" if v is None else v)
                            for k, v in r.items()})
    else:
        p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def objective_columns(objective: str) -> list[str]:
    """``"behaviour"`` or a sum of row columns such as ``"share_corrected+share_rejected"``."""
    cols = [c.strip() for c in str(objective).split("+")]
    if not cols or not all(cols):
        raise SteerwatchError(f"objective must be a row column or a sum of columns like "
                              f"share_corrected+share_rejected, got {objective!r}")
    return cols


def _objective(row: dict[str, Any], cols: Sequence[str]) -> float:
    return sum(float(row[c]) for c in cols)


def recommend(rows: Sequence[dict[str, Any]], *, direction: int = 1, max_kl: float = DEFAULT_MAX_KL,
              max_capability_drop: float = DEFAULT_MAX_CAPABILITY_DROP, objective: str = "behaviour") -> dict[str, Any]:
    """The steering row with the largest shift of ``objective`` in ``direction`` (+1: raise it,
    -1: lower it) among rows whose KL <= ``max_kl`` and whose capability accuracy is at most
    ``max_capability_drop`` below the unsteered row's. ``objective``: ``behaviour`` (the A/B
    probability, default) or any numeric row column, or a sum of them (e.g.
    ``share_corrected+share_rejected``: answers that do not go along with a false claim, evasions
    not counted). Returns the evidence; ``strength`` is None when no non-zero strength fits the
    budget and moves the objective the wanted way."""
    if direction not in (1, -1):
        raise SteerwatchError(f"direction must be +1 or -1, got {direction}")
    cols = objective_columns(objective)
    steer_rows = [r for r in rows if r["setting"] == "steer"]
    base = next((r for r in steer_rows if r["strength"] == 0), None)
    if base is None:
        raise SteerwatchError("the sweep needs a strength-0 row (the unsteered baseline) to recommend from")
    missing = [k for k in ("mc_acc", *cols) if k not in base or base[k] is None]
    if missing:
        hint = {"behaviour": "sweep with A/B items (--ab)", "mc_acc": "keep a capability set"}
        raise SteerwatchError(f"a recommendation needs {', '.join(missing)} in the rows: "
                              + "; ".join(hint.get(k, f"no row column {k!r} (open-ended shares need --open)")
                                          for k in missing))
    for r in steer_rows:
        if any(r.get(c) is None for c in cols):
            raise SteerwatchError(f"the row at strength {r['strength']:+g} lacks {objective}: rerun the sweep "
                                  "with the same data for every setting")
    ok: list[tuple[dict[str, Any], list[str]]] = []
    rejected: list[tuple[dict[str, Any], list[str]]] = []
    uncertain: list[float] = []  # strengths whose KL 95 % interval contains the budget
    for r in steer_rows:
        if r["strength"] == 0:
            continue
        reasons: list[str] = []
        if r.get("kl", 0.0) > max_kl:
            reasons.append(f"KL {r['kl']:.3f} > {max_kl}")
        if base["mc_acc"] - r["mc_acc"] > max_capability_drop + 1e-12:
            reasons.append(f"capability drop {base['mc_acc'] - r['mc_acc']:.3f} > {max_capability_drop}")
        (rejected if reasons else ok).append((r, reasons))
        ci = r.get("kl_ci95")
        if ci and ci[0] is not None and ci[1] is not None and ci[0] <= max_kl <= ci[1]:
            uncertain.append(r["strength"])
    b0 = _objective(base, cols)
    best = max(ok, key=lambda t: (direction * (_objective(t[0], cols) - b0), -abs(t[0]["strength"])), default=None)
    prompt = next((r for r in rows if r["setting"] == "prompt"), None)
    out: dict[str, Any] = {
        "budget": {"max_kl": max_kl, "max_capability_drop": max_capability_drop}, "direction": direction,
        "objective": objective,
        "baseline": {"value": b0, "behaviour": base.get("behaviour"), "mc_acc": base["mc_acc"], "ppl": base.get("ppl")},
        "rejected": [{"strength": r["strength"], "layers": r["resolved_layers"], "why": w} for r, w in rejected],
    }
    if uncertain:
        out["kl_budget_uncertain"] = uncertain
    if best is None or direction * (_objective(best[0], cols) - b0) <= 0:
        out.update(strength=None, reason=f"no strength within the budget moves {objective} in the wanted direction")
        return out
    r = best[0]
    out.update(strength=r["strength"], layers=r["resolved_layers"], value=_objective(r, cols),
               shift=_objective(r, cols) - b0, behaviour=r.get("behaviour"), kl=r.get("kl"), mc_acc=r["mc_acc"],
               capability_change=r["mc_acc"] - base["mc_acc"], ppl=r.get("ppl"))
    if base.get("behaviour") is not None and r.get("behaviour") is not None:
        out["behaviour_shift"] = r["behaviour"] - base["behaviour"]
    if prompt is not None and all(prompt.get(c) is not None for c in cols):
        out["prompting"] = {"value": _objective(prompt, cols), "shift": _objective(prompt, cols) - b0,
                            "behaviour": prompt.get("behaviour"), "mc_acc": prompt.get("mc_acc")}
        out["beats_prompting"] = direction * (_objective(r, cols) - _objective(prompt, cols)) > 0
    return out


def apply_recommendation(vector: Vector, rec: dict[str, Any]) -> Vector:
    """Write the recommended strength (and the evidence) into the vector's metadata."""
    vector.recommended_strength = rec.get("strength")
    vector.extra = {**vector.extra, "recommendation": rec}
    return vector


def sample_answers(loaded: LoadedModel, vector: Vector, prompts: Sequence[Any], strengths: Sequence[float], *,
                   max_new_tokens: int = 48, batch_size: int = 8, engine: Engine | None = None) -> list[dict[str, Any]]:
    """The vector's answers to ``prompts`` at each strength (0: unsteered), for a report's sample
    table: rows ``{"strength", "prompt", "output"}``."""
    from ..runtime import GenerationOptions, generate_text
    from ..steer import SteerSpec

    rows = []
    for strength in strengths:
        spec = [SteerSpec(vector, strength=strength)] if strength else None
        if engine is not None:
            opts = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size)
            outs = [g.text for g in engine.generate(prompts, opts, steer=spec)]
        else:
            outs = generate_text(loaded, prompts, steer=spec, max_new_tokens=max_new_tokens, batch_size=batch_size)
        rows += [{"strength": strength, "prompt": p, "output": o} for p, o in zip(prompts, outs)]
    return rows
