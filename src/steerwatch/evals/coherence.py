"""Is a generated answer still coherent text? Pure text statistics plus the unsteered model's own
perplexity of the answer (the statistics and bounds live in :mod:`steerwatch.watch.quality`,
which the server's degeneration guard uses too; they are re-exported here).

Why both: a looping answer ("I am here. I am here. I am here.") is *easy* for a language model to
predict (its perplexity falls as the loop repeats), so perplexity alone passes it; word salad
(shuffled or random words) has normal word statistics, so repetition and distinct-n alone pass it.
Repetition catches the first, the model catches the second.

Text statistics (:func:`text_stats`), over lower-cased words (runs of letters/digits, with inner
apostrophes: "don't" is one word); a text with no n-grams of some length has ``distinct_n = 1``
and ``repeat_n = 0`` (nothing repeated):

- ``n_words``, ``n_chars`` (after stripping surrounding whitespace);
- ``distinct_1``, ``distinct_2``: distinct words / words, distinct word bigrams / bigrams;
- ``repeat_3gram``, ``repeat_4gram``: the share of word 3-/4-gram occurrences that repeat an
  earlier one (``1 - distinct_n``);
- ``max_word_run``: the longest run of one word repeated back to back ("the the the" = 3);
- ``max_char_run``: the longest run of one non-space character ("!!!!!" = 5);
- ``max_loop_chars``: the length in characters of the longest stretch made of one unit of 2-40
  characters (not all whitespace) repeated at least three times back to back (``",",",",`` = 8,
  "na na na na" = 9): loops of punctuation or word fragments that the word statistics miss.

Default bounds (:class:`CoherenceBounds`) were measured on the embedded model (Qwen2.5-Coder-0.5B
Instruct): its own answers to the bait and neutral prompts against constructed and steered
degenerate texts; the figures are in docs/evals.md.
"""
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
