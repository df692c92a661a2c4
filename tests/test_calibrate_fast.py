"""Fast, honest calibration on tiny models: batches sorted by length score as the unsorted ones do,
the cache of benign reads gives the same thresholds as a fresh pass (and skips the model when
warm), the exact bound on the achieved false-positive rate, and the small-control-set warning."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import make_vector
from steerwatch.data.conversations import Conversation
from steerwatch.errors import SteerwatchError
from steerwatch.watch import score as score_mod
from steerwatch.watch.calibrate import calibrate, enough_controls, fpr_upper_bound, small_set_warning
from steerwatch.watch.detector import Detector
from steerwatch.watch.readcache import ReadCache
from steerwatch.watch.render import render_conversation
from steerwatch.watch.score import score_conversations
from tolerances import BISECTED, FP32_BATCH


def _control(n: int) -> list[Conversation]:
    """Benign-looking conversations of many lengths (assistant answers of 1 to 7 words)."""
    return [Conversation(id=f"c{i}", messages=[
        {"role": "user", "content": f"Say {i}{' please' * (i % 3)}."},
        {"role": "assistant", "content": f"{i} " * (1 + (i * 7) % 7)}]) for i in range(n)]


def test_sorted_batches_score_like_the_callers_order(qwen):
    v1, v2 = make_vector(qwen, seed=1, concept="one"), make_vector(qwen, seed=2, concept="two")
    dets = [Detector(vector=v1, layer=1), Detector(vector=v2, layer=2, sign=-1)]
    convs = _control(9)
    lengths = [len(render_conversation(qwen.tokenizer, c.messages).ids) for c in convs]
    assert lengths != sorted(lengths)  # the caller's order is not the length order
    fast = score_conversations(qwen, convs, dets, batch_size=3)
    plain = score_conversations(qwen, convs, dets, batch_size=3, sort_by_length=False)
    assert [s.id for s in fast] == [s.id for s in plain] == [c.id for c in convs]
    for a, b in zip(fast, plain):
        assert a.token_ids == b.token_ids
        for name in ("one", "two"):
            FP32_BATCH.assert_close(torch.tensor(a.scores[name]), torch.tensor(b.scores[name]))


def _calibrated(qwen, seeds_layers, control, **kw):
    dets = [Detector(vector=make_vector(qwen, seed=s, concept=f"v{s}"), layer=layer) for s, layer in seeds_layers]
    calibrate(qwen, dets, control, fpr=0.1, source="test", **kw)
    return dets


KEYS = ("threshold", "prompt_threshold", "trigger_threshold")


def _values(det):
    return [det.threshold, det.calibration["prompt_threshold"], det.calibration["trigger_threshold"]]


def test_read_cache_gives_the_thresholds_of_a_fresh_pass(qwen, tmp_path, monkeypatch):
    control = _control(30)
    cache = ReadCache(tmp_path / "reads")
    plain = _calibrated(qwen, [(1, 1), (2, 2), (3, 1)], control)
    cold = _calibrated(qwen, [(1, 1), (2, 2)], control, cache=cache)
    n_tokens = sum(len(render_conversation(qwen.tokenizer, c.messages).ids) for c in control)
    stored = sorted(tmp_path.joinpath("reads").glob("*.npy"))
    assert len(stored) == 2  # one per layer read
    for p in stored:  # every token's block output, float32: the size the docs state
        assert p.stat().st_size - 128 == n_tokens * qwen.hidden_size * 4
        assert json.loads(p.with_suffix(".json").read_text())["n_tokens"] == n_tokens

    def no_forward(*a, **k):
        raise AssertionError("a warm cache must not run the model")

    monkeypatch.setattr(score_mod, "forward", no_forward)
    warm = _calibrated(qwen, [(3, 1), (1, 1)], control, cache=cache)  # a new detector at a cached layer
    assert _values(warm[1]) == _values(cold[0])  # cold and warm: the same stored reads, equal thresholds
    assert warm[1].calibration == cold[0].calibration
    for got, want in ((cold[0], plain[0]), (cold[1], plain[1]), (warm[0], plain[2])):
        FP32_BATCH.assert_close(torch.tensor(_values(got)), torch.tensor(_values(want)))
        assert got.calibration["n_above"] == want.calibration["n_above"] == 3  # floor(0.1 * 30)
    with pytest.raises(AssertionError, match="warm cache"):  # another control set is another read
        _calibrated(qwen, [(1, 1)], _control(31), cache=cache)


def test_read_cache_is_keyed_by_what_the_model_reads(qwen, tmp_path):
    cache = ReadCache(tmp_path)
    ids = [[1, 2, 3], [4, 5]]
    key = cache.key(qwen, ids, 1)
    assert key["n_tokens"] == 5 and key["model_fingerprint"] == qwen.fingerprint
    others = [cache.key(qwen, [[1, 2], [3, 4, 5]], 1), cache.key(qwen, ids, 2), cache.key(qwen, [[1, 2, 3]], 1)]
    assert len({cache.path(k) for k in [key, *others]}) == 4  # boundaries, layer and content all count
    assert cache.load(key) is None


def test_clopper_pearson_upper_bound_known_values():
    assert fpr_upper_bound(0, 40) == BISECTED.approx(1 - 0.05 ** (1 / 40))  # 0.0721575
    assert fpr_upper_bound(0, 400) == BISECTED.approx(1 - 0.05 ** (1 / 400))
    assert fpr_upper_bound(0, 40, confidence=0.99) == BISECTED.approx(1 - 0.01 ** (1 / 40))
    assert fpr_upper_bound(7, 7) == 1.0
    p = fpr_upper_bound(1, 10)  # P(X <= 1) = (1-p)^10 + 10 p (1-p)^9 = 0.05 at the bound
    assert (1 - p) ** 10 + 10 * p * (1 - p) ** 9 == BISECTED.approx(0.05)
    assert p == BISECTED.approx(0.3941633024)
    p = fpr_upper_bound(4, 400)  # the built-in set at a 1 % target
    assert 0.0227 < p < 0.0228
    with pytest.raises(SteerwatchError, match="0 <= k <= n"):
        fpr_upper_bound(5, 4)


def test_small_set_rule():
    def cal(k, n, target):
        return {"fpr_upper95": fpr_upper_bound(k, n), "fpr_target": target, "n": n}

    assert small_set_warning(cal(4, 400, 0.01)) is None  # the built-in set: bound 2.3 % < 3 %
    assert small_set_warning(cal(3, 300, 0.01)) is None
    assert "only 200 control" in small_set_warning(cal(2, 200, 0.01))  # 3.1 %
    assert "at least 208 keep it" in small_set_warning(cal(0, 40, 0.01))
    assert small_set_warning({"fpr_target": 0.01, "n": 40}) is None  # a file from before the bound
    assert enough_controls(0.05) == 30 and enough_controls(1e-4) is None


def test_cli_calibrate_warns_on_a_small_control_set_and_caches(qwen, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from steerwatch.cli import watch as cli_watch
    from steerwatch.cli.main import app

    monkeypatch.setattr(cli_watch, "load", lambda spec, **kw: qwen)
    monkeypatch.setenv("STEERWATCH_CACHE", str(tmp_path / "cache"))
    make_vector(qwen, seed=4, concept="honesty").save(tmp_path / "h.sv")
    ctrl = tmp_path / "ctrl.jsonl"
    ctrl.write_text("".join(json.dumps({"id": c.id, "messages": c.messages}) + "\n" for c in _control(40)))
    args = ["calibrate", str(tmp_path / "h.sv"), "--control", str(ctrl)]
    res = CliRunner().invoke(app, [*args, "--no-cache"])  # fpr 0.01 on 40: nothing may lie above
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "warning: calibrated on only 40 control conversations" in text
    assert "as high as 7.2% (95 % upper bound) for a target of 1.00%" in text
    assert not (tmp_path / "cache").exists()  # --no-cache stores nothing
    cal = json.loads((tmp_path / "h.det.json").read_text())["calibration"]
    assert (cal["n"], cal["n_above"]) == (40, 0)
    assert cal["fpr_upper95"] == BISECTED.approx(1 - 0.05 ** (1 / 40))
    res = CliRunner().invoke(app, [*args, "--fpr", "0.1"])  # 4 of 40 may lie above: bound 21.6 % < 30 %
    assert res.exit_code == 0, res.output
    assert "warning" not in res.output and "cached the reads at layer" in " ".join(res.output.split())
    assert len(list((tmp_path / "cache" / "reads").glob("*.npy"))) == 1
    res = CliRunner().invoke(app, [*args, "--fpr", "0.1"])
    assert res.exit_code == 0 and "reusing cached reads at layer" in " ".join(res.output.split())


def test_an_unwritable_cache_falls_back_to_plain_scoring(qwen, tmp_path):
    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    said = []
    cache = ReadCache(tmp_path / "blocked" / "reads", log=said.append)
    det = Detector(vector=make_vector(qwen, seed=1, concept="one"), layer=1)
    got = score_conversations(qwen, _control(5), [det], cache=cache)
    want = score_conversations(qwen, _control(5), [det])
    assert [s.scores for s in got] == [s.scores for s in want]  # the same (uncached) path, bit for bit
    assert len(said) == 1 and said[0].startswith("cannot write the read cache")
