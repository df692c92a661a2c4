"""The quickstart job, callable from Python: take the honesty recipe's vector where steerwatch
ships one for the model (else build the built-in honesty vector) and build the sycophancy
vector, then answer the team's sycophancy-bait prompts unsteered and steered at a few
strengths, scoring each answer corrected / rejected / agreed / evasive."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .models import LoadedModel
    from .vector import Vector

DEFAULT_STRENGTHS = (0.0, 0.02, 0.03)
# the honesty strength chosen on the bait *dev* split (layers 9-14, docs/results.md), for the
# shipped recipe vector and the built-in one alike; the quickstart reports it on the test split and
# shows its answers side by side
CHOSEN_STRENGTH = 0.03


@dataclass
class QuickstartResult:
    vectors: dict[str, Vector]
    layer_rows: dict[str, list[dict[str, Any]]]
    bait_rows: list[dict[str, Any]]
    summary: list[dict[str, Any]] = field(default_factory=list)
    # the neutral question of each bait item answered unsteered (evals.bait.knowledge_check)
    knowledge: list[dict[str, Any]] = field(default_factory=list)
    # where the honesty vector came from: "shipped" (the dev-chosen recipe's vector that steerwatch
    # ships for this model, steerwatch.evals.recipes) or "built-in" (mean difference, built here)
    honesty_source: str = "built-in"

    def __repr__(self) -> str:
        return (f"<QuickstartResult: vectors {', '.join(self.vectors) or 'none'} · {len(self.bait_rows)} bait answers"
                f" · {len(self.summary)} settings · {len(self.knowledge)} knowledge checks>")


def run_quickstart(loaded: LoadedModel, *, out_dir: str | Path | None = None, steer_concept: str = "honesty",
                   strengths: Sequence[float] = DEFAULT_STRENGTHS, split: str = "test", max_new_tokens: int = 40,
                   batch_size: int = 50, progress: bool = True, honesty: str = "recommended",
                   on_vector: Callable[[str, Vector, list], None] | None = None) -> QuickstartResult:
    """``honesty``: ``"recommended"`` steers with the honesty recipe's vector when steerwatch ships
    one for ``loaded`` (the embedded model; :mod:`steerwatch.evals.recipes`), else with the
    built-in mean-difference vector; ``"builtin"`` always builds the latter."""
    from .data import load_concept
    from .errors import SteerwatchError
    from .evals.bait import flip_rate, knowledge_check, load_bait, run_bait
    from .evals.recipes import shipped_vector
    from .evals.rules import outcome_counts
    from .extract.build import build_vector
    from .extract.build import layer_rows as vector_rows
    from .steer import SteerSpec

    if honesty not in ("recommended", "builtin"):
        raise SteerwatchError(f"honesty must be 'recommended' or 'builtin', got {honesty!r}")
    shipped = shipped_vector(loaded, "honesty") if honesty == "recommended" else None
    vectors, layer_rows = {}, {}
    for concept in ("honesty", "sycophancy"):
        if concept == "honesty" and shipped is not None:
            vec, rows = shipped[0], vector_rows(shipped[0])
        else:
            vec, rows = build_vector(loaded, load_concept(concept), progress=progress)
        vectors[concept] = vec
        layer_rows[concept] = [r.as_dict() for r in rows]
        if out_dir is not None:
            vec.save(Path(out_dir) / f"{concept}.sv")
        if on_vector is not None:
            on_vector(concept, vec, rows)
    vec = vectors[steer_concept]
    items = load_bait(split=split)
    sign = 1.0 if steer_concept == "honesty" else -1.0  # honesty up, sycophancy down
    settings = [(f"{sign * s:+.2f}" if s else "unsteered", [SteerSpec(vec, strength=sign * s)] if s else [])
                for s in strengths]
    bait_rows = run_bait(loaded, items, settings=settings, max_new_tokens=max_new_tokens, batch_size=batch_size,
                         progress=progress)
    knowledge = knowledge_check(loaded, items, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                progress=progress)
    known = {k["id"] for k in knowledge if k["knows"]}
    summary = []
    for name, specs in settings:
        counts = outcome_counts(r["outcome"] for r in bait_rows if r["setting"] == name)
        row: dict[str, Any] = {"setting": name, "n": sum(counts.values()), **counts}
        if specs:  # how the unsteered agreements fared, overall and where the model knows the truth
            row.update(flip_rate(bait_rows, baseline=settings[0][0], setting=name, known=known))
        summary.append(row)
    return QuickstartResult(vectors=vectors, layer_rows=layer_rows, bait_rows=bait_rows, summary=summary,
                            knowledge=knowledge, honesty_source="shipped" if shipped is not None else "built-in")
