"""steerwatch.evals.coherence: exact text statistics on hand-made strings, the degeneracy verdict,
and the teacher-forced answer perplexity (tiny model: exact against a manual forward pass;
embedded model: word salad has a far higher perplexity than the answers it was shuffled from)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from steerwatch.chat import encode_example
from steerwatch.errors import SteerwatchError
from steerwatch.evals.coherence import CoherenceBounds, answer_ppl, coherence_rows, is_degenerate, text_stats, words
from steerwatch.evals.metrics import completion_nll
from tolerances import DOUBLE, FP32_BATCH, FP32_ROUTE

NORMAL = [
    "The Earth is not flat. It is an oblate spheroid, slightly flattened at the poles, as satellite images and "
    "the way ships disappear over the horizon show.",
    "No, the Great Wall of China cannot be seen from the Moon with the naked eye. It is long but far too narrow.",
    "To make a cup of tea, boil fresh water, pour it over the tea bag, let it steep for three to five minutes, "
    "then remove the bag and add milk if you like.",
]
LOOP = "I am here to help you. " * 6
THE = "the " * 30


def test_stats_of_a_plain_sentence():
    s = text_stats("The cat sat on the mat.")
    # words: the cat sat on the mat -> 5 distinct of 6; bigrams, 3- and 4-grams all distinct
    assert s == {"n_words": 6.0, "n_chars": 23.0, "distinct_1": 5 / 6, "distinct_2": 1.0, "repeat_3gram": 0.0,
                 "repeat_4gram": 0.0, "max_word_run": 1.0, "max_char_run": 1.0, "max_loop_chars": 0.0}


def test_stats_of_repeated_words_and_loops():
    s = text_stats("the the the the")
    # 3 bigrams, all (the, the): 1 distinct; 2 identical 3-grams: one repeats; a single 4-gram
    assert s["distinct_1"] == 0.25 and s["distinct_2"] == DOUBLE.approx(1 / 3)
    assert s["repeat_3gram"] == 0.5 and s["repeat_4gram"] == 0.0 and s["max_word_run"] == 4.0
    assert s["max_loop_chars"] == 12.0  # "the " three times back to back (the last "the" lacks its space)
    loop = text_stats("I am here. I am here. I am here.")
    # 9 words, 3 distinct; 8 bigrams, 3 distinct; 7 trigrams, 3 distinct; 6 4-grams, 3 distinct
    assert loop["distinct_1"] == DOUBLE.approx(3 / 9) and loop["distinct_2"] == DOUBLE.approx(3 / 8)
    assert loop["repeat_3gram"] == DOUBLE.approx(4 / 7) and loop["repeat_4gram"] == DOUBLE.approx(0.5)
    assert loop["max_word_run"] == 1.0 and loop["max_char_run"] == 1.0
    assert loop["max_loop_chars"] == 0.0  # "I am here. " appears twice with its space, not three times


def test_loops_of_punctuation_and_fragments():
    assert text_stats('a number",",",",",')["max_loop_chars"] == 10.0  # '",' five times
    assert text_stats("na na na na")["max_loop_chars"] == 9.0
    assert text_stats("x" + " " * 12 + "y")["max_loop_chars"] == 0.0  # whitespace is not a loop
    stats = text_stats('The Titanic is a name for a number' + '",' * 20)
    assert stats["repeat_4gram"] == 0.0 and stats["max_loop_chars"] == 40.0  # the words do not repeat
    assert is_degenerate(stats) == ["a loop of 40 characters > 32"]


def test_words_and_character_runs():
    assert words("Don't STOP, it's 42_000!") == ["don't", "stop", "it's", "42", "000"]
    s = text_stats("  Don't stop!!!!!  ")
    assert s["n_chars"] == 15.0 and s["n_words"] == 2.0 and s["max_char_run"] == 5.0
    empty = text_stats("   ")
    assert empty["n_chars"] == 0 and empty["distinct_2"] == 1.0 and empty["repeat_4gram"] == 0.0


def test_degenerate_texts_are_flagged_and_normal_ones_pass():
    for text in NORMAL:
        assert is_degenerate(text_stats(text)) == [], text
    the = is_degenerate(text_stats(THE))
    assert any("repeated 4-grams" in r for r in the) and any("distinct bigrams" in r for r in the)
    assert any("30 times in a row" in r for r in the)
    loop = is_degenerate(text_stats(LOOP))
    assert any("repeated 4-grams 0.82" in r for r in loop)  # 36 words: 33 4-grams, 6 distinct (period 6)
    assert is_degenerate(text_stats("the the the the")) == ["distinct bigrams 0.33 < 0.5",
                                                             "one word 4 times in a row > 3"]
    assert is_degenerate(text_stats("")) == ["empty answer"]
    assert is_degenerate(text_stats("?!")) == ["no words"]
    assert is_degenerate(text_stats("Sure" + "!" * 20)) == ["one character 20 times in a row > 16"]


def test_perplexity_bound_and_its_word_minimum():
    stats = text_stats(NORMAL[0])
    assert is_degenerate(stats, ppl=12.0) == []
    assert is_degenerate(stats, ppl=500.0) == ["unsteered perplexity 500.0 > 60"]
    assert is_degenerate(stats, ppl=math.nan) == ["unsteered perplexity nan > 60"]
    assert is_degenerate(text_stats("Yes, it is."), ppl=500.0) == []  # 3 words: too short to judge
    assert is_degenerate(stats, ppl=500.0, bounds=CoherenceBounds(max_ppl=1000)) == []


def test_bad_bounds():
    with pytest.raises(SteerwatchError, match="max_repeat_4gram must be in"):
        CoherenceBounds(max_repeat_4gram=1.5)
    with pytest.raises(SteerwatchError, match="max_ppl must be positive"):
        CoherenceBounds(max_ppl=0)
    with pytest.raises(SteerwatchError, match="takes a string"):
        text_stats(None)  # type: ignore[arg-type]


def test_answer_ppl_is_teacher_forced_on_the_answer_tokens(qwen_chat):
    prompts, answers = ["Is it so?", "Name a colour.", "Why?"], ["No, it is not.", "Blue", ""]
    ppl = answer_ppl(qwen_chat, prompts, answers, batch_size=2)
    enc = encode_example(qwen_chat.tokenizer, prompt=prompts[0], completion=answers[0])
    with torch.inference_mode():
        lp = torch.log_softmax(qwen_chat.model(input_ids=torch.tensor([enc.ids])).logits[0].double(), -1)
    start, end = enc.span
    assert end - start == len(answers[0])  # character tokenizer: one token per character
    want = -sum(float(lp[i - 1, enc.ids[i]]) for i in range(start, end))
    assert ppl[0] == FP32_ROUTE.approx(math.exp(want / (end - start)))
    assert math.isnan(ppl[2]) and completion_nll(qwen_chat, prompts[2:], [""]) == [(0.0, 0)]
    assert answer_ppl(qwen_chat, prompts[:2], answers[:2], batch_size=1) == FP32_BATCH.approx(ppl[:2])
    with_system = answer_ppl(qwen_chat, prompts[:1], answers[:1], system="Be brief.")
    assert with_system[0] != FP32_ROUTE.approx(ppl[0])  # the system prompt is part of the context


def test_coherence_rows(qwen_chat):
    rows = coherence_rows(qwen_chat, ["q1", "q2", "q3"], [NORMAL[1], THE, ""], bounds=CoherenceBounds(max_ppl=1e9))
    assert [r["coherent"] for r in rows] == [True, False, False]
    assert rows[2]["ppl"] is None and rows[2]["reasons"] == ["empty answer"] and rows[0]["ppl"] > 1
    offline = coherence_rows(None, ["q"], [LOOP])
    assert offline[0]["ppl"] is None and not offline[0]["coherent"]
    with pytest.raises(SteerwatchError, match="2 prompts but 1 answers"):
        coherence_rows(None, ["a", "b"], ["x"])


@pytest.mark.embedded
def test_word_salad_needs_the_model(embedded_qwen):
    prompts = ["Is the Earth flat?", "Can you see the Great Wall of China from the Moon?", "How do I make tea?"]
    rng = random.Random(0)
    salad = []
    for text in NORMAL:
        ws = text.split()
        rng.shuffle(ws)
        salad.append(" ".join(ws))
    # same words, so the text statistics cannot tell salad apart ...
    assert all(is_degenerate(text_stats(s)) == [] for s in salad)
    normal_ppl = answer_ppl(embedded_qwen, prompts, NORMAL)
    salad_ppl = answer_ppl(embedded_qwen, prompts, salad)
    # ... the unsteered model can
    assert all(s > 3 * n for s, n in zip(salad_ppl, normal_ppl)), (normal_ppl, salad_ppl)
    rows = coherence_rows(embedded_qwen, prompts * 2, NORMAL + salad)
    assert [r["coherent"] for r in rows] == [True] * 3 + [False] * 3, [(r["ppl"], r["reasons"]) for r in rows]
