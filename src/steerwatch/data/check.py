"""Quality checks for contrast sets and reference sets (``steerwatch data check``).

Each check returns a :class:`CheckRow` with status ``pass``, ``warn`` or ``fail``. A failing
check means the data would mislead an extraction or an evaluation (a pair repeated across the
splits, one side systematically longer, ...); a warning is something to read.

The surface-cue checks (first words, hedge words) exist because a vector learns *every*
systematic difference between the sides: an earlier honesty set had hedging only on its honest
side, and its vector made the model hedge instead of answering truthfully.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import SteerwatchError

STATUSES = ("pass", "warn", "fail")
MIN_BUILTIN_PAIRS = 80
NEAR_DUP_JACCARD = 0.7
HEDGE_RE = re.compile(r"not sure|don't know|do not know|uncertain|unsure|can't|cannot|sorry|apolog|\bmight\b"
                      r"|\bmay\b|perhaps|mistake", re.I)


@dataclass
class CheckRow:
    target: str
    check: str
    status: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------- text helpers
def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def _shingles(text: str) -> frozenset:
    words = _norm(text).split()
    if len(words) < 3:
        return frozenset([" ".join(words)])
    return frozenset(" ".join(words[i:i + 2]) for i in range(len(words) - 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / max(1, len(a | b))


def near_duplicates(texts: Sequence[str], *, threshold: float = NEAR_DUP_JACCARD) -> list[tuple[int, int, float]]:
    """Index pairs (i < j) whose word-bigram Jaccard similarity is at least ``threshold``
    (exact duplicates after normalisation score 1.0)."""
    sh = [_shingles(t) for t in texts]
    out = []
    for i in range(len(sh)):
        for j in range(i + 1, len(sh)):
            s = jaccard(sh[i], sh[j])
            if s >= threshold:
                out.append((i, j, s))
    return out


def _first_word(text: str) -> str:
    m = re.match(r"\W*(\w+)", text)
    return m.group(1).lower() if m else ""


def _short(text: str, n: int = 50) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------- contrast sets
def check_pairs(data, *, min_pairs: int = 0) -> list[CheckRow]:
    """All pair checks on a :class:`~steerwatch.data.ContrastSet`."""
    name, pairs = data.name, data.pairs
    rows: list[CheckRow] = []
    add = lambda check, status, detail: rows.append(CheckRow(name, check, status, detail))  # noqa: E731

    n, ntr, nva = len(pairs), len(data.train), len(data.val)
    add("schema", "pass", f"{n} pairs parse ({ntr} train / {nva} val)")
    if min_pairs:
        add("size", "pass" if n >= min_pairs else "fail", f"{n} pairs (at least {min_pairs} required)")

    # label / split balance: each pair carries both labels; what can go wrong is the split
    frac = nva / n if n else 0.0
    fmt_all = Counter(str(p.meta.get("format", "")) for p in pairs)
    fmt_val = Counter(str(p.meta.get("format", "")) for p in data.val)
    missing = sorted(f for f in fmt_all if f and fmt_all[f] >= 5 and fmt_val[f] == 0)
    status = "fail" if nva < 2 or ntr < 2 else ("warn" if not 0.1 <= frac <= 0.4 or missing or nva < 10 else "pass")
    detail = f"{ntr} train / {nva} val ({frac:.0%} val); each pair holds one positive and one negative"
    if missing:
        detail += f"; formats absent from val: {', '.join(missing)}"
    add("label balance", status, detail)

    # exact and near duplicates (whole pair text), and repeated prompts
    keys = [" || ".join(x for x in (p.prompt, p.positive, p.negative) if x) for p in pairs]
    dups = near_duplicates(keys)
    exact = [d for d in dups if d[2] >= 0.999]
    if exact:
        i, j, _ = exact[0]
        add("duplicates", "fail", f"{len(exact)} duplicate pair(s), e.g. #{i + 1} and #{j + 1}: {_short(keys[i])!r}")
    else:
        add("duplicates", "pass", "no duplicate pairs")
    near = [d for d in dups if d[2] < 0.999]
    if near:
        i, j, s = max(near, key=lambda d: d[2])
        add("near-duplicates", "warn", f"{len(near)} near-duplicate pair(s) (word-bigram Jaccard >= "
            f"{NEAR_DUP_JACCARD}); closest #{i + 1}/#{j + 1} ({s:.2f}): {_short(keys[i])!r}")
    else:
        add("near-duplicates", "pass", f"none at word-bigram Jaccard >= {NEAR_DUP_JACCARD}")
    prompts = [p.prompt for p in pairs if p.prompt]
    rep = [pr for pr, c in Counter(_norm(x) for x in prompts).items() if c > 1]
    if rep:
        add("repeated prompts", "warn", f"{len(rep)} prompt(s) used by more than one pair, e.g. {_short(rep[0])!r}")

    # split leakage: the same or a near-identical prompt / pair on both sides of the split
    tr_idx = [i for i, p in enumerate(pairs) if p.split == "train"]
    va_idx = [i for i, p in enumerate(pairs) if p.split == "val"]
    basis = [p.prompt or (p.positive + " " + p.negative) for p in pairs]
    sh = [_shingles(b) for b in basis]
    leaks = [(i, j, jaccard(sh[i], sh[j])) for i in va_idx for j in tr_idx if jaccard(sh[i], sh[j]) >= 0.85]
    if leaks:
        i, j, s = leaks[0]
        add("split leakage", "fail", f"{len(leaks)} val pair(s) nearly repeat a train pair, e.g. val #{i + 1} ~ "
            f"train #{j + 1} ({s:.2f}): {_short(basis[i])!r}")
    else:
        add("split leakage", "pass", "no val prompt repeats a train prompt (word-bigram Jaccard < 0.85)")

    # length balance
    lp = [len(p.positive) for p in pairs]
    ln = [len(p.negative) for p in pairs]
    mean_ratio = (sum(lp) / n) / max(1e-9, sum(ln) / n)
    ratios = [a / max(1, b) for a, b in zip(lp, ln)]
    wide = sum(1 for r in ratios if not 0.67 <= r <= 1.5)
    loose = sum(1 for r in ratios if not 0.8 <= r <= 1.25)
    if abs(mean_ratio - 1) > 0.15 or wide > 0.2 * n:
        status = "fail"
    elif abs(mean_ratio - 1) > 0.05 or wide or loose > 0.1 * n:
        status = "warn"
    else:
        status = "pass"
    add("length balance", status, f"mean chars positive {sum(lp) / n:.0f} vs negative {sum(ln) / n:.0f} "
        f"(ratio {mean_ratio:.2f}); per-pair ratio {min(ratios):.2f}-{max(ratios):.2f}, "
        f"{loose} pair(s) outside 0.8-1.25")

    # surface cues
    fp = Counter(_first_word(p.positive) for p in pairs)
    fn = Counter(_first_word(p.negative) for p in pairs)
    lopsided = sorted((w for w in set(fp) | set(fn) if w and max(fp[w], fn[w]) >= 6
                       and max(fp[w], fn[w]) >= 3 * max(1, min(fp[w], fn[w]))), key=lambda w: -(fp[w] + fn[w]))
    if lopsided:
        add("first words", "warn", "opening word tied to one side: "
            + ", ".join(f"{w!r} {fp[w]} pos / {fn[w]} neg" for w in lopsided[:4]))
    else:
        add("first words", "pass", "no opening word is tied to one side")
    hp = sum(1 for p in pairs if HEDGE_RE.search(p.positive))
    hn = sum(1 for p in pairs if HEDGE_RE.search(p.negative))
    lop = max(hp, hn) >= 6 and max(hp, hn) >= 2 * max(1, min(hp, hn))
    add("hedge words", "warn" if lop else "pass", f"hedging/apology words in {hp} positive vs {hn} negative replies")
    return rows


# ---------------------------------------------------------------- reference sets
def check_conversations(name: str, convs, *, min_items: int = 0, labelled: bool = False) -> list[CheckRow]:
    rows: list[CheckRow] = []
    add = lambda check, status, detail: rows.append(CheckRow(name, check, status, detail))  # noqa: E731
    add("schema", "pass", f"{len(convs)} conversations parse")
    if min_items:
        add("size", "pass" if len(convs) >= min_items else "fail",
            f"{len(convs)} conversations (at least {min_items} required)")
    bad_end = [c.id for c in convs if c.messages[-1]["role"] != "assistant"]
    add("ends with assistant", "warn" if bad_end else "pass",
        f"{len(bad_end)} conversation(s) do not end with an assistant message"
        + (f", e.g. {bad_end[0]}" if bad_end else ""))
    orphans = []
    for c in convs:
        ids = {tc["id"] for m in c.messages for tc in m.get("tool_calls", [])}
        orphans += [c.id for m in c.messages if m["role"] == "tool" and m.get("tool_call_id") not in ids]
    if orphans:
        add("tool calls", "warn", f"{len(orphans)} tool message(s) answer no tool call, e.g. in {orphans[0]}")
    firsts = [next((m["content"] for m in c.messages if m["role"] == "user"), "") for c in convs]
    # matched pairs (one prompt answered both ways, different labels) are by design, not duplicates
    dups = [d for d in near_duplicates(firsts, threshold=0.9) if firsts[d[0]]
            and not (convs[d[0]].label is not None and convs[d[1]].label is not None
                     and convs[d[0]].label != convs[d[1]].label)]
    add("duplicates", "warn" if dups else "pass",
        f"{len(dups)} pair(s) of conversations open with (nearly) the same user message"
        + (f", e.g. {convs[dups[0][0]].id} and {convs[dups[0][1]].id}" if dups else ""))
    if labelled:
        counts = Counter(c.label for c in convs)
        if counts.get(None):
            add("label balance", "fail", f"{counts[None]} conversation(s) have no label")
        else:
            lo, hi = min(counts.get(0, 0), counts.get(1, 0)), max(counts.get(0, 0), counts.get(1, 0))
            status = "fail" if lo == 0 else ("warn" if hi > 3 * lo else "pass")
            add("label balance", status, f"{counts.get(1, 0)} labelled 1 / {counts.get(0, 0)} labelled 0")
    return rows


def check_prompts(name: str, prompts: Sequence[str], *, min_items: int = 0) -> list[CheckRow]:
    rows = [CheckRow(name, "schema", "pass", f"{len(prompts)} items parse")]
    if min_items:
        rows.append(CheckRow(name, "size", "pass" if len(prompts) >= min_items else "fail",
                             f"{len(prompts)} items (at least {min_items} required)"))
    dups = near_duplicates(list(prompts), threshold=0.9)
    rows.append(CheckRow(name, "duplicates", "warn" if dups else "pass",
                         f"{len(dups)} (near-)duplicate item pair(s)"
                         + (f", e.g. {_short(prompts[dups[0][0]])!r}" if dups else "")))
    return rows


def check_mc(name: str, items, *, min_items: int = 0) -> list[CheckRow]:
    rows = check_prompts(name, [it.question + " " + " ".join(it.choices) for it in items], min_items=min_items)
    counts = Counter(it.letters[it.answer] for it in items)
    k = max(len(it.choices) for it in items)
    expect = len(items) / k
    worst = max(abs(counts.get(x, 0) - expect) for x in "ABCDEFGH"[:k])
    rows.append(CheckRow(name, "answer balance", "warn" if worst > 0.25 * expect else "pass",
                         "correct letters: " + ", ".join(f"{x} {counts.get(x, 0)}" for x in "ABCDEFGH"[:k])))
    return rows


# ---------------------------------------------------------------- the built-in sets
def builtin_targets() -> list[str]:
    from . import list_concepts

    return [*list_concepts(), "benign", "neutral_prompts", "neutral_text", "capability", *_eval_names()]


def _eval_names() -> list[str]:
    from .evalsets import list_eval_sets

    return [f"eval/{n}" for n in list_eval_sets()]


def check_builtin(target: str) -> list[CheckRow]:
    """Check one built-in set by name (a concept, ``benign``, ``neutral_prompts``,
    ``neutral_text``, ``capability`` or ``eval/<name>``)."""
    from . import list_concepts, load_concept
    from .reference import load_benign, load_mc, load_prompts, load_reference_text

    if target in list_concepts():
        return check_pairs(load_concept(target), min_pairs=MIN_BUILTIN_PAIRS)
    if target == "benign":
        return check_conversations("benign", load_benign(), min_items=300)
    if target == "neutral_prompts":
        return check_prompts("neutral_prompts", load_prompts(), min_items=100)
    if target == "neutral_text":
        return check_prompts("neutral_text", load_reference_text(), min_items=20)
    if target == "capability":
        return check_mc("capability", load_mc(), min_items=150)
    from .evalsets import list_eval_sets, load_eval_set

    if target.startswith("eval/") and target[5:] in list_eval_sets():
        return check_conversations(target, load_eval_set(target[5:]), labelled=True)
    raise SteerwatchError(f"unknown data set {target!r}; built-in: {', '.join(builtin_targets())}, "
                          "or pass the path of a .jsonl file")


def is_conversations_file(path: str) -> bool:
    """Whether a JSONL file holds conversations (its first object has ``messages``) rather than pairs."""
    import json

    from ..io import jsonl_lines, read_text

    first = next((ln for ln in jsonl_lines(read_text(path), path=path) if ln.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "messages" in obj


def check_file(path: str) -> list[CheckRow]:
    """Check a user's file: contrast pairs, or conversations (detected from the first line)."""
    from pathlib import Path

    from . import load_pairs
    from .conversations import load_conversations

    if is_conversations_file(path):
        convs = load_conversations(path)
        return check_conversations(Path(path).stem, convs, labelled=any(c.label is not None for c in convs))
    return check_pairs(load_pairs(path))


def run_checks(targets: Iterable[str], *, on_error: Callable[[str, Exception], None] | None = None) -> list[CheckRow]:
    """Checks for several built-in names or file paths. A set that does not even load gets one
    failing ``schema`` row with the loader's message."""
    from pathlib import Path

    rows: list[CheckRow] = []
    for t in targets:
        try:
            rows += check_file(t) if Path(t).suffix in (".jsonl", ".json") and Path(t).exists() else check_builtin(t)
        except SteerwatchError as exc:
            if t in builtin_targets() or Path(t).exists():
                rows.append(CheckRow(t, "schema", "fail", str(exc)))
            else:
                raise
    return rows
