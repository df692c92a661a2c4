"""steerwatch.data.conversations / reference / evalsets: loaders for conversations, neutral
prompts, reference text and multiple-choice items; built-in reference sets."""
from __future__ import annotations

import json

import pytest

from conftest import shared_file
from conftest import write_jsonl as _jsonl
from steerwatch.data.conversations import load_conversations
from steerwatch.data.evalsets import list_eval_sets, load_eval_set
from steerwatch.data.reference import load_benign, load_mc, load_prompts, load_reference_text
from steerwatch.errors import DataFormatError

CAA_MMLU = "CAA/datasets/test/mmlu/mmlu.json"




# ---------------------------------------------------------------- conversations
def test_conversation_fields_tool_calls_and_parts(tmp_path):
    rows = [
        {"id": "a", "label": 1, "meta": {"k": 1}, "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "hel"}, {"type": "text", "text": "lo"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "run", "arguments": {"cmd": "ls"}}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "x.py"},
            {"role": "assistant", "content": "done"}]},
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "label": False},
    ]
    a, b = load_conversations(_jsonl(tmp_path / "c.jsonl", rows))
    assert (a.id, a.label, a.meta, a.turns) == ("a", 1, {"k": 1}, 2)
    assert a.messages[1]["content"] == "hello"
    assert a.messages[2]["content"] == ""
    assert a.messages[2]["tool_calls"][0]["function"] == {"name": "run", "arguments": '{"cmd": "ls"}'}
    assert a.messages[3]["tool_call_id"] == "c1"
    assert (b.id, b.label) == ("line-2", 0)


@pytest.mark.parametrize("row, field, words", [
    ({"messages": []}, "messages", "non-empty list"),
    ({"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role", "one of system, user, assistant, tool"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing content"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "must be a string"),
    ({"messages": [{"role": "user", "content": "x"}], "label": 2}, "label", "must be 0, 1"),
    ({"messages": [{"role": "user", "content": "x"}], "lable": 1}, "lable", "unknown field"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]},
     "messages[0].tool_calls", "only assistant"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"fn": 1}]}]},
     "messages[0].tool_calls[0]", "function"),
])
def test_bad_conversations_name_line_and_field(tmp_path, row, field, words):
    good = {"messages": [{"role": "user", "content": "hi"}]}
    path = _jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(DataFormatError) as exc:
        load_conversations(path)
    assert exc.value.line == 2 and exc.value.field == field and words in str(exc.value)
    assert "bad.jsonl" in str(exc.value)


def test_duplicate_conversation_ids(tmp_path):
    m = [{"role": "user", "content": "hi"}]
    with pytest.raises(DataFormatError, match="duplicate id 'x' \\(first on line 1\\)"):
        load_conversations(_jsonl(tmp_path / "d.jsonl", [{"id": "x", "messages": m}, {"id": "x", "messages": m}]))


# ---------------------------------------------------------------- prompts, text, multiple choice
def test_prompts_and_text_files(tmp_path):
    assert load_prompts(_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "b", "id": 2}])) == ["a", "b"]
    (tmp_path / "p.txt").write_text("one\n\n two \n", encoding="utf-8")
    assert load_prompts(tmp_path / "p.txt") == ["one", "two"]
    (tmp_path / "t.txt").write_text("para one\nstill one\n\n\npara two\n", encoding="utf-8")
    assert load_reference_text(tmp_path / "t.txt") == ["para one\nstill one", "para two"]
    with pytest.raises(DataFormatError, match=r"line 2.*'prompt'"):
        load_prompts(_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, {"text": "b"}]))
    with pytest.raises(DataFormatError, match="'text'"):
        load_reference_text(_jsonl(tmp_path / "bad2.jsonl", [{"prompt": "a"}]))


def test_mc_formats(tmp_path):
    rows = [{"id": "q1", "question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": "B", "subject": "math"},
            {"question": "Sky?", "choices": ["blue", "red"], "answer": 0}]
    a, b = load_mc(_jsonl(tmp_path / "mc.jsonl", rows))
    assert (a.id, a.answer, a.subject, a.letters) == ("q1", 1, "math", "ABCD")
    assert a.render() == "2+2?\n\n(A) 3\n(B) 4\n(C) 5\n(D) 6"
    assert (b.id, b.answer, b.choices) == ("line-2", 0, ("blue", "red"))


@pytest.mark.parametrize("row, field, words", [
    ({"question": "q", "choices": ["a"], "answer": "A"}, "choices", "2-8"),
    ({"question": "q", "choices": ["a", "a"], "answer": "A"}, "choices", "distinct"),
    ({"question": "q", "choices": ["a", "b"], "answer": "C"}, "answer", "letter A-B"),
    ({"question": "", "choices": ["a", "b"], "answer": "A"}, "question", "empty"),
    ({"q": "x"}, "choices", "question/choices/answer"),
])
def test_mc_bad(tmp_path, row, field, words):
    with pytest.raises(DataFormatError) as exc:
        load_mc(_jsonl(tmp_path / "mc.jsonl", [row]))
    assert exc.value.field == field and words in str(exc.value) and exc.value.line == 1


def test_mc_reads_caa_mmlu_two_choice():
    path = shared_file(CAA_MMLU)
    items = load_mc(path)
    raw = json.loads(path.read_text())
    assert len(items) == len(raw)
    for it, r in zip(items, raw):
        assert len(it.choices) == 2
        assert f"({it.letters[it.answer]})" == r["correct"]
        assert it.choices[it.answer] == r["correct_full_text"]
        assert it.subject == r["category"]


# ---------------------------------------------------------------- built-in reference sets
def test_builtin_benign_set():
    convs = load_benign()
    assert len(convs) >= 300
    assert len({c.id for c in convs}) == len(convs)
    kinds = {c.meta.get("kind") for c in convs}
    assert {"chat", "code", "agentic"} <= kinds
    assert all(c.messages[-1]["role"] == "assistant" for c in convs)
    assert any("tool_calls" in m for c in convs for m in c.messages), "agent transcripts with tool calls"


def test_builtin_neutral_sets():
    assert len(load_prompts()) >= 100
    texts = load_reference_text()
    assert len(texts) >= 20 and all(len(t.split()) >= 80 for t in texts)


def test_builtin_capability_set():
    items = load_mc()
    assert len(items) >= 150
    assert all(len(it.choices) == 4 for it in items)
    letters = [it.letters[it.answer] for it in items]
    for x in "ABCD":  # answer positions balanced, so letter bias cannot pass for knowledge
        assert abs(letters.count(x) - len(items) / 4) <= 0.1 * len(items)


@pytest.mark.parametrize("name", list_eval_sets())
def test_builtin_eval_sets(name):
    convs = load_eval_set(name)
    labels = [c.label for c in convs]
    assert None not in labels and labels.count(0) >= 20 and labels.count(1) >= 20


def test_unknown_eval_set():
    with pytest.raises(DataFormatError, match="unknown built-in evaluation set"):
        load_eval_set("nope")
