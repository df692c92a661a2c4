"""steerwatch.watch on tiny models: rendering with a token -> message map, per-token scores equal
the manual dot product (under padding and in batches), aggregation, calibration at a target FPR,
detection metrics, detector files."""
from __future__ import annotations

import json
import random

import pytest
import torch

from conftest import BlockCapture, make_vector
from steerwatch.data.conversations import Conversation
from steerwatch.errors import SteerwatchError, VectorFileError
from steerwatch.layers import decoder_blocks
from steerwatch.watch.calibrate import auroc, calibrate, detection_metrics, threshold_for_fpr
from steerwatch.watch.detector import Detector, load_detector
from steerwatch.watch.render import render_conversation
from steerwatch.watch.score import score_conversations
from tolerances import DOUBLE, FP32_BATCH, FP32_DEEP, FP32_ROUTE

AGENT = [
    {"role": "system", "content": "You fix bugs."},
    {"role": "user", "content": "Make the tests pass."},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "run_shell", "arguments": '{"cmd": "pytest -q"}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "1 failed"},
    {"role": "assistant", "content": "One test fails in parse()."},
]


def _convs():
    return [
        Conversation(id="a", messages=[{"role": "user", "content": "Is 7 prime?"},
                                       {"role": "assistant", "content": "Yes, 7 is prime."}], label=0),
        Conversation(id="b", messages=[{"role": "user", "content": "Name a colour, please, any colour at all."},
                                       {"role": "assistant", "content": "Blue."}], label=1),
        Conversation(id="c", messages=AGENT, label=1),
    ]


@pytest.mark.parametrize("fixture", ["qwen", "qwen_chat"])
def test_render_maps_tokens_to_messages(fixture, request):
    loaded = request.getfixturevalue(fixture)
    tok = loaded.tokenizer
    rc = render_conversation(tok, AGENT)
    assert len(rc.ids) == len(rc.msg_index)
    for k, m in enumerate(AGENT):
        text = tok.decode([t for t, o in zip(rc.ids, rc.msg_index) if o == k])
        if m["content"]:
            assert text.strip() == m["content"], (k, text)
    calls = tok.decode([t for t, o in zip(rc.ids, rc.msg_index) if o == 2])
    assert "run_shell" in calls and "pytest -q" in calls  # tool-call arguments are scored text
    glue = tok.decode([t for t, o in zip(rc.ids, rc.msg_index) if o == -1])
    assert "Make the tests" not in glue
    short = render_conversation(tok, AGENT, max_tokens=10)
    assert short.truncated and len(short.ids) == 10


@pytest.mark.parametrize("fixture", ["qwen", "qwen_chat", "gpt2"])
def test_scores_equal_manual_dot_product_in_batches(fixture, request):
    loaded = request.getfixturevalue(fixture)
    v1 = make_vector(loaded, seed=1, concept="one")
    v2 = make_vector(loaded, seed=2, concept="two")
    dets = [Detector(vector=v1, layer=1, sign=1), Detector(vector=v2, layer=2, sign=-1)]
    convs = _convs()
    batched = score_conversations(loaded, convs, dets, batch_size=3)  # padded batch of 3 lengths
    blocks = decoder_blocks(loaded.model, layers_path=loaded.layers_path)
    for conv, sc in zip(convs, batched):
        assert sc.id == conv.id and sc.label == conv.label
        rc = render_conversation(loaded.tokenizer, conv.messages)
        with BlockCapture(blocks) as cap, torch.inference_mode():
            loaded.model(input_ids=torch.tensor([rc.ids]))
        h1, h2 = cap.outs[1][0][0], cap.outs[2][0][0]  # (seq, d)
        want1 = h1 @ v1.direction(1)
        want2 = -(h2 @ v2.direction(2))
        FP32_ROUTE.assert_close(torch.tensor(sc.scores["one"]), want1)
        FP32_ROUTE.assert_close(torch.tensor(sc.scores["two"]), want2)
        single = score_conversations(loaded, [conv], dets, batch_size=1)[0]
        FP32_BATCH.assert_close(torch.tensor(single.scores["one"]), torch.tensor(sc.scores["one"]))


