"""steerwatch.data.check: each check can fail on constructed data; every built-in set passes."""
from __future__ import annotations

import json

import pytest
import torch

from steerwatch.data import ContrastPair, ContrastSet
from steerwatch.data.check import builtin_targets, check_builtin, check_pairs, near_duplicates, run_checks
from steerwatch.extract.library import cosine_matrix
from steerwatch.vector import Vector
from tolerances import FP32_STORED

WORDS = ["volcano", "tax", "sourdough", "chess", "bike", "tide", "opera", "join", "bee", "rent", "jet", "compost",
         "rebase", "marathon", "violin", "solar", "sleep", "toast", "ant", "kayak", "river", "ledger", "quilt",
         "piano", "orbit", "lemon", "cactus", "harbor", "saddle", "glacier", "pepper", "lantern", "meadow", "falcon",
         "thimble", "walnut", "anchor", "cobalt", "velvet", "prism", "ember", "tundra"]


def _set(pairs, name="t") -> ContrastSet:
    return ContrastSet(name=name, pairs=pairs)


def _good(n=60) -> list[ContrastPair]:
    import random

    rng = random.Random(0)
    out = []
    for i in range(n):
        w = rng.sample(WORDS, 6)
        out.append(ContrastPair(prompt="Tell me about " + " ".join(w) + "?",
                                positive=f"Here is a careful note on {w[0]} and {w[1]}: check it twice.",
                                negative=f"Here is a hasty note on {w[0]} and {w[1]}: skip checking it.",
                                split="val" if i % 5 == 4 else "train"))
    return out


def _status(rows, check):
    return {r.check: r.status for r in rows}[check]


def test_clean_set_passes():
    rows = check_pairs(_set(_good()))
    assert all(r.status == "pass" for r in rows), [r for r in rows if r.status != "pass"]


def test_duplicate_and_leak_fail():
    pairs = _good()
    dup = pairs[0]
    pairs.append(ContrastPair(prompt=dup.prompt, positive=dup.positive, negative=dup.negative, split="val"))
    rows = check_pairs(_set(pairs))
    assert _status(rows, "duplicates") == "fail"
    assert _status(rows, "split leakage") == "fail"
    assert "#1 and #61" in {r.check: r.detail for r in rows}["duplicates"]


def test_length_imbalance_fails_and_warns():
    pairs = [ContrastPair(prompt=p.prompt, positive=p.positive + " And a long extra tail of words here.",
                          negative=p.negative, split=p.split) for p in _good()]
    assert _status(check_pairs(_set(pairs)), "length balance") == "fail"
    mild = [ContrastPair(prompt=p.prompt, positive=p.positive + " Ok.", negative=p.negative, split=p.split)
            for p in _good()]
    assert _status(check_pairs(_set(mild)), "length balance") == "warn"


def test_surface_cues_warn():
    pairs = [ContrastPair(prompt=p.prompt, positive="Sorry, " + p.positive, negative="Look, " + p.negative,
                          split=p.split) for p in _good()]
    rows = check_pairs(_set(pairs))
    assert _status(rows, "first words") == "warn" and _status(rows, "hedge words") == "warn"
    assert "'sorry' 60 pos / 0 neg" in {r.check: r.detail for r in rows}["first words"]


def test_split_and_size():
    pairs = [ContrastPair(prompt=p.prompt, positive=p.positive, negative=p.negative, split="train") for p in _good()]
    rows = check_pairs(_set(pairs), min_pairs=80)
    assert _status(rows, "label balance") == "fail" and _status(rows, "size") == "fail"


def test_near_duplicates_scores():
    texts = ["the cat sat on the mat today", "the cat sat on the mat today", "the cat sat on a mat today",
             "completely different words here now"]
    found = {(i, j): round(s, 2) for i, j, s in near_duplicates(texts, threshold=0.3)}
    assert found[(0, 1)] == 1.0 and 0.3 <= found[(0, 2)] < 1.0 and (0, 3) not in found


def test_run_checks_on_files(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative,
                                          "split": p.split}) for p in _good()), encoding="utf-8")
    assert {r.status for r in run_checks([str(good)])} == {"pass"}
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"positive": "a"}\n', encoding="utf-8")
    rows = run_checks([str(broken)])
    assert len(rows) == 1 and rows[0].status == "fail" and "negative" in rows[0].detail
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}], "label": 1}) + "\n", encoding="utf-8")
    rows = run_checks([str(conv)])
    assert {r.check: r.status for r in rows}["label balance"] == "fail"  # only one label present


@pytest.mark.parametrize("target", builtin_targets())
def test_every_builtin_set_passes(target):
    rows = check_builtin(target)
    failed = [r for r in rows if r.status == "fail"]
    assert not failed, failed


def test_cosine_matrix():
    d = 8
    a = torch.zeros(d)
    a[0] = 1
    b = torch.zeros(d)
    b[0] = b[1] = 1
    c = -a

    def vec(direction, name):
        dirs = {i: direction / direction.norm() for i in range(4)}
        return Vector(directions=dirs, concept=name, model_name="m", model_fingerprint="f", hidden_size=d,
                      method="mean_diff", read_position="completion_mean", default_layers=[1],
                      residual_norm={i: {"mean": 1.0, "std": 0.0, "n": 1} for i in range(4)}, n_model_layers=4)

    rows = cosine_matrix({"a": vec(a, "a"), "b": vec(b, "b"), "c": vec(c, "c")}, layers=[1, 2])
    got = {(r["a"], r["b"]): r["cosine"] for r in rows}
    assert got["a", "a"] == FP32_STORED.approx(1.0)
    assert got["a", "b"] == FP32_STORED.approx(2 ** -0.5)
    assert got["a", "c"] == FP32_STORED.approx(-1.0)
    assert len(rows) == 9


def test_cli_data_check_and_compare(tmp_path, qwen):
    from typer.testing import CliRunner

    from conftest import make_vector
    from steerwatch.cli.main import app

    runner = CliRunner()
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative,
                                          "split": p.split}) for p in _good()), encoding="utf-8")
    res = runner.invoke(app, ["data", "check", str(good), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert all(r["status"] == "pass" for r in json.loads((tmp_path / "r.json").read_text())["checks"])
    leaky = tmp_path / "leaky.jsonl"
    rows = [{"prompt": p.prompt, "positive": p.positive, "negative": p.negative, "split": p.split} for p in _good()]
    rows.append({**rows[0], "split": "val"})
    leaky.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    res = runner.invoke(app, ["data", "check", str(leaky)])
    assert res.exit_code == 1 and "split leakage" in res.output
    res = runner.invoke(app, ["data", "check", "no-such-set"])
    assert res.exit_code == 2 and "unknown data set" in res.output
    a, b = tmp_path / "a.sv", tmp_path / "b.sv"
    make_vector(qwen, seed=1, concept="a").save(a)
    make_vector(qwen, seed=1, concept="b").save(b)  # same directions, another name
    res = runner.invoke(app, ["compare", str(a), str(b), "--layers", "1,2"])
    assert res.exit_code == 0 and "+1.00" in res.output
