"""Dose-response sweeps over strengths (and layer sets), with side effects and a prompting
baseline, as tidy rows; and the recommendation of a strength under a side-effect budget.

Rows (one per setting) carry: ``setting`` (``steer``, ``prompt`` or ``prompt+steer``),
``strength``, ``layers``, ``behaviour`` (mean probability of the behaviour-matching A/B answer),
``kl`` (nats/token vs. unsteered on neutral prompts; steering rows only), ``ppl`` (perplexity of
the neutral reference text), ``mc_acc`` (capability accuracy), and the item counts. Rows are
appended to a JSON Lines file as they are computed, and a rerun skips settings already there
(resumable).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ..errors import SteerwatchError
from .metrics import ab_behaviour_probs, mc_correct, next_token_kl, perplexity, text_nll

if TYPE_CHECKING:  # pragma: no cover
    from ..data.reference import MCItem
    from ..models import LoadedModel
    from ..vector import Vector


@dataclass
class SweepData:
    ab_items: list[dict[str, Any]]
    neutral_prompts: list[str]
    reference_texts: list[str]
    mc_items: "list[MCItem]"


def _key(row: dict[str, Any]) -> tuple:
    return (row["setting"], float(row["strength"]), tuple(row["layers"]) if row["layers"] else None)


def sweep(loaded: "LoadedModel", vector: "Vector", data: SweepData, *, strengths: Sequence[float],
          layer_sets: Sequence[Sequence[int] | None] = (None,), system_prompt: str | None = None,
          out_path: str | Path | None = None, batch_size: int = 8, force: bool = False,
          log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate the vector at every (layers, strength); with ``system_prompt``, also the prompting
    baseline (the instruction alone, and together with each steering setting)."""
    from ..steer import SteerSpec

    if not strengths:
        raise SteerwatchError("give at least one strength")
    done: dict[tuple, dict[str, Any]] = {}
    path = Path(out_path) if out_path else None
    if path and path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[_key(row)] = row
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
    for i, (setting, s, layers) in enumerate(settings):
        resolved = layers or list(vector.default_layers)
        row_key = (setting, s, tuple(layers) if layers else None)
        if row_key in done:
            rows.append(done[row_key])
            continue
        if log:
            log(f"[{i + 1}/{len(settings)}] {setting} strength {s:+g} layers {resolved}")
        steer = [SteerSpec(vector, strength=s, layers=tuple(resolved))] if setting != "prompt" and s != 0 else None
        system = system_prompt if setting in ("prompt", "prompt+steer") else None
        behaviour = ab_behaviour_probs(loaded, data.ab_items, steer=steer, batch_size=batch_size, force=force,
                                       system=system)
        row: dict[str, Any] = {"concept": vector.concept, "setting": setting, "strength": s, "layers": layers,
                               "resolved_layers": resolved, "behaviour": sum(behaviour) / len(behaviour),
                               "n_ab": len(behaviour)}
        if setting != "prompt":  # side effects of the vector (the instruction changes the input itself)
            kl = next_token_kl(loaded, data.neutral_prompts, steer=steer, batch_size=batch_size, force=force)
            row["kl"] = sum(kl) / len(kl)
            row["ppl"] = perplexity(text_nll(loaded, data.reference_texts, steer=steer, force=force))
        acc = mc_correct(loaded, data.mc_items, steer=steer, batch_size=batch_size, force=force, system=system)
        row.update(mc_acc=sum(acc) / len(acc), n_mc=len(acc), n_kl=len(data.neutral_prompts),
                   n_ppl=len(data.reference_texts))
        rows.append(row)
        if path:
            with path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
    return rows


def recommend(rows: Sequence[dict[str, Any]], *, direction: int = 1, max_kl: float = 0.1,
              max_capability_drop: float = 0.02) -> dict[str, Any]:
    """The steering row with the largest behaviour shift in ``direction`` (+1: raise the behaviour
    probability, -1: lower it) among rows whose KL <= ``max_kl`` and whose capability accuracy is
    at most ``max_capability_drop`` below the unsteered row's. Returns the evidence; ``strength`` is
    None when no non-zero strength fits the budget."""
    if direction not in (1, -1):
        raise SteerwatchError(f"direction must be +1 or -1, got {direction}")
    steer_rows = [r for r in rows if r["setting"] == "steer"]
    base = next((r for r in steer_rows if r["strength"] == 0), None)
    if base is None:
        raise SteerwatchError("the sweep needs a strength-0 row (the unsteered baseline) to recommend from")
    ok, rejected = [], []
    for r in steer_rows:
        if r["strength"] == 0:
            continue
        reasons = []
        if r.get("kl", 0.0) > max_kl:
            reasons.append(f"KL {r['kl']:.3f} > {max_kl}")
        if base["mc_acc"] - r["mc_acc"] > max_capability_drop + 1e-12:
            reasons.append(f"capability drop {base['mc_acc'] - r['mc_acc']:.3f} > {max_capability_drop}")
        (rejected if reasons else ok).append((r, reasons))
    best = max(ok, key=lambda t: (direction * (t[0]["behaviour"] - base["behaviour"]), -abs(t[0]["strength"])),
               default=None)
    prompt = next((r for r in rows if r["setting"] == "prompt"), None)
    out: dict[str, Any] = {
        "budget": {"max_kl": max_kl, "max_capability_drop": max_capability_drop}, "direction": direction,
        "baseline": {"behaviour": base["behaviour"], "mc_acc": base["mc_acc"], "ppl": base.get("ppl")},
        "rejected": [{"strength": r["strength"], "layers": r["resolved_layers"], "why": w} for r, w in rejected],
    }
    if best is None or direction * (best[0]["behaviour"] - base["behaviour"]) <= 0:
        out.update(strength=None, reason="no strength within the budget moves the behaviour in the wanted direction")
        return out
    r = best[0]
    out.update(strength=r["strength"], layers=r["resolved_layers"], behaviour=r["behaviour"],
               shift=r["behaviour"] - base["behaviour"], kl=r.get("kl"), mc_acc=r["mc_acc"],
               capability_change=r["mc_acc"] - base["mc_acc"], ppl=r.get("ppl"))
    if prompt is not None:
        out["prompting"] = {"behaviour": prompt["behaviour"], "shift": prompt["behaviour"] - base["behaviour"],
                            "mc_acc": prompt["mc_acc"]}
        out["beats_prompting"] = direction * (r["behaviour"] - prompt["behaviour"]) > 0
    return out


def apply_recommendation(vector: "Vector", rec: dict[str, Any]) -> "Vector":
    """Write the recommended strength (and the evidence) into the vector's metadata."""
    vector.recommended_strength = rec.get("strength")
    vector.extra = {**vector.extra, "recommendation": rec}
    return vector
