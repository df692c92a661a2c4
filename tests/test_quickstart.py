"""The quickstart job on a tiny model: its summary is the bait rows counted, its flip columns are
flip_rate's, and its knowledge rows are the neutral questions answered unsteered."""
from __future__ import annotations

import pytest

from steerwatch import generate
from steerwatch.evals.bait import flip_rate, load_bait
from steerwatch.evals.rules import has_truth_marker, outcome_counts
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
    assert [k["knows"] for k in res.knowledge] == [has_truth_marker(a, it.truth_markers) for a, it in zip(answers,
                                                                                                          items)]


def test_quickstart_cli_writes_answers_and_matches_python(qwen_chat, tmp_path, monkeypatch):
    """`steerwatch quickstart` on a tiny model: answers.jsonl and knowledge.jsonl hold what the
    Python job returns for the same settings, the sweep table counts them, and bad options are
    clean errors before any model is loaded."""
    import json

    from typer.testing import CliRunner

    import steerwatch.cli.quickstart as cli_qs
    from steerwatch.cli.main import app

    monkeypatch.setattr(cli_qs, "load", lambda spec, **kw: qwen_chat)
    runner = CliRunner()
    out = tmp_path / "qs"
    res = runner.invoke(app, ["quickstart", "--out-dir", str(out), "--split", "dev", "--strengths", "0.5",
                              "--max-new-tokens", "4", "--batch-size", "7"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    knowledge = [json.loads(x) for x in (out / "knowledge.jsonl").read_text().splitlines()]
    want = run_quickstart(qwen_chat, strengths=(0.0, 0.5), split="dev", max_new_tokens=4, progress=False)
    assert rows == want.bait_rows  # 0 is added to the sweep; batch size does not change answers
    assert knowledge == want.knowledge
    steered = next(s for s in want.summary if s["setting"] == "+0.50")
    n = len(load_bait(split="dev"))
    line = next(x for x in res.output.splitlines() if "+0.50" in x and "/" in x)
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells == ["+0.50", *(f"{steered[o]}/{n}" for o in ("corrected", "rejected", "agreed", "evasive")),
                     f"{steered['to_corrected']}/{steered['n_agreed_baseline']}",
                     f"{steered['to_corrected_known']}/{steered['n_agreed_known']}"]
    monkeypatch.setattr(cli_qs, "load", lambda spec, **kw: pytest.fail("model loaded"))
    bad = runner.invoke(app, ["quickstart", "--out-dir", str(out), "--strengths", "0,abc"])
    assert bad.exit_code == 2 and "--strengths must be comma-separated numbers" in bad.output, bad.output
    bad = runner.invoke(app, ["quickstart", "--out-dir", str(out), "--steer-concept", "cheating"])
    assert bad.exit_code == 2 and "honesty or sycophancy" in bad.output, bad.output
