"""Open-ended behaviour at one setting: generate answers to a prompt set (steered and/or under a
system prompt), then score them *unsteered*: the rule scorer (corrected / rejected / agreed /
evasive, for false-premise prompts with truth markers), the coherence measure, and optionally
detector scores (teacher-forced, unsteered).

:func:`open_ended` returns the summary columns that a sweep row carries and one row per answer.
Summary columns (``n_open`` answers):

- ``share_corrected``, ``share_rejected``, ``share_agreed``, ``share_evasive``: shares of the
  answers (they sum to 1);
- ``coherent``: share of answers the coherence measure passes; ``repeat_4gram``, ``distinct_2``,
  ``answer_words``: means over the answers; ``answer_ppl`` / ``answer_ppl_median``: mean / median
  of the unsteered model's perplexity of each non-empty answer given its prompt;
- per detector ``NAME``: ``det_NAME``, the mean response score, and, when the detector is
  calibrated, ``det_NAME_flagged``, the share of answers above its threshold;
- ``<column>_ci95``: a 95 % interval ``[low, high]`` of each mean (mean ± 1.96 SE over the
  answers) and of the median (order statistics), None for too few answers; see
  :mod:`steerwatch.evals.intervals` (the shares' Wilson intervals follow from the share and ``n_open``);
- with an LLM judge (:class:`~steerwatch.evals.judge.Judge`): ``judge_share_<outcome>`` over the
  answers it could label, ``judge_unparsed``, ``n_judged``, ``judge_model`` and
  ``judge_rule_agreement`` (the share of labelled answers where judge and rule scorer agree).
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from .coherence import CoherenceBounds, coherence_rows
from .intervals import CI_SUFFIX, mean_ci95, median_ci95
from .rules import OUTCOMES, classify_answer

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..runtime import Engine
    from ..steer import SteerSpec
    from ..watch.detector import Detector
    from .bait import BaitItem
    from .judge import Judge


def open_columns(detectors: Sequence[Detector] = (), judge: Judge | None = None) -> list[str]:
    """The summary columns a row gets from :func:`open_ended` (calibration-dependent ones aside)."""
    cols = (["n_open", *(f"share_{o}" for o in OUTCOMES), "coherent", "repeat_4gram", "distinct_2",
             "answer_words", "answer_ppl", "answer_ppl_median"] + [f"det_{d.name}" for d in detectors])
    if judge is not None:
        cols += [*(f"judge_share_{o}" for o in OUTCOMES), "judge_unparsed", "n_judged", "judge_rule_agreement"]
    return cols


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def detector_scores(loaded: LoadedModel, prompts: Sequence[str], answers: Sequence[str],
                    detectors: Sequence[Detector], *, system: str | None = None, batch_size: int = 4,
                    force: bool = False) -> dict[str, list[float | None]]:
    """Each detector's response score (its own aggregate over the answer's tokens) per answer,
    teacher-forced on the conversation [system], user, assistant; None where the answer is empty.
    Unsteered, like :func:`~steerwatch.evals.coherence.answer_ppl`: call it outside steering."""
    from ..watch.score import score_conversations

    convs = [([{"role": "system", "content": system}] if system else [])
             + [{"role": "user", "content": p}, {"role": "assistant", "content": a}]
             for p, a in zip(prompts, answers)]
    scored = score_conversations(loaded, convs, detectors, batch_size=batch_size, force=force)
    return {d.name: [sc.response_score(d.name, d.aggregate) if a.strip() else None
                     for sc, a in zip(scored, answers)] for d in detectors}


def open_ended(loaded: LoadedModel, items: Sequence[BaitItem], *, steer: Sequence[SteerSpec] | None = None,
               system: str | None = None, max_new_tokens: int = 48, detectors: Sequence[Detector] = (),
               bounds: CoherenceBounds = CoherenceBounds(), batch_size: int = 8, force: bool = False,
               judge: Judge | None = None, engine: Engine | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Answer every item (greedy, steered with ``steer``, under ``system``) and score the answers
    unsteered (and by ``judge``, when given, with each item's true fact as a hint). Returns
    (summary columns, one row per answer). ``engine``: the runtime engine that generates the answers
    (e.g. vLLM; default: the Hugging Face engine on ``loaded``); the scoring stays teacher-forced on
    ``loaded``."""
    from ..runtime import GenerationOptions
    from ..runtime import generate_text as generate

    if not items:
        raise SteerwatchError("the open-ended prompt set is empty; give at least one prompt")
    prompts = [it.prompt for it in items]
    if engine is not None:
        opts = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, system=system)
        answers = [g.text for g in engine.generate(prompts, opts, steer=list(steer) if steer else None, force=force)]
    else:
        answers = generate(loaded, prompts, steer=list(steer) if steer else None, system=system,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, force=force)
    outcomes = [classify_answer(a, it.truth_markers, it.claim) for a, it in zip(answers, items)]
    coh = coherence_rows(loaded, prompts, answers, bounds=bounds, system=system, batch_size=batch_size)
    dets = detector_scores(loaded, prompts, answers, detectors, system=system, batch_size=batch_size,
                           force=force) if detectors else {}
    labels = judge.label_many(prompts, answers, truths=[it.truth or None for it in items],
                              progress=True) if judge is not None else None
    n = len(answers)
    ppls = [c["ppl"] for c in coh if c["ppl"] is not None]
    cols: dict[str, Any] = {"n_open": n, **{f"share_{o}": outcomes.count(o) / n for o in OUTCOMES},
                            "coherent": sum(c["coherent"] for c in coh) / n,
                            "repeat_4gram": _mean([c["repeat_4gram"] for c in coh]),
                            "distinct_2": _mean([c["distinct_2"] for c in coh]),
                            "answer_words": _mean([c["n_words"] for c in coh]),
                            "answer_ppl": _mean(ppls), "answer_ppl_median": statistics.median(ppls) if ppls else None,
                            "max_new_tokens": max_new_tokens}
    spread = {"repeat_4gram": [c["repeat_4gram"] for c in coh], "distinct_2": [c["distinct_2"] for c in coh],
              "answer_words": [c["n_words"] for c in coh], "answer_ppl": ppls}
    cols.update({f"{k}{CI_SUFFIX}": mean_ci95(v) for k, v in spread.items()},
                **{f"answer_ppl_median{CI_SUFFIX}": median_ci95(ppls)})
    for d in detectors:
        vals = [v for v in dets[d.name] if v is not None]
        cols[f"det_{d.name}"] = _mean(vals)
        cols[f"det_{d.name}{CI_SUFFIX}"] = mean_ci95(vals)
        if d.threshold is not None:
            cols[f"det_{d.name}_flagged"] = sum(v > d.threshold for v in vals) / n
    if labels is not None:
        from .judge import agreement, judge_columns

        cols.update(judge_columns(labels), judge_model=judge.model,  # type: ignore[union-attr]
                    judge_rule_agreement=agreement(outcomes, labels)["agreement"])
    rows = []
    for k, (it, a, o, c) in enumerate(zip(items, answers, outcomes, coh)):
        row = {"id": it.id, "prompt": it.prompt, "answer": a, "outcome": o, "coherent": c["coherent"],
               "reasons": c["reasons"], "ppl": c["ppl"], "repeat_4gram": c["repeat_4gram"],
               "distinct_2": c["distinct_2"]}
        row.update({f"det_{name}": vals[k] for name, vals in dets.items()})
        if labels is not None:
            row["judge"] = labels[k]
        rows.append(row)
    return cols, rows
