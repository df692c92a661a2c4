"""Teacher-forced metrics for evaluating a dose: A/B behaviour probability, next-token KL against
the unsteered model, perplexity on reference text, multiple-choice accuracy.

Every function takes ``steer`` (a list of :class:`~steerwatch.steer.SteerSpec`, or None for the
unsteered model) and returns per-item values, so sweeps can aggregate them into tidy rows.
"""
from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..batch import forward, length_batches
from ..errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover

    from ..data.reference import MCItem
    from ..models import LoadedModel
    from ..steer import SteerSpec


@contextlib.contextmanager
def _maybe_steer(loaded: LoadedModel, steer: Sequence[SteerSpec] | None, force: bool) -> Iterator[None]:
    if not steer:
        yield
        return
    from ..steer import steering

    with steering(loaded, list(steer), force=force):
        yield


def _letter_ids(loaded: LoadedModel, letters: str) -> list[int]:
    out = []
    for x in letters:
        ids = loaded.tokenizer(x, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise SteerwatchError(f"the answer letter {x!r} is not a single token for this tokenizer")
        out.append(ids[0])
    return out


def _choice_prompt_ids(loaded: LoadedModel, question: str, system: str | None = None) -> list[int]:
    """The question as a user message, then the assistant's answer opened with "(" so that the next
    token is the answer letter (the convention of the CAA A/B data)."""
    from ..chat import encode_example

    enc = encode_example(loaded.tokenizer, prompt=question, completion="(", system=system)
    return enc.ids


def letter_probs(loaded: LoadedModel, questions: Sequence[str], letters: Sequence[str], *,
                 steer: Sequence[SteerSpec] | None = None, batch_size: int = 8,
                 force: bool = False, system: str | None = None) -> list[list[float]]:
    """For each question, the probability of each answer letter, normalised over ``letters[i]``
    (e.g. "AB" or "ABCD"). ``system``: a system prompt (the prompting baseline)."""
    import torch

    seqs = [_choice_prompt_ids(loaded, q, system) for q in questions]
    out: list[list[float] | None] = [None] * len(seqs)
    with _maybe_steer(loaded, steer, force):
        for idx in length_batches([len(s) for s in seqs], batch_size):
            logits = forward(loaded, [seqs[i] for i in idx], logits_at=[[len(seqs[i]) - 1] for i in idx])
            assert logits is not None  # logits_at asks for them
            for r, i in enumerate(idx):
                ids = _letter_ids(loaded, letters[i])
                last = logits[r, 0, ids]
                out[i] = torch.softmax(last.double(), -1).tolist()
    return [o for o in out if o is not None]


_AB_TAIL = re.compile(r"(\n[ \t]*)\(A\)[ \t]*([^\n]*)(\n[ \t]*)\(B\)[ \t]*([^\n]*?)(\s*)\Z")
AB_ORDERS = ("given", "both")


def _ab_letters(items: Sequence[dict[str, Any]]) -> list[int]:
    match = []
    for k, it in enumerate(items):
        m = str(it.get("answer_matching_behavior", "")).strip().strip("()").strip()
        n = str(it.get("answer_not_matching_behavior", "")).strip().strip("()").strip()
        if m not in "AB" or n not in "AB" or len(m) != 1 or m == n:
            raise SteerwatchError(f"item {k + 1}: answer_matching_behavior/answer_not_matching_behavior must be "
                                  f"'(A)' and '(B)' in some order, got {it.get('answer_matching_behavior')!r} / "
                                  f"{it.get('answer_not_matching_behavior')!r}")
        match.append("AB".index(m))
    return match


def swap_ab(item: dict[str, Any], *, index: int = 0) -> dict[str, Any]:
    """The item with its two options swapped: the question's trailing ``(A) x`` / ``(B) y`` lines
    become ``(A) y`` / ``(B) x`` and the behaviour-matching letter flips. The options must end the
    question, one line each (as in the CAA files)."""
    q = str(item.get("question", ""))
    m = _AB_TAIL.search(q)
    if m is None or not m.group(2).strip() or not m.group(4).strip():
        raise SteerwatchError(f"item {index + 1}: cannot swap the answer order: the question must end with an "
                              "'(A) ...' line and a '(B) ...' line (use --ab-orders given for other layouts)")
    lead_a, text_a, lead_b, text_b, tail = m.groups()
    swapped = q[:m.start()] + f"{lead_a}(A) {text_b.strip()}{lead_b}(B) {text_a.strip()}{tail}"
    flip = {"(A)": "(B)", "(B)": "(A)"}
    mb = "(" + "AB"[_ab_letters([item])[0]] + ")"
    return {**item, "question": swapped, "answer_matching_behavior": flip[mb], "answer_not_matching_behavior": mb}


def ab_behaviour_probs(loaded: LoadedModel, items: Sequence[dict[str, Any]], *,
                       steer: Sequence[SteerSpec] | None = None, batch_size: int = 8,
                       force: bool = False, system: str | None = None, orders: str = "given") -> list[float]:
    """CAA A/B items (``question``, ``answer_matching_behavior`` like "(A)"): the probability of the
    behaviour-matching letter, normalised over A and B.

    ``orders="both"``: each item is also asked with its two options swapped (:func:`swap_ab`) and
    the two probabilities of the behaviour-matching answer are averaged. A model that prefers one
    letter whatever it says (small models often do) then scores 0.5 on an item instead of its
    letter preference, so what is left is the preference for the answer's content."""
    if orders not in AB_ORDERS:
        raise SteerwatchError(f"orders must be one of {', '.join(AB_ORDERS)}, got {orders!r}")
    match = _ab_letters(items)
    asked = list(items)
    if orders == "both":
        asked += [swap_ab(it, index=k) for k, it in enumerate(items)]
        match += [1 - j for j in match]
    probs = letter_probs(loaded, [it["question"] for it in asked], ["AB"] * len(asked), steer=steer,
                         batch_size=batch_size, force=force, system=system)
    got = [p[j] for p, j in zip(probs, match)]
    if orders == "both":
        n = len(items)
        return [(got[i] + got[n + i]) / 2 for i in range(n)]
    return got


MC_SCORINGS = ("cloze", "letters")


def mc_correct(loaded: LoadedModel, items: Sequence[MCItem], *, steer: Sequence[SteerSpec] | None = None,
               batch_size: int = 8, force: bool = False, system: str | None = None,
               scoring: str = "cloze") -> list[bool]:
    """Whether the model's answer is the key, per item.

    ``scoring="cloze"`` (default): the answer is the choice whose text is most likely as the
    assistant's reply to the question (sum of token log-probabilities; the options are not shown),
    the "acc" of common evaluation harnesses. ``"letters"``: the options are shown lettered and
    the answer is the most probable letter after "(". Small models often answer one letter
    whatever the question (the embedded model says "B" with p ~ 0.9 on every item, so letter
    accuracy is just the share of B keys); cloze scoring does not depend on letter habits."""
    if scoring not in MC_SCORINGS:
        raise SteerwatchError(f"capability scoring must be one of {', '.join(MC_SCORINGS)}, got {scoring!r}")
    if scoring == "letters":
        probs = letter_probs(loaded, [it.render() for it in items], [it.letters for it in items], steer=steer,
                             batch_size=batch_size, force=force, system=system)
        return [max(range(len(p)), key=p.__getitem__) == it.answer for p, it in zip(probs, items)]
    prompts = [it.question for it in items for _ in it.choices]
    answers = [c for it in items for c in it.choices]
    nll = completion_nll(loaded, prompts, answers, system=system, steer=steer, batch_size=batch_size, force=force)
    out, k = [], 0
    for it in items:
        scores = [-nll[k + j][0] for j in range(len(it.choices))]
        k += len(it.choices)
        out.append(max(range(len(scores)), key=scores.__getitem__) == it.answer)
    return out


def next_token_kl(loaded: LoadedModel, prompts: Sequence[str], *, steer: Sequence[SteerSpec] | None,
                  batch_size: int = 8, force: bool = False) -> list[float]:
    """Mean KL(unsteered || steered) of the next-token distributions over every position of each
    chat-formatted prompt, in nats per token. Exactly 0 without steering."""
    import torch

    from ..chat import encode_prompt, render_prompt

    seqs = [encode_prompt(loaded.tokenizer, render_prompt(loaded.tokenizer, p)) for p in prompts]
    out: list[float] = [0.0] * len(seqs)
    if not steer:
        return out
    for idx in length_batches([len(s) for s in seqs], batch_size):
        batch = [seqs[i] for i in idx]
        base = forward(loaded, batch, logits=True)
        with _maybe_steer(loaded, steer, force):
            steered = forward(loaded, batch, logits=True)
        assert base is not None and steered is not None
        lp, lq = torch.log_softmax(base, -1), torch.log_softmax(steered, -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)  # (b, width)
        for r, i in enumerate(idx):
            n = len(seqs[i])
            out[i] = float(kl[r, :n].mean().clamp_min(0.0))
    return out


def text_nll(loaded: LoadedModel, texts: Sequence[str], *, steer: Sequence[SteerSpec] | None = None,
             batch_size: int = 4, force: bool = False) -> list[tuple[float, int]]:
    """(total negative log-likelihood in nats, number of predicted tokens) per text, plain text
    with the tokenizer's own special tokens. Perplexity = exp(sum nll / sum tokens)."""
    import torch

    seqs = [list(loaded.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    for t, s in zip(texts, seqs):
        if len(s) < 2:
            raise SteerwatchError(f"reference text too short to score: {t[:40]!r}")
    out: list[tuple[float, int] | None] = [None] * len(seqs)
    with _maybe_steer(loaded, steer, force):
        for idx in length_batches([len(s) for s in seqs], batch_size):
            logits = forward(loaded, [seqs[i] for i in idx], logits=True)
            assert logits is not None
            for r, i in enumerate(idx):
                n = len(seqs[i])
                nll = torch.nn.functional.cross_entropy(logits[r, : n - 1].double(), torch.tensor(seqs[i][1:]),
                                                        reduction="sum")
                out[i] = (float(nll), n - 1)
    return [o for o in out if o is not None]


def perplexity(nlls: Sequence[tuple[float, int]]) -> float:
    import math

    total, count = sum(x for x, _ in nlls), sum(n for _, n in nlls)
    return math.exp(total / count)


def completion_nll(loaded: LoadedModel, prompts: Sequence[str], completions: Sequence[str], *,
                   system: str | None = None, steer: Sequence[SteerSpec] | None = None, batch_size: int = 8,
                   force: bool = False) -> list[tuple[float, int]]:
    """(total negative log-likelihood in nats, number of tokens) of each completion given its
    prompt, teacher-forced: the prompt as a chat-templated user message (after ``system`` when
    given), the completion as the assistant's reply; only the completion's tokens are scored (no
    end-of-turn token, since a completion may have been cut at a token limit). An empty completion
    gives ``(0.0, 0)``."""
    from ..chat import encode_example
    from ..watch.quality import continuation_nll

    if len(prompts) != len(completions):
        raise SteerwatchError(f"{len(prompts)} prompts but {len(completions)} completions; give one completion "
                              "per prompt")
    encs = [encode_example(loaded.tokenizer, prompt=p, completion=c, system=system) if c.strip() else None
            for p, c in zip(prompts, completions)]
    seqs = [(e.ids[:e.span[0]], e.ids[e.span[0]:e.span[1]]) if e is not None else ([], []) for e in encs]
    with _maybe_steer(loaded, steer, force):
        return continuation_nll(loaded, seqs, batch_size=batch_size)
