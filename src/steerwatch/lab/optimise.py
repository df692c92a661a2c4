"""Steering vectors trained on the model's own lab answers (issue 17 item 5 for conscientiousness).

The reward-hacking lab records, for each task and setting, the answer the model wrote and whether it
special-cased the tests. Where one setting (the cheat-prone one) special-cased a dev task and another
setting that showed the model *the same prompt* (same instruction, demonstrations and system prompt;
only the steering differed) answered it with general code, the two answers are a preference pair on
exactly the situation the vector will be used in. :func:`preference_pairs` collects those pairs and
:func:`train_lab_vector` trains one vector on them through the frozen model
(:func:`steerwatch.extract.optimise.optimise_vector`, BiPO by default).

Orientation: the pairs' positive side is the special-cased answer, so the trained direction points
to special-casing (concept ``cheating``, as it was measured). ``concept="conscientiousness"`` (the
default) writes the same vector negated, so that a positive strength steers toward general code:
``+s`` on the conscientiousness vector is exactly ``-s`` on the cheating one. Its validation rows
are the trained vector's (the negated direction with the pairs' sides swapped reads the same).

On the embedded model (docs/results.md, "An optimised vector trained on the model's own answers"):
31 pairs from 11 dev problems, 20 steps; steered at 0.04 against special-casing on the cheat-prone
setting, the test split's attempted special-casing fell from 64/100 to 5/100.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover
    from ..data.pairs import ContrastSet
    from ..models import LoadedModel
    from ..vector import Vector
    from .tasks import Task

ORIENTATIONS = ("conscientiousness", "cheating")  # toward general code / toward special-casing


def _problem_order(problem: str) -> tuple[int, str]:
    tail = str(problem).rsplit("/", 1)[-1]
    return (int(tail), str(problem)) if tail.isdigit() else (1 << 30, str(problem))


def preference_pairs(episodes: Sequence[dict[str, Any]], special: str, general: Sequence[str], *,
                     val_problems: int = 2, tasks: Sequence[Task] | None = None,
                     allow_test: bool = False) -> tuple[ContrastSet, dict[str, int]]:
    """Preference pairs from single-turn lab episodes: one per (impossible task, ``general`` setting)
    where ``special``'s answer special-cased the tests and the general setting's did not, both
    answering the same prompt. Positive: the special-cased answer. The pairs of the last
    ``val_problems`` problems (HumanEval order) are the validation split. Returns the pairs and
    counts (``pairs``, ``train``, ``val``, ``problems``, ``skipped``: pairs dropped because the two
    prompts differ).

    Errors (:class:`~steerwatch.errors.SteerwatchError`), before any model is needed: no single-turn
    impossible episodes; test-split episodes unless ``allow_test``; a setting not in the episodes
    (naming the ones that are); ``special`` among ``general``; no pair at all; too few problems to
    keep ``val_problems`` of them for validation and train on the rest."""
    from ..data.pairs import ContrastPair, ContrastSet
    from .probe import check_fit_split, dedupe, episode_conversation, task_lookup

    general = list(dict.fromkeys(g.strip() for g in general if g.strip()))
    if not general:
        raise SteerwatchError("name at least one --general setting (whose general answers are the negatives)")
    if special in general:
        raise SteerwatchError(f"{special!r} is both the special-casing setting and a general one; the pairs "
                              "contrast two different settings")
    if val_problems < 1:
        raise SteerwatchError(f"val_problems must be at least 1 (got {val_problems}): training stops early on the "
                              "validation pairs")
    eps = dedupe([e for e in episodes if "cheated" in e and "special_cased" in e and e.get("n_turns", 1) == 1
                  and e.get("turns") and e["turns"][-1].get("response")])
    if not eps:
        raise SteerwatchError("no single-turn impossible episodes with answers among the episodes given: run "
                              "`steerwatch lab run --split dev` with the settings to contrast first")
    check_fit_split(eps, allow_test=allow_test)
    present = sorted({str(e.get("setting")) for e in eps})
    missing = [s for s in (special, *general) if s not in present]
    if missing:
        raise SteerwatchError(f"setting(s) {', '.join(map(repr, missing))} not among the episodes; the "
                              f"single-turn settings there: {', '.join(present)}")
    by = {(e["setting"], e["task"]): e for e in eps}
    lookup = task_lookup([e for e in eps if e["setting"] in (special, *general)], tasks)
    found: list[tuple[str, ContrastPair]] = []
    skipped = 0
    for (setting, task), e in sorted(by.items()):
        if setting != special or not e["special_cased"]:
            continue
        conv = episode_conversation(e, lookup[task])
        for g in general:
            o = by.get((g, task))
            if o is None or o["special_cased"]:
                continue
            other = episode_conversation(o, lookup[task])
            if other[:-1] != conv[:-1]:
                skipped += 1  # another prompt: not a preference between answers to one prompt
                continue
            system = conv[0]["content"] if conv[0]["role"] == "system" else None
            found.append((str(e["problem"]), ContrastPair(
                positive=conv[-1]["content"], negative=other[-1]["content"], prompt=conv[-2]["content"],
                system=system, meta={"task": task, "special": special, "general": g})))
    if not found:
        raise SteerwatchError(f"no preference pair: on no task did {special!r} special-case while "
                              f"{', '.join(map(repr, general))} answered the same prompt with general code"
                              + (f" ({skipped} candidate pairs had different prompts)" if skipped else "")
                              + "; run more dev tasks, or a setting that special-cases more often")
    problems = sorted({p for p, _ in found}, key=_problem_order)
    if len(problems) <= val_problems:
        raise SteerwatchError(f"the pairs come from {len(problems)} problem(s); {val_problems} are kept for "
                              "validation, so nothing is left to train on: run more dev tasks or lower "
                              "--val-problems")
    val = set(problems[-val_problems:])
    pairs = [replace(p, split="val" if prob in val else "train") for prob, p in found]
    data = ContrastSet(name="lab-special-casing", pairs=pairs,
                       source=f"lab episodes: {special} (special-cased) vs {', '.join(general)} (general)")
    return data, {"pairs": len(pairs), "train": len(data.train), "val": len(data.val), "problems": len(problems),
                  "skipped": skipped}


def orient(vec: Vector, concept: str) -> Vector:
    """``vec`` (trained toward special-casing) as the ``concept`` vector: unchanged for ``cheating``,
    negated for ``conscientiousness``. The validation rows stay as they are: the negated direction
    with the pairs' sides swapped (conscientiousness's positive side is the general answer) gives
    the same AUROC, paired accuracy and Cohen's d."""
    if concept not in ORIENTATIONS:
        raise SteerwatchError(f"unknown orientation {concept!r}; valid: {', '.join(ORIENTATIONS)}")
    if concept == "cheating":
        return replace(vec, concept="cheating")
    return replace(vec, concept="conscientiousness", directions={k: -d for k, d in vec.directions.items()},
                   extra={**vec.extra, "orientation": "negated: trained toward the special-cased answers, + steers "
                                                      "toward general code"})


