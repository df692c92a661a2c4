"""Concept cards agree with the data and with `steerwatch data check` (issue 21, item 7: a card said
100 pairs where the set had 160; the honesty card said "No" was not tied to one side while the
check warned that it was). Every number a card quotes from the check is read back here."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from steerwatch.data import concept_card, list_concepts, load_concept
from steerwatch.data.check import run_checks

CONCEPTS = list_concepts()


def _checks(concept: str) -> dict[str, object]:
    return {r.check: r for r in run_checks([concept])}


def test_every_concept_has_a_card():
    assert len(CONCEPTS) >= 7
    assert [c for c in CONCEPTS if not concept_card(c)] == []


@pytest.mark.parametrize("concept", CONCEPTS)
def test_card_sizes_match_the_set(concept):
    ds = load_concept(concept)
    m = re.search(r"\*\*File:\*\* `[\w.]+`\W+(\d+) pairs \((\d+) train / (\d+) val\)", concept_card(concept))
    assert m is not None, "the card's first lines name the file and its size"
    assert tuple(int(x) for x in m.groups()) == (len(ds.train) + len(ds.val), len(ds.train), len(ds.val))
    assert f"{len(ds.train) + len(ds.val)} pairs parse ({len(ds.train)} train / {len(ds.val)} val)" == \
        _checks(concept)["schema"].detail


RATIO = re.compile(r"ratio (?:is )?([\d.]+)–([\d.]+)")
RATIO_CARDS = [c for c in CONCEPTS if RATIO.search(concept_card(c) or "")]


@pytest.mark.parametrize("concept", RATIO_CARDS)
def test_card_length_ratio_is_the_checks(concept):
    assert len(RATIO_CARDS) >= 5
    m = RATIO.search(concept_card(concept))
    got = re.search(r"per-pair ratio ([\d.]+)-([\d.]+)", _checks(concept)["length balance"].detail)
    assert m.groups() == got.groups()


@pytest.mark.parametrize("concept", CONCEPTS)
def test_card_names_every_opening_word_the_check_warns_about(concept):
    """A warned opening word is quoted in the card with the check's counts ("no" 19 honest / 2
    dishonest); a card never claims balance the check denies."""
    row = _checks(concept)["first words"]
    card = " ".join(concept_card(concept).split())  # quotes may wrap across lines
    warned = {w: (int(p), int(n)) for w, p, n in re.findall(r"'(\w+)' (\d+) pos / (\d+) neg", row.detail)}
    quoted = {w: (int(p), int(n)) for w, p, n in re.findall(r"\"(\w+)\"(?: opens)? (\d+) [a-z]+ / (\d+) [a-z]+",
                                                             card)}
    assert warned == quoted
    if row.status == "warn":
        assert f"steerwatch data check {concept}" in card
        assert not re.search(r"not tied to|no first word is lopsided", card, re.I)


def test_honesty_card_numbers_are_the_checks():
    card = " ".join(concept_card("honesty").split())
    rows = _checks("honesty")
    hp, hn = re.search(r"in (\d+) positive vs (\d+) negative", rows["hedge words"].detail).groups()
    assert f"**{hp} honest replies** and **{hn} dishonest replies** match" in card
    mp, mn = re.search(r"mean chars positive (\d+) vs negative (\d+)", rows["length balance"].detail).groups()
    assert f"means of about {mp} vs {mn} chars" in card
    formats = Counter(p.meta.get("format") for p in load_concept("honesty").train + load_concept("honesty").val)
    quoted = {k: int(v) for k, v in re.findall(r"`(\w+)` (\d+)", card.split("`meta.format` counts:")[1][:300])}
    assert quoted == dict(formats)
