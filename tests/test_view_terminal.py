"""`steerwatch view` in the terminal shows each detector's response score, threshold and flag, and
with --tokens every token's scores (issue 21, item 7)."""
from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from conftest import make_vector
from steerwatch.watch.detector import Detector
from steerwatch.watch.score import score_conversations
from steerwatch.watch.view import render_terminal, score_summary

CONV = [{"role": "user", "content": "Is it done?"}, {"role": "assistant", "content": "Yes, all [3] tests pass."}]


def _detectors(qwen):
    flagged = Detector(vector=make_vector(qwen, seed=1, concept="cheating"), layer=1, threshold=-1e6)
    quiet = Detector(vector=make_vector(qwen, seed=2, concept="sycophancy"), layer=2, threshold=1e6)
    raw = Detector(vector=make_vector(qwen, seed=3, concept="honesty"), layer=3)
    return [flagged, quiet, raw]


def _text(renderable) -> str:
    c = Console(width=250, record=True, markup=False, color_system=None)
    c.print(renderable)
    return c.export_text()


def test_summary_rows_are_the_detectors_numbers(qwen):
    dets = _detectors(qwen)
    (sc,) = score_conversations(qwen, [CONV], dets)
    rows = score_summary(sc, dets)
    assert [(r["detector"], r["layer"], r["threshold"], r["flagged"]) for r in rows] == [
        ("cheating", 1, -1e6, True), ("sycophancy", 2, 1e6, False), ("honesty", 3, None, False)]
    assert [r["score"] for r in rows] == [sc.response_score(d.name, d.aggregate) for d in dets]


def test_terminal_view_shows_scores_thresholds_and_flags(qwen):
    dets = _detectors(qwen)
    (sc,) = score_conversations(qwen, [CONV], dets)
    text = _text(render_terminal(sc, dets, qwen.tokenizer))
    lines = {ln.split("│")[1].strip(): ln for ln in text.splitlines() if ln.count("│") >= 5}
    s = sc.response_score("cheating")
    assert f"{s:+.3f} (mean)" in lines["cheating"] and "-1000000.000" in lines["cheating"]
    assert "FLAGGED" in lines["cheating"] and "FLAGGED" not in lines["sycophancy"]
    assert "uncalibrated" in lines["honesty"]
    assert "Yes, all [3] tests pass." in text  # the tinted row keeps the brackets
    assert "▲" not in text  # no token table by default (every token is above cheating's threshold)


def test_tokens_option_lists_every_token_score(qwen):
    dets = _detectors(qwen)
    (sc,) = score_conversations(qwen, [CONV], dets)
    text = _text(render_terminal(sc, dets, qwen.tokenizer, tokens=True))
    answer = [i for i, k in enumerate(sc.msg_index) if k == 1]
    first = answer[0]
    row = next(ln for ln in text.splitlines() if ln.split()[:2] == [str(first), "Y"])
    assert row.split()[2:] == [f"{sc.scores['cheating'][first]:+.3f}", "▲", f"{sc.scores['sycophancy'][first]:+.3f}",
                               f"{sc.scores['honesty'][first]:+.3f}"]
    assert sum(1 for ln in text.splitlines() if ln.split()[:1] and ln.split()[0].isdigit()) == len(
        [i for i, k in enumerate(sc.msg_index) if k >= 0])


def test_cli_view_prints_the_summary_and_tokens(qwen, tmp_path, monkeypatch):
    import steerwatch.cli.watch as cli_watch
    from steerwatch.cli.main import app

    monkeypatch.setattr(cli_watch, "load", lambda spec, **kw: qwen)
    monkeypatch.setenv("COLUMNS", "200")
    det = _detectors(qwen)[0]
    det.vector_path = str(det.vector.save(tmp_path / "cheating.sv"))
    det_file = det.save(tmp_path / "cheating.det.json")
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"id": "run[7]", "messages": CONV}) + "\n", encoding="utf-8")
    res = CliRunner().invoke(app, ["view", str(f), "-d", str(det_file), "--tokens"])
    assert res.exit_code == 0, res.output
    assert "run[7]" in res.output and "FLAGGED" in res.output and "response score" in res.output
    assert "▲" in res.output
