"""The quality of a generated text, as evals and the server both judge it: repetition and diversity
statistics (no model needed), the bounds beyond which an answer counts as degenerate, and the
unsteered model's perplexity of an answer given its prompt.

Why both statistics and perplexity: a looping answer ("I am here. I am here. I am here.") is *easy*
for a language model to predict (its perplexity falls as the loop repeats), so perplexity alone
passes it; word salad (shuffled or random words) has normal word statistics, so repetition and
distinct-n alone pass it. Repetition catches the first, the model catches the second.

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
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_CHAR_RUN = re.compile(r"(\S)\1*")
_LOOP = re.compile(r"(.{2,40}?)\1{2,}", re.DOTALL)


def words(text: str) -> list[str]:
    """The lower-cased words of a text, as :func:`text_stats` counts them."""
    return _WORD.findall(text.lower())


def _ngrams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def _distinct(ws: Sequence[str], n: int) -> float:
    grams = _ngrams(ws, n)
    return len(set(grams)) / len(grams) if grams else 1.0


def _longest_run(items: Sequence[Any]) -> int:
    best = run = 0
    prev: Any = object()
    for x in items:
        run = run + 1 if x == prev else 1
        prev = x
        best = max(best, run)
    return best


def _longest_loop(text: str) -> int:
    return max((m.end() - m.start() for m in _LOOP.finditer(text) if m.group(1).strip()), default=0)


def text_stats(text: str) -> dict[str, float]:
    """Repetition and diversity statistics of one text (no model needed; see the module doc)."""
    if not isinstance(text, str):
        raise SteerwatchError(f"text_stats takes a string, got {type(text).__name__}")
    stripped = text.strip()
    ws = words(stripped)
    char_run = max((len(m.group(0)) for m in _CHAR_RUN.finditer(stripped)), default=0)
    return {"n_words": float(len(ws)), "n_chars": float(len(stripped)),
            "distinct_1": _distinct(ws, 1), "distinct_2": _distinct(ws, 2),
            "repeat_3gram": 1.0 - _distinct(ws, 3), "repeat_4gram": 1.0 - _distinct(ws, 4),
            "max_word_run": float(_longest_run(ws)), "max_char_run": float(char_run),
            "max_loop_chars": float(_longest_loop(stripped))}


@dataclass(frozen=True)
class CoherenceBounds:
    """Limits beyond which an answer counts as degenerate. ``max_ppl``: the unsteered model's
    perplexity of the answer given its prompt (answer tokens only); only checked for answers with at
    least ``min_words_for_ppl`` words, since a two-word answer's perplexity says little."""

    max_repeat_4gram: float = 0.25
    min_distinct_2: float = 0.5
    max_ppl: float = 60.0
    max_word_run: int = 3
    max_char_run: int = 16
    max_loop_chars: int = 32
    min_words_for_ppl: int = 4

    def __post_init__(self) -> None:
        for name in ("max_repeat_4gram", "min_distinct_2"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise SteerwatchError(f"CoherenceBounds.{name} must be in [0, 1], got {v}")
        for name in ("max_ppl", "max_word_run", "max_char_run", "max_loop_chars"):
            if getattr(self, name) <= 0:
                raise SteerwatchError(f"CoherenceBounds.{name} must be positive, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def is_degenerate(stats: dict[str, float], ppl: float | None = None,
                  bounds: CoherenceBounds = CoherenceBounds()) -> list[str]:
    """The reasons ``stats`` (from :func:`text_stats`) and ``ppl`` (from :func:`answer_ppl`, or
    None to skip the model check) mark an answer as degenerate; empty = coherent."""
    if stats["n_chars"] == 0:
        return ["empty answer"]
    if stats["n_words"] == 0:
        return ["no words"]
    reasons = []
    if stats["repeat_4gram"] > bounds.max_repeat_4gram:
        reasons.append(f"repeated 4-grams {stats['repeat_4gram']:.2f} > {bounds.max_repeat_4gram:g}")
    if stats["distinct_2"] < bounds.min_distinct_2:
        reasons.append(f"distinct bigrams {stats['distinct_2']:.2f} < {bounds.min_distinct_2:g}")
    if stats["max_word_run"] > bounds.max_word_run:
        reasons.append(f"one word {int(stats['max_word_run'])} times in a row > {bounds.max_word_run}")
    if stats["max_char_run"] > bounds.max_char_run:
        reasons.append(f"one character {int(stats['max_char_run'])} times in a row > {bounds.max_char_run}")
    if stats["max_loop_chars"] > bounds.max_loop_chars:
        reasons.append(f"a loop of {int(stats['max_loop_chars'])} characters > {bounds.max_loop_chars}")
    if ppl is not None and stats["n_words"] >= bounds.min_words_for_ppl and not ppl <= bounds.max_ppl:
        reasons.append(f"unsteered perplexity {ppl:.1f} > {bounds.max_ppl:g}")
    return reasons


def incoherence(text: str, bounds: CoherenceBounds = CoherenceBounds()) -> list[str]:
    """The reasons a generated ``text`` looks incoherent by its text statistics alone (no model, so
    no perplexity check: word salad can pass); empty = it looks fine."""
    return is_degenerate(text_stats(text), None, bounds)


def continuation_nll(loaded: LoadedModel, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                     batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, number of tokens) of each continuation given its
    prompt, ``seqs`` = ``(prompt_ids, continuation_ids)``, teacher-forced; the vocabulary is
    projected only at the continuation's positions. Hooks the caller attached stay active."""
    import torch

    from ..batch import forward, length_batches

    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    todo = [i for i, (p, c) in enumerate(seqs) if len(p) and len(c)]
    full = [list(seqs[i][0]) + list(seqs[i][1]) for i in todo]
    for batch in length_batches([len(f) for f in full], batch_size):
        positions = [list(range(len(seqs[todo[k]][0]) - 1, len(full[k]) - 1)) for k in batch]
        logits = forward(loaded, [full[k] for k in batch], logits_at=positions)
        assert logits is not None  # logits_at asks for them
        for r, k in enumerate(batch):
            targets = torch.tensor(list(seqs[todo[k]][1]), dtype=torch.long)
            lp = torch.log_softmax(logits[r, :len(targets)].double(), dim=-1)  # (n, vocab), one row at a time
            got = lp.gather(1, targets[:, None]).squeeze(1)
            out[todo[k]] = (float(-got.sum()), len(targets))
    return out


def continuation_ppl(loaded: LoadedModel, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> float:
    """The perplexity of ``new_ids`` after ``prompt_ids`` (NaN for no tokens): with no steering
    attached, the unsteered model's judgement of a steered answer (the server's degeneration guard)."""
    nll, n = continuation_nll(loaded, [(prompt_ids, new_ids)])[0]
    return math.exp(nll / n) if n else math.nan
