"""Persona-instruction contrast done right.

For each question the model answers twice, once under the positive system prompt and once under
the negative one. The pairs it returns hold the *question and the two answers only*: no system
prompt. Recording then reads the answers (completion_mean), so the instruction cannot carry the
label, and validation pairs carry their label in the completion alone.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..data import ContrastSet, PersonaSpec
    from ..models import LoadedModel


def build_persona_pairs(loaded: LoadedModel, spec: PersonaSpec, *, max_new_tokens: int = 64,
                        all_instructions: bool = False, batch_size: int = 8,
                        progress: bool = False) -> ContrastSet:
    """Generate contrast pairs from a persona spec.

    By default question ``i`` uses instruction pair ``i % n_instructions`` (one pair per question);
    ``all_instructions=True`` crosses every question with every instruction pair.
    """
    from ..data.pairs import ContrastPair, ContrastSet, _hash_split
    from ..runtime import generate_text as generate

    jobs = []  # (question, pos_system, neg_system)
    for qi, q in enumerate(spec.questions):
        insts = spec.instructions if all_instructions else [spec.instructions[qi % len(spec.instructions)]]
        for pos_sys, neg_sys in insts:
            jobs.append((q, pos_sys, neg_sys))
    prompts = [[{"role": "system", "content": s}, {"role": "user", "content": q}] for q, s, _ in jobs]
    prompts += [[{"role": "system", "content": s}, {"role": "user", "content": q}] for q, _, s in jobs]
    answers = generate(loaded, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    n = len(jobs)
    pairs = []
    for (q, _, _), pos, neg in zip(jobs, answers[:n], answers[n:]):
        if not pos.strip() or not neg.strip() or pos.strip() == neg.strip():
            continue  # the instruction made no difference here: not a contrast
        pairs.append(ContrastPair(positive=pos, negative=neg, prompt=q, split=_hash_split(q),
                                  meta={"format": "persona", "generated": True}))
    return ContrastSet(name=spec.name, pairs=pairs, source=f"persona:{spec.source}")
