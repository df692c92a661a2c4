"""steerwatch.data: the JSONL pair format, CAA A/B files, persona files, dispatch, and the
built-in concept sets (whatever list_concepts() holds at the time)."""
from __future__ import annotations

import json

import pytest

from conftest import shared_file
from conftest import write_jsonl as _jsonl
from steerwatch.data import (
    ContrastSet,
    concept_card,
    list_concepts,
    load_caa,
    load_concept,
    load_contrast,
    load_pairs,
    load_persona,
)
from steerwatch.errors import DataFormatError

CAA_SYCOPHANCY = "CAA/datasets/generate/sycophancy/generate_dataset.json"
PERSONA_SYCOPHANTIC = "persona_vectors/data_generation/trait_data_extract/sycophantic.json"




# ---------------------------------------------------------------------------- JSONL pairs: good files
def test_load_pairs_full_fields(tmp_path):
    rows = [
        {"prompt": "Is the sky green?", "positive": "No.", "negative": "Yes, very.", "system": "Be honest.",
         "split": "val", "meta": {"src": "x"}, "id": "a1"},
        {"positive": "I was wrong.", "negative": "I was never wrong.", "split": "train"},
    ]
    path = _jsonl(tmp_path / "mine.jsonl", rows)
    cs = load_pairs(path)
    assert isinstance(cs, ContrastSet) and cs.name == "mine" and cs.source == str(path)
    a, b = cs.pairs
    assert (a.prompt, a.positive, a.negative, a.system, a.split, a.meta) == \
        ("Is the sky green?", "No.", "Yes, very.", "Be honest.", "val", {"src": "x"})
    assert (b.prompt, b.system, b.split, b.meta) == (None, None, "train", {})
    assert cs.train == [b] and cs.val == [a]
    assert load_pairs(path, name="other").name == "other"
    d = cs.describe()
    assert d["n_train"] == 1 and d["n_val"] == 1 and d["sha256"] == cs.sha256 and len(cs.sha256) == 64


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"positive": "a", "negative": "b"}\n\n\n{"positive": "c"}\n', encoding="utf-8")
    with pytest.raises(DataFormatError) as exc:
        load_pairs(path)
    assert exc.value.line == 4 and "line 4" in str(exc.value)


def _generated(n=200):
    return [{"prompt": f"question number {i}?", "positive": f"honest answer {i}", "negative": f"flattering answer {i}"}
            for i in range(n)]


def test_hash_split_is_deterministic_and_about_20_percent(tmp_path):
    rows = _generated()
    cs = load_pairs(_jsonl(tmp_path / "g.jsonl", rows))
    n_val = len(cs.val)
    # binomial(200, 0.2): mean 40, sd ~5.7; 20..60 is +-3.5 sd
    assert 20 <= n_val <= 60 and len(cs.train) + n_val == 200
    again = load_pairs(_jsonl(tmp_path / "g2.jsonl", rows))
    assert [p.split for p in again.pairs] == [p.split for p in cs.pairs]
    # the split depends on the pair, not on its position in the file
    rev = load_pairs(_jsonl(tmp_path / "rev.jsonl", rows[::-1]))
    assert {(p.prompt, p.split) for p in rev.pairs} == {(p.prompt, p.split) for p in cs.pairs}
    # an explicit split wins over the hash
    forced = load_pairs(_jsonl(tmp_path / "f.jsonl", [dict(r, split="train") for r in rows]))
    assert forced.val == [] and len(forced.train) == 200
    assert cs.sha256 == again.sha256 != forced.sha256


# ---------------------------------------------------------------------------- JSONL pairs: malformed files
GOOD = {"prompt": "p", "positive": "a", "negative": "b"}