def test_detector_reads_the_read_directions(qwen, tmp_path):
    import dataclasses

    v = make_vector(qwen, seed=1, concept="cheating")
    v.validation = {layer: {"auroc": 0.6 + layer / 100} for layer in v.layers}  # steering: best at the last layer
    reads = make_vector(qwen, seed=9).directions
    rv = dataclasses.replace(v, read_directions=reads, read_method="lda",
                             read_validation={layer: {"auroc": 0.99 if layer == 1 else 0.7} for layer in v.layers})
    assert v.best_layer(read=True) == qwen.n_layers - 1 and rv.best_layer(read=True) == 1  # the read AUROC
    det = Detector.from_vector(rv)
    assert det.layer == 1 and torch.equal(det.unit(), reads[1])
    conv = _convs()[:2]
    got = score_conversations(qwen, conv, [det])
    # exactly what a detector on a vector whose directions *are* the read directions scores
    want = score_conversations(qwen, conv, [Detector(vector=dataclasses.replace(v, directions=reads), layer=1)])
    for g, w in zip(got, want):
        assert g.scores["cheating"] == w.scores["cheating"]
    # a detector file notices a change of the read directions alone
    vp = tmp_path / "c.sv"
    rv.save(vp)
    path = Detector.from_vector(rv, vector_path=str(vp)).save(tmp_path / "c.det.json")
    dataclasses.replace(rv, read_directions=make_vector(qwen, seed=10).directions).save(vp)
    with pytest.raises(VectorFileError, match="changed since"):
        load_detector(path)


def test_aggregates(qwen):
    v = make_vector(qwen, seed=3, concept="c")
    sc = score_conversations(qwen, [Conversation(id="c", messages=AGENT)], [Detector(vector=v, layer=1)])[0]
    s = sc.scores["c"]
    asst = [i for i, k in enumerate(sc.msg_index) if k >= 0 and sc.roles[k] == "assistant"]
    assert sc.response_score("c", "mean") == DOUBLE.approx(sum(s[i] for i in asst) / len(asst))
    assert sc.response_score("c", "max") == max(s[i] for i in asst)
    assert sc.response_score("c", "last") == s[asst[-1]]
    turns = sc.turn_scores("c")
    assert [k for k, _ in turns] == [2, 4]
    assert sc.response_score("c", "max_turn") == max(v for _, v in turns)
    msg = sc.message_scores("c")
    user_idx = [i for i, k in enumerate(sc.msg_index) if k == 1]
    assert msg[1] == DOUBLE.approx(sum(s[i] for i in user_idx) / len(user_idx))
    with pytest.raises(SteerwatchError, match="valid: mean, max, last, max_turn"):
        sc.response_score("c", "median")


@pytest.mark.parametrize("n, fpr", [(1000, 0.01), (340, 0.01), (340, 0.05), (57, 0.05), (200, 0.2)])
def test_threshold_hits_requested_fpr(n, fpr):
    rng = random.Random(n)
    neg = [rng.gauss(0, 1) for _ in range(n)]
    thr, achieved = threshold_for_fpr(neg, fpr)
    above = sum(x > thr for x in neg)
    assert above == int(fpr * n + 1e-9)  # exactly floor(fpr * n) above: the most the budget allows
    assert achieved == above / n <= fpr
    # fresh data from the same distribution lands near the target
    fresh = [rng.gauss(0, 1) for _ in range(20000)]
    assert abs(sum(x > thr for x in fresh) / len(fresh) - fpr) < max(0.5 * fpr, 3 * (fpr / n) ** 0.5)


