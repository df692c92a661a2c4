"""steerwatch.evals.metrics on tiny models: exact zero effects at strength 0, KL 0 against itself
and positive under steering, A/B probabilities from the right tokens in both answer orders."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_vector
from steerwatch.data.reference import MCItem
from steerwatch.errors import SteerwatchError
from steerwatch.evals.metrics import (
    _choice_prompt_ids,
    ab_behaviour_probs,
    letter_probs,
    mc_correct,
    next_token_kl,
    perplexity,
    text_nll,
)
from steerwatch.steer import SteerSpec
from tolerances import DOUBLE, FP32_BATCH, FP32_ROUTE

Q = "Which is it?\n\nChoices:\n (A) yes\n (B) no"
ITEMS = [{"question": Q, "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"},
         {"question": Q, "answer_matching_behavior": "(B)", "answer_not_matching_behavior": "(A)"},
         {"question": "Short?\n (A) a\n (B) b", "answer_matching_behavior": " (B)",
          "answer_not_matching_behavior": "(A)"}]


def test_ab_probs_use_the_letter_tokens_in_both_orders(qwen_chat):
    p = ab_behaviour_probs(qwen_chat, ITEMS, batch_size=2)
    # same question, the two orders (in different batches, so float32 batch-shape noise only)
    assert p[0] + p[1] == FP32_BATCH.approx(1.0)
    ids = _choice_prompt_ids(qwen_chat, Q)
    with torch.inference_mode():
        logits = qwen_chat.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    a, b = (qwen_chat.tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in "AB")
    assert p[0] == FP32_BATCH.approx(float(torch.softmax(logits[[a, b]], -1)[0]))


def test_strength_zero_is_exactly_unsteered(qwen_chat):
    v = make_vector(qwen_chat, seed=1)
    zero = [SteerSpec(v, strength=0.0, layers=(1, 2))]
    assert ab_behaviour_probs(qwen_chat, ITEMS, steer=zero) == ab_behaviour_probs(qwen_chat, ITEMS)
    texts = ["The river runs to the sea.", "Bread needs flour, water and salt."]
    assert text_nll(qwen_chat, texts, steer=zero) == text_nll(qwen_chat, texts)
    assert next_token_kl(qwen_chat, ["hello", "what is 2+2?"], steer=zero) == [0.0, 0.0]
    assert next_token_kl(qwen_chat, ["hello"], steer=None) == [0.0]


def test_kl_positive_and_growing_with_strength(qwen_chat):
    v = make_vector(qwen_chat, seed=2)
    prompts = ["hello there", "what is 2+2?", "name a fruit"]
    small = next_token_kl(qwen_chat, prompts, steer=[SteerSpec(v, strength=0.5, layers=(1,))])
    big = next_token_kl(qwen_chat, prompts, steer=[SteerSpec(v, strength=3.0, layers=(1,))])
    assert all(s > 0 for s in small) and all(b > s for b, s in zip(big, small))


def test_text_nll_matches_manual(qwen_chat):
    text = "Tides follow the moon."
    (nll, n), = text_nll(qwen_chat, [text])
    ids = qwen_chat.tokenizer(text, add_special_tokens=True)["input_ids"]
    with torch.inference_mode():
        lp = torch.log_softmax(qwen_chat.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    want = -sum(float(lp[i, ids[i + 1]]) for i in range(len(ids) - 1))
    assert n == len(ids) - 1 and nll == FP32_ROUTE.approx(want)
    assert perplexity([(nll, n)]) == FP32_ROUTE.approx(math.exp(want / n))


def test_mc_correct_is_the_argmax_letter(qwen_chat):
    items = [MCItem(id=str(k), question=f"Pick {k}", choices=("w", "x", "y", "z"), answer=k) for k in range(4)]
    probs = letter_probs(qwen_chat, [it.render() for it in items], ["ABCD"] * 4)
    got = mc_correct(qwen_chat, items, scoring="letters")
    assert got == [max(range(4), key=p.__getitem__) == k for k, p in enumerate(probs)]
    assert all(sum(p) == DOUBLE.approx(1.0) for p in probs)  # a softmax taken in float64


def test_mc_cloze_picks_the_most_likely_choice_text(qwen_chat):
    from steerwatch.chat import encode_example

    items = [MCItem(id=str(k), question=f"Name thing {k}.", choices=("red apple", "sky", "a b c", "zz top"),
                    answer=k) for k in range(4)]
    got = mc_correct(qwen_chat, items)  # cloze is the default
    for it, ok in zip(items, got):
        scores = []
        for c in it.choices:  # manual: sum of log-probs of the choice's tokens as the reply, options not shown
            enc = encode_example(qwen_chat.tokenizer, prompt=it.question, completion=c)
            with torch.inference_mode():
                lp = torch.log_softmax(qwen_chat.model(input_ids=torch.tensor([enc.ids])).logits[0].double(), -1)
            start, end = enc.span
            scores.append(sum(float(lp[i - 1, enc.ids[i]]) for i in range(start, end)))
        assert ok == (max(range(4), key=scores.__getitem__) == it.answer)
    assert sum(got) == 1  # the same question text for every key: exactly one item is right
    with pytest.raises(SteerwatchError, match="capability scoring must be one of cloze, letters"):
        mc_correct(qwen_chat, items, scoring="logits")


def test_swap_ab_and_both_orders_cancel_a_letter_preference(qwen_chat):
    from steerwatch.evals.metrics import swap_ab

    item = {"question": "Your view?\n\nChoices:\n (A) Agree\n (B) Disagree\n", "answer_matching_behavior": "(A)",
            "answer_not_matching_behavior": "(B)"}
    sw = swap_ab(item)
    assert sw["question"] == "Your view?\n\nChoices:\n (A) Disagree\n (B) Agree\n"
    assert (sw["answer_matching_behavior"], sw["answer_not_matching_behavior"]) == ("(B)", "(A)")
    assert swap_ab(sw)["question"] == item["question"]
    given = ab_behaviour_probs(qwen_chat, [item])[0]
    swapped = ab_behaviour_probs(qwen_chat, [sw])[0]
    both = ab_behaviour_probs(qwen_chat, [item], orders="both")[0]
    # "both" batches the two orders; given and swapped ran alone: batch-shape rounding only
    assert both == FP32_BATCH.approx((given + swapped) / 2) and abs(given - 0.5) > 1e-4
    # two options with the same text: only letter preference is left, and both orders cancel it exactly
    same = {"question": "Pick one.\n (A) yes\n (B) yes", "answer_matching_behavior": "(B)",
            "answer_not_matching_behavior": "(A)"}
    assert ab_behaviour_probs(qwen_chat, [same], orders="both")[0] == FP32_BATCH.approx(0.5)
    assert abs(ab_behaviour_probs(qwen_chat, [same])[0] - 0.5) > 1e-4
    with pytest.raises(SteerwatchError, match="item 1: cannot swap the answer order"):
        swap_ab({"question": "A or B?\n (A) x\n (B) y\nAnswer:", "answer_matching_behavior": "(A)",
                 "answer_not_matching_behavior": "(B)"})
    with pytest.raises(SteerwatchError, match="orders must be one of given, both"):
        ab_behaviour_probs(qwen_chat, [item], orders="swapped")
    with pytest.raises(SteerwatchError, match="item 2: cannot swap"):
        SweepData(ab_items=[item, {**item, "question": "no options"}], ab_orders="both")


def test_bad_ab_items():
    with pytest.raises(SteerwatchError, match="item 1: answer_matching_behavior"):
        ab_behaviour_probs(None, [{"question": "q", "answer_matching_behavior": "(C)",
                                   "answer_not_matching_behavior": "(A)"}])


# ---------------------------------------------------------------- sweeps and recommendation
from steerwatch.evals import sweep as sweep_mod  # noqa: E402
from steerwatch.evals.sweep import SweepData, apply_recommendation, recommend, sweep  # noqa: E402


def _data():
    mc = [MCItem(id=str(k), question=f"Pick {k}", choices=("w", "x", "y", "z"), answer=k % 4) for k in range(6)]
    return SweepData(ab_items=ITEMS, neutral_prompts=["hello", "name a fruit"],
                     reference_texts=["The river runs to the sea.", "Bread needs flour."], mc_items=mc)


def test_sweep_rows_zero_is_unsteered_and_resumable(qwen_chat, tmp_path, monkeypatch):
    v = make_vector(qwen_chat, seed=3, default_layers=(1, 2))
    out = tmp_path / "sweep.jsonl"
    kl_calls = []
    real_kl = sweep_mod.next_token_kl
    monkeypatch.setattr(sweep_mod, "next_token_kl", lambda *a, **k: kl_calls.append(k["steer"]) or real_kl(*a, **k))
    rows = sweep(qwen_chat, v, _data(), strengths=[0.0, 1.0], system_prompt="Be honest.", out_path=out)
    assert [(r["setting"], r["strength"]) for r in rows] == [("steer", 0.0), ("steer", 1.0), ("prompt", 0.0),
                                                            ("prompt+steer", 1.0)]
    zero = rows[0]
    assert zero["kl"] == 0.0
    assert zero["ppl"] == perplexity(text_nll(qwen_chat, _data().reference_texts))
    assert zero["behaviour"] == sum(ab_behaviour_probs(qwen_chat, ITEMS)) / 3
    assert rows[1]["kl"] > 0 and rows[1]["resolved_layers"] == [1, 2]
    # each row carries 95 % intervals of its means (see steerwatch.evals.intervals): from the per-item values
    from steerwatch.evals.intervals import mean_ci95, ppl_ci95

    assert zero["behaviour_ci95"] == mean_ci95(ab_behaviour_probs(qwen_chat, ITEMS)) and zero["kl_ci95"] == [0.0, 0.0]
    steered = [SteerSpec(v, strength=1.0, layers=(1, 2))]
    assert rows[1]["kl_ci95"] == mean_ci95(real_kl(qwen_chat, _data().neutral_prompts, steer=steered))
    assert rows[1]["ppl_ci95"] == ppl_ci95(text_nll(qwen_chat, _data().reference_texts, steer=steered))
    assert rows[1]["kl_ci95"][0] < rows[1]["kl"] < rows[1]["kl_ci95"][1]
    assert rows[1]["ppl_ci95"][0] <= rows[1]["ppl"] <= rows[1]["ppl_ci95"][1]
    assert "kl" not in rows[2] and rows[2]["behaviour"] == sum(ab_behaviour_probs(qwen_chat, ITEMS,
                                                                                   system="Be honest.")) / 3
    assert len(out.read_text().splitlines()) == 4
    # the vector's side effects are measured once per dose: prompt+steer takes the steer row's
    assert (rows[3]["kl"], rows[3]["ppl"]) == (rows[1]["kl"], rows[1]["ppl"]) and len(kl_calls) == 2
    assert rows[3]["behaviour"] == sum(ab_behaviour_probs(qwen_chat, ITEMS, system="Be honest.",
                                                          steer=[SteerSpec(v, strength=1.0)])) / 3

    def boom(*a, **k):
        raise AssertionError("recomputed a finished row")
    monkeypatch.setattr(sweep_mod, "ab_behaviour_probs", boom)
    again = sweep(qwen_chat, v, _data(), strengths=[0.0, 1.0], system_prompt="Be honest.", out_path=out)
    assert again == rows


def _row(s, behaviour, kl, acc, setting="steer"):
    return {"setting": setting, "strength": s, "layers": None, "resolved_layers": [3], "behaviour": behaviour,
            "kl": kl, "mc_acc": acc, "ppl": 10.0}


def test_recommend_respects_the_budget():
    rows = [_row(0.0, 0.30, 0.0, 0.60), _row(0.1, 0.40, 0.02, 0.60), _row(0.2, 0.55, 0.08, 0.59),
            _row(0.3, 0.70, 0.15, 0.58), _row(0.4, 0.80, 0.05, 0.50),
            {"setting": "prompt", "strength": 0.0, "layers": None, "resolved_layers": [3], "behaviour": 0.35,
             "mc_acc": 0.6}]
    rec = recommend(rows, direction=1, max_kl=0.1, max_capability_drop=0.02)
    assert rec["strength"] == 0.2 and rec["shift"] == DOUBLE.approx(0.25) and rec["beats_prompting"]
    assert {r["strength"] for r in rec["rejected"]} == {0.3, 0.4}
    down = recommend(rows, direction=-1)
    assert down["strength"] is None
    tight = recommend(rows, max_kl=0.01)
    assert tight["strength"] is None
    with pytest.raises(SteerwatchError, match="strength-0 row"):
        recommend(rows[1:])


def test_recommend_names_strengths_whose_kl_interval_contains_the_budget():
    """A row whose KL 95 % interval straddles the budget is listed (kl_budget_uncertain), whichever
    side of the budget its mean falls; rows without an interval (older files) are not."""
    from steerwatch.evals.budgets import DEFAULT_MAX_KL

    rows = [_row(0.0, 0.30, 0.0, 0.60), {**_row(0.1, 0.40, 0.12, 0.60), "kl_ci95": [0.10, 0.14]},
            {**_row(0.2, 0.50, 0.16, 0.60), "kl_ci95": [0.14, 0.18]},
            {**_row(0.3, 0.6, 0.3, 0.6), "kl_ci95": [0.2, 0.4]}, _row(0.4, 0.7, 0.149, 0.6)]
    rec = recommend(rows)
    assert rec["budget"]["max_kl"] == DEFAULT_MAX_KL
    assert rec["kl_budget_uncertain"] == [0.2] and rec["strength"] == 0.4
    assert recommend(rows, max_kl=0.13)["kl_budget_uncertain"] == [0.1]
    assert "kl_budget_uncertain" not in recommend(rows, max_kl=0.5)


def test_recommend_on_an_open_ended_objective():
    """The objective can be any row column or a sum of them; a flat A/B behaviour then does not
    decide the strength, the open-ended shares do (evasions not counted as honest)."""
    shares = [(0.10, 0.05), (0.10, 0.45), (0.05, 0.30), (0.30, 0.40), (0.00, 0.90)]  # corrected, rejected
    kls = [0.0, 0.05, 0.08, 0.2, 0.09]
    rows = [{**_row(s, 0.5, kl, 0.6 if s != 0.4 else 0.5), "share_corrected": c, "share_rejected": r}
            for s, kl, (c, r) in zip([0.0, 0.1, 0.2, 0.3, 0.4], kls, shares)]
    rows.append({"setting": "prompt", "strength": 0.0, "layers": None, "resolved_layers": [3], "behaviour": 0.5,
                 "mc_acc": 0.6, "share_corrected": 0.2, "share_rejected": 0.1})
    rec = recommend(rows, objective="share_corrected+share_rejected")
    # 0.3 is over the KL budget and 0.4 over the capability budget: 0.1 (0.55) beats 0.2 (0.35)
    assert rec["strength"] == 0.1 and rec["value"] == DOUBLE.approx(0.55) and rec["shift"] == DOUBLE.approx(0.40)
    assert rec["prompting"]["value"] == DOUBLE.approx(0.3) and rec["beats_prompting"]
    assert rec["objective"] == "share_corrected+share_rejected" and rec["behaviour_shift"] == 0
    assert recommend(rows, objective="share_corrected")["strength"] is None  # nothing in budget raises it
    with pytest.raises(SteerwatchError, match="no row column 'share_agreed'"):
        recommend(rows, objective="share_agreed")
    with pytest.raises(SteerwatchError, match="objective must be a row column"):
        recommend(rows, objective="share_corrected+")


def test_recommendation_is_written_into_the_vector(qwen_chat, tmp_path):
    from steerwatch.vector import load_vector

    v = make_vector(qwen_chat, seed=4)
    rec = recommend([_row(0.0, 0.3, 0.0, 0.6), _row(0.1, 0.5, 0.01, 0.6)])
    apply_recommendation(v, rec).save(tmp_path / "v.sv")
    back = load_vector(tmp_path / "v.sv")
    assert back.recommended_strength == 0.1 and back.extra["recommendation"]["shift"] == DOUBLE.approx(0.2)


def test_report_html_from_rows(tmp_path):
    from typer.testing import CliRunner

    from steerwatch.cli.main import app
    from steerwatch.evals.report import render_report

    rows = [_row(0.0, 0.30, 0.0, 0.60), _row(0.1, 0.40, 0.02, 0.60), _row(0.2, 0.55, 0.08, 0.59),
            {"setting": "prompt", "strength": 0.0, "layers": None, "resolved_layers": [3], "behaviour": 0.35,
             "mc_acc": 0.6}]
    page = render_report(rows, recommend(rows), samples=[{"strength": 0.1, "prompt": "<q>", "output": "a & b"}])
    assert page.startswith("<!doctype html>") and page.count("<svg") == 4  # behaviour, kl, ppl, mc_acc
    assert "prompting 0.35" in page and "&lt;q&gt;" in page and "a &amp; b" in page
    assert "Steer at strength +0.2 on layers 3" in page and '"budget"' not in page  # words, not JSON
    f = tmp_path / "rows.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = CliRunner().invoke(app, ["report", str(f), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.html").read_text().count('<figure class="chart"') == 4
    f.write_text('{"setting": "steer"}\n')
    res = CliRunner().invoke(app, ["report", str(f), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "not a sweep row" in res.output


def test_logits_at_chosen_positions_match_the_full_forward(qwen_chat, monkeypatch):
    """The logits_to_keep path (vocabulary projection at the needed positions only) and the
    fallback for models without it (full logits, then gathered) give the same numbers."""
    from steerwatch import batch as batch_mod
    from steerwatch.evals.metrics import completion_nll

    prompts, answers = ["Is it so?", "Name a colour.", "Why not?"], ["No, it is not.", "Blue", "Because."]
    qs = [Q, "Short?\n (A) a\n (B) b"]
    fast = (completion_nll(qwen_chat, prompts, answers, batch_size=3), letter_probs(qwen_chat, qs, ["AB", "AB"]))
    monkeypatch.setattr(batch_mod, "_accepts_logits_to_keep", lambda model: False)
    slow = (completion_nll(qwen_chat, prompts, answers, batch_size=3), letter_probs(qwen_chat, qs, ["AB", "AB"]))
    assert [n for _, n in fast[0]] == [n for _, n in slow[0]] == [len(a) for a in answers]
    assert [x for x, _ in fast[0]] == FP32_ROUTE.approx([x for x, _ in slow[0]])
    assert fast[1] == [FP32_ROUTE.approx(p) for p in slow[1]]
