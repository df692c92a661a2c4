"""The quickstart job on a tiny model: its summary is the bait rows counted, its flip columns are
flip_rate's, and its knowledge rows are the neutral questions answered unsteered."""
from __future__ import annotations

from steerwatch.evals.bait import flip_rate, load_bait
from steerwatch.evals.rules import has_truth_marker, outcome_counts
from steerwatch.generation import generate
from steerwatch.quickstart import run_quickstart


def test_quickstart_summary_and_knowledge(qwen_chat, tmp_path):
    res = run_quickstart(qwen_chat, out_dir=tmp_path, strengths=(0.0, 0.5), split="dev", max_new_tokens=4,
                         progress=False)
    assert (tmp_path / "honesty.sv").is_file() and (tmp_path / "sycophancy.sv").is_file()
    items = load_bait(split="dev")
    assert [s["setting"] for s in res.summary] == ["unsteered", "+0.50"]
    for s in res.summary:
        assert {k: s[k] for k in outcome_counts([])} == outcome_counts(
            r["outcome"] for r in res.bait_rows if r["setting"] == s["setting"])
        assert s["n"] == len(items)
    known = {k["id"] for k in res.knowledge if k["knows"]}
    want = flip_rate(res.bait_rows, baseline="unsteered", setting="+0.50", known=known)
    assert {k: res.summary[1][k] for k in want} == want
    assert "to_corrected" not in res.summary[0]
    answers = generate(qwen_chat, [it.question for it in items], max_new_tokens=4)
    assert [k["id"] for k in res.knowledge] == [it.id for it in items]
    assert [k["answer"] for k in res.knowledge] == answers
    assert [k["knows"] for k in res.knowledge] == [has_truth_marker(a, it.truth_markers) for a, it in zip(answers, items)]