@pytest.mark.parametrize("bad_line, line, field, words", [
    ('{"prompt": "p", "positive": "a", "negative": ', 3, None, "not valid JSON"),
    ({"prompt": "p", "positive": "a"}, 2, "negative", "missing required field"),
    ({"prompt": "p", "positive": 5, "negative": "b"}, 2, "positive", "must be a string, got int"),
    ({"prompt": "p", "positive": "a", "negative": "b", "label": 1}, 2, "label", "unknown field(s) label"),
    ({"prompt": "p", "positive": "a", "negative": "b", "split": "test"}, 2, "split", "must be one of train, val"),
    ({"prompt": "p", "positive": "same", "negative": "same"}, 2, "negative", "identical"),
    ({"prompt": "p", "positive": "  ", "negative": "b"}, 2, "positive", "must not be empty"),
    ({"prompt": "", "positive": "a", "negative": "b"}, 2, "prompt", "must not be empty"),
    ({"positive": "a", "negative": "b", "meta": [1]}, 2, "meta", "must be a JSON object"),
    ('["positive", "negative"]', 2, None, "must be a JSON object"),
])
def test_malformed_pairs(tmp_path, bad_line, line, field, words):
    rows = [GOOD, GOOD] if line == 3 else [GOOD]
    rows = [*rows, bad_line, GOOD]
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataFormatError) as exc:
        load_pairs(path)
    msg = str(exc.value)
    assert str(path) in msg and f"line {line}" in msg and words in msg
    assert exc.value.line == line and exc.value.path == str(path)
    if field is not None:
        assert repr(field) in msg and exc.value.field == field


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError) as exc:
        load_pairs(path)
    assert str(path) in str(exc.value) and "no pairs" in str(exc.value)


def test_missing_and_non_utf8_file(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "latin.jsonl").write_bytes(b'{"positive": "caf\xe9", "negative": "b"}\n')
    with pytest.raises(DataFormatError, match="not UTF-8"):
        load_pairs(tmp_path / "latin.jsonl")


# ---------------------------------------------------------------------------- CAA A/B
def _caa_item(q="Which?\n (A) yes\n (B) no", m="(A)", n="(B)"):
    return {"question": q, "answer_matching_behavior": m, "answer_not_matching_behavior": n}


def test_load_caa_tmp(tmp_path):
    items = [_caa_item(), _caa_item(q="Pick:\n (A) x\n (B) y", m="(B)", n="(A)"),
             _caa_item(q="Lists too:\n (A) x\n (B) y", m=["(A)"], n=[" (B) "])]
    path = tmp_path / "caa" / "items.json"
    path.parent.mkdir()
    path.write_text(json.dumps(items), encoding="utf-8")
    cs = load_caa(path)
    assert cs.name == "caa"
    assert [(p.positive, p.negative) for p in cs.pairs] == [("(A", "(B"), ("(B", "(A"), ("(A", "(B")]
    assert [p.prompt for p in cs.pairs] == [it["question"] for it in items]
    assert all(p.meta == {"format": "caa"} and p.split in ("train", "val") for p in cs.pairs)
    assert [p.split for p in load_caa(path).pairs] == [p.split for p in cs.pairs]


@pytest.mark.parametrize("item, field, words", [
    (_caa_item(m="(C)"), "answer_matching_behavior", "not among the question's options"),
    (_caa_item(n="B"), "answer_not_matching_behavior", "answer letter"),
    (_caa_item(m="(B)"), "answer_not_matching_behavior", "same letter"),
    ({"question": "Q (A) (B)", "answer_not_matching_behavior": "(B)"}, "answer_matching_behavior", "missing"),
    (_caa_item(q=""), "question", "missing or empty"),
])
def test_load_caa_bad(tmp_path, item, field, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([_caa_item(), item]), encoding="utf-8")
    with pytest.raises(DataFormatError) as exc:
        load_caa(path)
    msg = str(exc.value)
    assert str(path) in msg and "line 2" in msg and repr(field) in msg and words in msg