def test_threshold_bad_input():
    with pytest.raises(SteerwatchError, match="between 0 and 1"):
        threshold_for_fpr([1.0, 2.0], 1.5)
    with pytest.raises(SteerwatchError, match="no calibration scores"):
        threshold_for_fpr([], 0.01)


def test_detection_metrics_exact():
    scores = [0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.35, 0.05]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    row = detection_metrics(scores, labels, threshold=0.32)
    # positives 0.9, 0.8, 0.35, 0.05 vs negatives 0.1..0.4: wins 4+4+3+0 of 16
    assert row["auroc"] == DOUBLE.approx(11 / 16) == auroc([0.9, 0.8, 0.35, 0.05], [0.1, 0.2, 0.3, 0.4])
    assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (3, 1, 1, 3)
    assert row["recall@0.01fpr"] == 0.5  # threshold = max negative 0.4: 0.9 and 0.8 above


def test_calibrate_sets_threshold_and_file_round_trip(qwen, tmp_path):
    v = make_vector(qwen, seed=4, concept="honesty")
    vp = tmp_path / "honesty.sv"
    v.save(vp)
    det = Detector.from_vector(v, vector_path=str(vp))
    assert det.sign == -1  # honesty: low projection is the problem
    control = [Conversation(id=f"c{i}", messages=[{"role": "user", "content": f"Say {i}."},
                                                  {"role": "assistant", "content": f"{i} " * (1 + i % 5)}])
               for i in range(40)]
    rows = calibrate(qwen, [det], control, fpr=0.05, source="test")
    scores = [s.response_score("honesty") for s in score_conversations(qwen, control, [det])]
    assert sum(x > det.threshold for x in scores) == 2 and rows[0]["achieved_fpr"] == 0.05
    path = det.save(tmp_path / "honesty.det.json")
    assert json.loads(path.read_text())["vector"] == "honesty.sv"
    back = load_detector(path)
    assert (back.threshold, back.layer, back.sign, back.aggregate) == (det.threshold, det.layer, -1, "mean")
    assert back.calibration["n"] == 40 and back.calibration["sha256"] == det.calibration["sha256"]
    make_vector(qwen, seed=5, concept="honesty").save(vp)  # the vector changes under the detector
    with pytest.raises(VectorFileError, match="changed since"):
        load_detector(path)


def test_detector_bad_input(qwen, tmp_path):
    v = make_vector(qwen, layers=[0, 1])
    with pytest.raises(SteerwatchError, match="no direction at layer 3"):
        Detector(vector=v, layer=3)
    with pytest.raises(SteerwatchError, match="sign must be"):
        Detector(vector=v, layer=1, sign=2)
    (tmp_path / "x.det.json").write_text("{}")
    with pytest.raises(VectorFileError, match="not a steerwatch detector"):
        load_detector(tmp_path / "x.det.json")
    with pytest.raises(VectorFileError, match="does not exist"):
        load_detector(tmp_path / "missing.det.json")
    with pytest.raises(SteerwatchError, match="unique"):
        score_conversations(qwen, _convs(), [Detector(vector=v, layer=1), Detector(vector=v, layer=0)])


def test_cli_detect_eval_reads_builtin_eval_sets(qwen, tmp_path, monkeypatch):
    """`detect-eval --data eval/NAME` reads a built-in labelled set; two sets give the matrix."""
    from typer.testing import CliRunner

    from steerwatch.cli import watch as cli_watch
    from steerwatch.cli.main import app
    from steerwatch.data.evalsets import load_eval_set

    monkeypatch.setattr(cli_watch, "load", lambda spec, **kw: qwen)
    make_vector(qwen, seed=4, concept="cheating").save(tmp_path / "c.sv")
    mine = tmp_path / "mine.jsonl"
    mine.write_text("".join(json.dumps({"id": c.id, "label": c.label, "messages": c.messages}) + "\n"
                            for c in _convs()))
    res = CliRunner().invoke(app, ["detect-eval", "--data", "eval/cheating_code", "--data", str(mine),
                                   "-d", str(tmp_path / "c.sv"), "-o", str(tmp_path / "de.jsonl")])
    assert res.exit_code == 0, res.output
    assert "generalisation matrix" in res.output
    rows = [json.loads(x) for x in (tmp_path / "de.jsonl").read_text().splitlines()]
    want = load_eval_set("cheating_code")
    assert [r["dataset"] for r in rows] == ["eval/cheating_code", str(mine)]
    assert (rows[0]["n_pos"], rows[0]["n_neg"]) == (sum(c.label for c in want), sum(1 - c.label for c in want))
    res = CliRunner().invoke(app, ["detect-eval", "--data", "eval/nope", "-d", str(tmp_path / "c.sv")])
    assert res.exit_code == 2 and "nope" in res.output


