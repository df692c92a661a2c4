"""Is a generated answer still coherent text? Its text statistics (repetition, diversity, loops)
and the unsteered model's own perplexity of the answer, judged against bounds. The statistics,
the bounds and why both are needed are in :mod:`steerwatch.watch.quality` (the server's
degeneration guard uses them too); they are re-exported here. This module adds the per-answer
rows the evals use."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from ..watch.quality import CoherenceBounds, is_degenerate, text_stats, words
from .metrics import completion_nll

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel

__all__ = ["CoherenceBounds", "answer_ppl", "coherence_rows", "is_degenerate", "text_stats", "words"]


def answer_ppl(loaded: LoadedModel, prompts: Sequence[str], answers: Sequence[str], *, system: str | None = None,
               batch_size: int = 8) -> list[float]:
    """The model's perplexity of each answer given its prompt (teacher-forced, chat-templated,
    answer tokens only); NaN for an empty answer.

    This is meant to be the *unsteered* model's judgement: no steering is attached here, but hooks
    the caller attached (``steer.attach`` handles, ``steering(...)`` blocks) stay active, so call it
    outside any steering context (read-only watch hooks do not matter)."""
    nll = completion_nll(loaded, prompts, answers, system=system, batch_size=batch_size)
    return [math.exp(total / n) if n else math.nan for total, n in nll]


def coherence_rows(loaded: LoadedModel | None, prompts: Sequence[str], answers: Sequence[str], *,
                   bounds: CoherenceBounds = CoherenceBounds(), system: str | None = None,
                   batch_size: int = 8) -> list[dict[str, Any]]:
    """One row per answer: its text statistics, the unsteered ``ppl`` (None when ``loaded`` is
    None or the answer is empty), ``reasons`` and ``coherent``."""
    if len(prompts) != len(answers):
        raise SteerwatchError(f"{len(prompts)} prompts but {len(answers)} answers; give one answer per prompt")
    ppls: list[float | None] = [None] * len(answers)
    if loaded is not None:
        ppls = [None if math.isnan(p) else p for p in answer_ppl(loaded, prompts, answers, system=system,
                                                                   batch_size=batch_size)]
    rows = []
    for ans, ppl in zip(answers, ppls):
        stats = text_stats(ans)
        reasons = is_degenerate(stats, ppl, bounds)
        rows.append({**stats, "ppl": ppl, "reasons": reasons, "coherent": not reasons})
    return rows