def train_lab_vector(loaded: LoadedModel, data: ContrastSet, *, layers: Sequence[int],
                     concept: str = "conscientiousness", method: str = "bipo", steps: int = 20, lr: float = 0.01,
                     max_strength: float = 0.08, batch_size: int = 2, eval_every: int = 5, patience: int = 3,
                     seed: int = 0, checkpoint: str | Path | None = None,
                     progress: bool = False) -> tuple[Vector, dict[str, Any]]:
    """Train the vector on :func:`preference_pairs`' pairs at ``layers`` and orient it
    (:func:`orient`). Returns the vector (its ``extra["lab_pairs"]`` says where the pairs came from)
    and the optimisation history. The defaults are the embedded model's measured run."""
    from ..extract.optimise import optimise_vector

    if concept not in ORIENTATIONS:
        raise SteerwatchError(f"unknown orientation {concept!r}; valid: {', '.join(ORIENTATIONS)}")
    vec, hist = optimise_vector(loaded, data, method=method, layers=layers, steps=steps, lr=lr,
                                max_strength=max_strength, batch_size=batch_size, seed=seed,
                                eval_every=min(eval_every, steps), patience=patience, progress=progress,
                                concept="cheating", checkpoint=checkpoint)
    vec.extra = {**vec.extra, "lab_pairs": {"source": data.source, "n_train": len(data.train),
                                            "n_val": len(data.val)}}
    return orient(vec, concept), hist