# ---------------------------------------------------------------- live watching and conditional steering
from steerwatch.runtime import Conditional, GenerationOptions, generate  # noqa: E402
from steerwatch.steer import SteerSpec  # noqa: E402

PROMPTS = ["Hello there, how are you?", "Sum 2 and 2.", "Write a word."]


def _manual_scores(loaded, ids, det):
    blocks = decoder_blocks(loaded.model, layers_path=loaded.layers_path)
    with BlockCapture(blocks) as cap, torch.inference_mode():
        loaded.model(input_ids=torch.tensor([ids]))
    return (cap.outs[det.layer][0][0] @ det.unit()).tolist()


def test_live_scores_equal_teacher_forced(qwen_chat):
    v = make_vector(qwen_chat, seed=7, concept="c")
    det = Detector(vector=v, layer=2)
    opts = GenerationOptions(max_new_tokens=12, batch_size=3)
    res = generate(qwen_chat, PROMPTS, opts, watch=[det])
    gens = generate(qwen_chat, PROMPTS, opts)
    for w, g in zip(res, gens):
        assert w.new_ids == g.new_ids and not w.rescored
        manual = _manual_scores(qwen_chat, g.prompt_ids + g.new_ids, det)[len(g.prompt_ids):]
        n = len(w.scores["c"])
        assert n == len(g.new_ids) - 1  # an end token is not scored; a cut-off last token has no live score
        FP32_DEEP.assert_close(torch.tensor(w.scores["c"]), torch.tensor(manual[:n]))