def test_load_caa_not_a_list(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text(json.dumps({"question": "q"}), encoding="utf-8")
    with pytest.raises(DataFormatError, match="non-empty JSON list"):
        load_caa(path)
    path.write_text("[{", encoding="utf-8")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        load_caa(path)


def test_load_caa_real_sycophancy():
    path = shared_file(CAA_SYCOPHANCY)
    items = json.loads(path.read_text(encoding="utf-8"))
    cs = load_caa(path)
    assert len(cs.pairs) == len(items) and cs.name == "sycophancy"
    for item, pair in zip(items, cs.pairs):
        assert pair.prompt == item["question"]
        assert pair.positive == item["answer_matching_behavior"].strip()[:2]
        assert pair.negative == item["answer_not_matching_behavior"].strip()[:2]
        assert f"{pair.positive})" in item["question"] and f"{pair.negative})" in item["question"]
    assert {p.positive for p in cs.pairs} == {"(A", "(B"}  # both letters occur: not a constant
    assert 0.1 < len(cs.val) / len(cs.pairs) < 0.3


# ---------------------------------------------------------------------------- persona
def test_load_persona_real():
    path = shared_file(PERSONA_SYCOPHANTIC)
    data = json.loads(path.read_text(encoding="utf-8"))
    spec = load_persona(path)
    assert spec.name == "sycophantic" and spec.source == str(path)
    assert len(spec.instructions) == 5 and len(spec.questions) == 20
    assert spec.instructions == [(i["pos"], i["neg"]) for i in data["instruction"]]
    assert spec.questions == data["questions"]


@pytest.mark.parametrize("content, field, words", [
    ({"instruction": [{"pos": "be nice", "neg": "be blunt"}]}, "questions", "non-empty list"),
    ({"instruction": [{"pos": "be nice"}], "questions": ["q"]}, "instruction", "item 1"),
    ({"instruction": [], "questions": ["q"]}, "instruction", "non-empty list"),
    ({"instruction": [{"pos": "a", "neg": "b"}], "questions": ["q", 3]}, "questions", "non-empty strings"),
    ([1, 2], None, "JSON object"),
])
def test_load_persona_malformed(tmp_path, content, field, words):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(DataFormatError) as exc:
        load_persona(path)
    msg = str(exc.value)
    assert str(path) in msg and words in msg
    if field:
        assert repr(field) in msg


# ---------------------------------------------------------------------------- dispatch
def test_load_contrast_dispatch(tmp_path):
    jl = _jsonl(tmp_path / "pairs.jsonl", _generated(5))
    assert load_contrast(jl).pairs == load_pairs(jl).pairs
    caa = tmp_path / "caa.json"
    caa.write_text(json.dumps([_caa_item()]), encoding="utf-8")
    assert load_contrast(str(caa)).pairs[0].positive == "(A"
    with pytest.raises(DataFormatError, match="persona"):
        load_contrast(shared_file(PERSONA_SYCOPHANTIC))
    other = tmp_path / "x.txt"
    other.write_text("hi", encoding="utf-8")
    with pytest.raises(DataFormatError, match="unknown data file type"):
        load_contrast(other)
    with pytest.raises(DataFormatError, match="not a built-in concept"):
        load_contrast(tmp_path / "missing.jsonl")
    names = list_concepts()
    if names:
        assert load_contrast(names[0]).pairs == load_concept(names[0]).pairs


def test_unknown_concept_lists_builtins():
    with pytest.raises(DataFormatError) as exc:
        load_concept("no-such-concept")
    for name in list_concepts():
        assert name in str(exc.value)


# ---------------------------------------------------------------------------- built-in concepts
def test_card_settings_block(monkeypatch, tmp_path):
    import steerwatch.data as data_mod
    from steerwatch.errors import ExtractionError
    from steerwatch.extract.build import resolve_method

    (tmp_path / "demo.jsonl").write_text(
        "\n".join(json.dumps({"prompt": f"q{i}", "positive": f"good {i}", "negative": f"bad {i}",
                              "split": "val" if i % 4 == 0 else "train"}) for i in range(8)) + "\n")
    (tmp_path / "demo.md").write_text("---\nmethod: lda\n---\n# Concept card: demo\nText.\n")
    monkeypatch.setattr(data_mod, "_concept_dir", lambda: tmp_path)
    assert data_mod.concept_settings("demo") == {"method": "lda"}
    assert data_mod.concept_card("demo") == "# Concept card: demo\nText.\n"   # settings are not card text
    cs = load_concept("demo")
    assert cs.default_method == "lda"
    assert resolve_method(None, cs) == "lda" and resolve_method("pca_diff", cs) == "pca_diff"
    assert resolve_method(None, ContrastSet(name="file", pairs=cs.pairs)) == "mean_diff"
    (tmp_path / "demo.md").write_text("---\nmethod: ldaa\n---\ncard\n")
    with pytest.raises(ExtractionError, match="unknown method 'ldaa'; valid: mean_diff"):
        load_concept("demo")
    (tmp_path / "demo.md").write_text("---\nmethd: lda\n---\ncard\n")
    with pytest.raises(DataFormatError, match=r"demo.md.*line 2.*must be one of method"):
        load_concept("demo")
    (tmp_path / "demo.md").write_text("---\nmethod: lda\n")
    with pytest.raises(DataFormatError, match="never closed"):
        data_mod.concept_card("demo")


def test_there_are_builtin_concepts():
    assert len(list_concepts()) >= 1


@pytest.mark.parametrize("name", list_concepts())
def test_builtin_concept(name):
    cs = load_concept(name)
    assert cs.name == name and len(cs.pairs) >= 60
    assert cs.train and cs.val, "both splits must be present"
    assert len(cs.val) >= 10
    # a prompt never appears on both sides of the split (no leakage into validation)
    train_prompts = {p.prompt for p in cs.train if p.prompt is not None}
    val_prompts = {p.prompt for p in cs.val if p.prompt is not None}
    assert not train_prompts & val_prompts
    # no pair twice
    keys = [(p.prompt, p.positive, p.negative) for p in cs.pairs]
    assert len(set(keys)) == len(keys)
    card = concept_card(name)
    assert card is None or card.strip()


def test_jsonl_with_line_separators_inside_strings(tmp_path):
    """U+2028/U+2029/U+0085 inside a JSON string are text, not line breaks (json.dumps with
    ensure_ascii=False writes them unescaped, as `generate --out` does)."""
    from steerwatch.data.conversations import load_conversations

    odd = "first\u2028second\u2029third\u0085fourth"
    rows = [{"prompt": f"q{i} {odd}", "positive": f"yes {odd}", "negative": f"no {i}"} for i in range(3)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    pairs = load_pairs(path).pairs
    assert [p.positive for p in pairs] == [f"yes {odd}"] * 3 and pairs[0].prompt == f"q0 {odd}"
    conv = tmp_path / "c.jsonl"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": odd}]}, ensure_ascii=False) + "\r\n",
                    encoding="utf-8")
    assert load_conversations(conv)[0].messages[0]["content"] == odd


def test_concepts_summary_is_plain_text_cut_at_a_word():
    """`steerwatch concepts` shows each card's first sentence without Markdown, cut at a word."""
    from typer.testing import CliRunner

    from steerwatch.cli.concepts import card_summary
    from steerwatch.cli.main import app

    card = ("# Concept card: x\n**File:** `x.jsonl`: 10 pairs.\n\n## Meaning\nWhether the **reply** uses "
            "`code` and [links](http://e.x) well. Second sentence.\n")
    assert card_summary(card) == "Whether the reply uses code and links well."
    long = "# t\n" + " ".join(["word"] * 40) + "."
    cut = card_summary(long, width=30)
    assert cut == "word word word word word word…" and len(cut) <= 30
    res = CliRunner().invoke(app, ["concepts"])
    assert res.exit_code == 0 and "**" not in res.output and "`" not in res.output
    res = CliRunner().invoke(app, ["concepts", "honesty"])
    assert res.exit_code == 0 and "## Meaning" not in res.output and "Meaning" in res.output


def test_preference_format_is_read_as_pairs(tmp_path):
    """prompt / chosen / rejected (TRL, Anthropic HH): chosen is the positive side; the same file in
    the team's naming gives the same pairs."""
    rows = [{"prompt": "Is the sky green?", "chosen": "No, it is blue.", "rejected": "Yes, it is green.",
             "split": "train"},
            {"prompt": "2+2?", "chosen": "4", "rejected": "5", "split": "val", "meta": {"k": 1}}]
    pref = _jsonl(tmp_path / "pref.jsonl", rows)
    team = _jsonl(tmp_path / "team.jsonl", [{("positive" if k == "chosen" else "negative" if k == "rejected" else k): v
                                             for k, v in r.items()} for r in rows])
    a, b = load_pairs(pref), load_pairs(team)
    assert a.pairs == b.pairs and a.pairs[0].positive == "No, it is blue." and a.pairs[1].split == "val"
    assert a.pairs[1].meta == {"k": 1}
    bad = _jsonl(tmp_path / "mixed.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b", "positive": "a"}])
    with pytest.raises(DataFormatError, match=r"mixed.jsonl, line 1, field 'chosen': give positive/negative or "
                                              r"chosen/rejected, not both"):
        load_pairs(bad)
    bad = _jsonl(tmp_path / "half.jsonl", [{"prompt": "p", "chosen": "a"}])
    with pytest.raises(DataFormatError, match=r"line 1, field 'rejected': missing required field"):
        load_pairs(bad)
    bad = _jsonl(tmp_path / "conv.jsonl", [{"chosen": [{"role": "user", "content": "x"}], "rejected": "b"}])
    with pytest.raises(DataFormatError, match="chat-message lists"):
        load_pairs(bad)