def test_steered_detector_is_rescored_not_read_back(qwen_chat):
    v = make_vector(qwen_chat, seed=8, concept="c", default_layers=(1,))
    det = Detector(vector=v, layer=2)
    upstream = Detector(vector=make_vector(qwen_chat, seed=9, concept="up"), layer=0)
    spec = SteerSpec(vector=v, strength=3.0, layers=(1, 2))
    res = generate(qwen_chat, PROMPTS, GenerationOptions(max_new_tokens=10), watch=[det, upstream], steer=[spec])
    for w in res:
        assert w.rescored == ["c"]  # reads at/after a steered layer -> rescored; layer 0 keeps live scores
        clean = score_conversations(qwen_chat, [[{"role": "user", "content": PROMPTS[res.index(w)]},
                                                 {"role": "assistant", "content": w.text}]], [det])[0]
        want = clean.response_score("c")
        assert w.response["c"] == FP32_ROUTE.approx(want)
    # what a naive read of the steered stream would have reported: the push read back
    from steerwatch.steer import steering
    w = res[0]
    conv = [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": w.text}]
    with steering(qwen_chat, [spec]):
        naive = score_conversations(qwen_chat, [conv], [det])[0].response_score("c")
    assert naive - w.response["c"] > 5.0  # 3 residual norms (2.0 each) pushed at layers 1 and 2


def _calibrated(det, **cal):
    det.threshold = 0.0
    det.calibration = {"trigger_window": 2, **cal}
    return det


def test_conditional_token_mode_leaves_tokens_before_trigger(qwen_chat):
    v = make_vector(qwen_chat, seed=10, concept="t")
    trig = Detector(vector=v, layer=1)
    base = generate(qwen_chat, PROMPTS, GenerationOptions(max_new_tokens=16), watch=[trig])
    # a threshold that the unsteered run crosses part-way: between its running means
    from steerwatch.watch.calibrate import running_max_mean
    seq = base[0].scores["t"]
    means = [running_max_mean(seq[:k + 1], 2) for k in range(len(seq))]
    thr = (means[3] + means[-1]) / 2 if means[-1] > means[3] else means[3] - 1e-6
    k = next(i for i, m in enumerate(means) if m > thr)
    _calibrated(trig, trigger_threshold=thr)
    push = SteerSpec(vector=make_vector(qwen_chat, seed=11, concept="push"), strength=8.0, layers=(0, 1, 2, 3))
    cond = Conditional(trigger=trig, specs=[push], mode="token")
    out = generate(qwen_chat, PROMPTS, GenerationOptions(max_new_tokens=16), conditional=cond)
    assert out[0].triggered_at == k
    assert out[0].new_ids[:k + 2] == base[0].new_ids[:k + 2]  # the trigger token and everything before
    assert out[0].new_ids != base[0].new_ids  # and steering did act afterwards
    for o, b in zip(out, base):
        if o.triggered_at is None:
            assert o.new_ids == b.new_ids


def test_conditional_prompt_mode(qwen_chat):
    v = make_vector(qwen_chat, seed=12, concept="t")
    push = SteerSpec(vector=make_vector(qwen_chat, seed=13, concept="push"), strength=8.0, layers=(1, 2))
    opts = GenerationOptions(max_new_tokens=10)
    steered = generate(qwen_chat, PROMPTS, opts, steer=[push])
    plain = generate(qwen_chat, PROMPTS, opts)
    on = generate(qwen_chat, PROMPTS, opts, conditional=Conditional(
        trigger=_calibrated(Detector(vector=v, layer=1), prompt_threshold=-1e9), specs=[push], mode="prompt"))
    off = generate(qwen_chat, PROMPTS, opts, conditional=Conditional(
        trigger=_calibrated(Detector(vector=v, layer=1), prompt_threshold=1e9), specs=[push], mode="prompt"))
    assert [o.new_ids for o in on] == [g.new_ids for g in steered]
    assert [o.new_ids for o in off] == [g.new_ids for g in plain]
    assert all(o.triggered_at == 0 for o in on) and all(o.triggered_at is None for o in off)
    with pytest.raises(SteerwatchError, match="not calibrated"):
        Conditional(trigger=Detector(vector=v, layer=1), specs=[push])


def test_trigger_calibrated_on_generations_fires_at_the_target_rate(qwen_chat):
    from steerwatch.runtime.calibration import calibrate_trigger_on_generations

    v = make_vector(qwen_chat, seed=14, concept="t")
    trig = Detector(vector=v, layer=1)
    trig.threshold = 0.0
    trig.calibration = {"trigger_window": 3}
    control = [Conversation(id=str(i), messages=[{"role": "user", "content": f"Tell me about item {i}{'!' * (i % 4)}"},
                                                 {"role": "assistant", "content": "ok"}]) for i in range(40)]
    rows = calibrate_trigger_on_generations(qwen_chat, [trig], control, fpr=0.05, max_new_tokens=8)
    assert rows[0]["n"] == 40 and trig.calibration["trigger_source"] == "generated"
    push = SteerSpec(vector=make_vector(qwen_chat, seed=15, concept="push"), strength=8.0, layers=(2, 3))
    prompts = [[{"role": "user", "content": c.messages[0]["content"]}] for c in control]
    out = generate(qwen_chat, prompts, GenerationOptions(max_new_tokens=8),
                   conditional=Conditional(trigger=trig, specs=[push]))
    # whether a row fires is decided by its unsteered tokens, so the rate is exactly the calibrated one
    assert sum(o.triggered_at is not None for o in out) == 2 == int(0.05 * 40)
