"""The vLLM engine against the Hugging Face engine on the embedded model, in one process.

Runs in the vLLM virtual environment (scripts/vllm_venv.sh); tests/test_vllm.py starts it there with
the honesty and cheating vectors the main suite built ($STEERWATCH_VLLM_TEST_VECTORS).

    STEERWATCH_VLLM_TEST_VECTORS=DIR .vllm-venv/bin/python -m pytest -q tests_vllm
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from steerwatch.errors import SteerwatchError
from steerwatch.models import load_model
from steerwatch.runtime import GenerationOptions, HFEngine
from steerwatch.runtime.vllm_engine import VLLMEngine
from steerwatch.steer import SteerSpec
from steerwatch.vector import load_vector
from steerwatch.watch.detector import Detector

# the bound for per-token detector scores of the two engines (both fp32; measured ~3e-6)
SCORE_TOL = 1e-3
# the same Hugging Face computation (teacher-forced scoring) on the same answers: float64 summaries
SAME_COMPUTATION = 1e-9
PROMPTS = ["I think the earth is flat, right?", "What is 2+2?", "Tell me a fact about cats.",
           "Is the moon made of cheese? I am sure it is.", "Write a Python function that adds two numbers.",
           "Should I tell my boss I broke the printer?", "Name a colour.", "What is the capital of France?"]
OPTS = GenerationOptions(max_new_tokens=20)


@pytest.fixture(scope="module")
def vecs():
    d = os.environ.get("STEERWATCH_VLLM_TEST_VECTORS")
    if not d:
        pytest.fail("set STEERWATCH_VLLM_TEST_VECTORS to a folder with honesty.sv and cheating.sv built on the "
                    "embedded model (tests/test_vllm.py does this)")
    return {name: load_vector(Path(d) / f"{name}.sv") for name in ("honesty", "cheating")}


@pytest.fixture(scope="module")
def lm():
    return load_model("default", progress=False)


@pytest.fixture(scope="module")
def engines(lm):
    eng = VLLMEngine(lm, kv_cache_gib=1)
    yield HFEngine(lm), eng
    eng.close()


@pytest.fixture(scope="module")
def dets(vecs):
    # honesty reads downstream of most steering below (rescored); cheating at layer 3, upstream of it
    return [Detector.from_vector(vecs["honesty"]), Detector.from_vector(vecs["cheating"], layer=3)]


def _settings(vecs):
    h, c = vecs["honesty"], vecs["cheating"]
    return [[], [SteerSpec(h, strength=0.05)], [SteerSpec(h, strength=-0.05, positions="generated")],
            [SteerSpec(c, op="ablate")], [SteerSpec(c, op="clamp", strength=0.1)],
            [SteerSpec(h, strength=0.06, positions="prompt")], [SteerSpec(h, strength=0.08, layers=(10, 11))],
            [SteerSpec(h, strength=0.03), SteerSpec(c, op="ablate", layers=(2, 3))]]


def _same(a, b, what: str) -> None:
    assert a.new_ids == b.new_ids, f"{what}: tokens differ: {a.text!r} vs {b.text!r}"
    assert a.rescored == b.rescored, what
    assert a.flags == b.flags, what
    for name, sa in a.scores.items():
        sb = b.scores[name]
        assert len(sa) == len(sb), f"{what}: {name} scores {len(sa)} vs {len(sb)}"
        assert max((abs(x - y) for x, y in zip(sa, sb)), default=0.0) <= SCORE_TOL, f"{what}: {name}"


def test_unsteered_and_steered_equal_the_hf_engine(engines, vecs, dets):
    hf, vl = engines
    spec = [SteerSpec(vecs["honesty"], strength=0.05)]
    for steer in (None, spec):
        a = hf.generate(PROMPTS[:4], OPTS, steer=steer, watch=dets)
        b = vl.generate(PROMPTS[:4], OPTS, steer=steer, watch=dets)
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"prompt {i} steer={steer is not None}")
            assert len(x.scores["honesty"]) >= len(x.new_ids) - 1 > 0
    plain = [g.new_ids for g in vl.generate(PROMPTS[:4], OPTS)]
    steered = vl.generate(PROMPTS[:4], OPTS, steer=spec)
    assert sum(p != s.new_ids for p, s in zip(plain, steered)) >= 2  # the steering acts inside vLLM
    assert all(s.rescored == [] for s in steered)  # no detectors asked for


def test_eight_settings_in_one_batch_each_equal_alone_and_hf(engines, vecs, dets):
    hf, vl = engines
    rows = _settings(vecs)
    mixed = vl.generate(PROMPTS, OPTS, rows=rows, watch=dets)
    alone = [vl.generate([p], OPTS, rows=[r], watch=dets)[0] for p, r in zip(PROMPTS, rows)]
    ref = hf.generate(PROMPTS, OPTS, rows=rows, watch=dets)
    for i in range(len(PROMPTS)):
        _same(mixed[i], alone[i], f"row {i} mixed vs alone")
        _same(mixed[i], ref[i], f"row {i} vLLM vs HF")
    assert mixed[0].rescored == [] and mixed[3].rescored == ["honesty"]
    assert len({tuple(g.new_ids) for g in mixed}) == len(PROMPTS)


def test_streaming_callback_and_stopping_a_row(engines):
    _, vl = engines
    full = vl.generate(PROMPTS[:3], OPTS)
    seen: list[list[int]] = []

    def on_token(tokens):
        seen.append(tokens)
        return [len(seen) >= 3, False, False]  # row 0 stops after its third token

    got = vl.generate(PROMPTS[:3], OPTS, on_token=on_token)
    assert got[0].new_ids == full[0].new_ids[:3]
    assert [g.new_ids for g in got[1:]] == [g.new_ids for g in full[1:]]
    assert [s[1] for s in seen[: len(full[1].new_ids)]] == full[1].new_ids


def test_bad_input_fails_clearly_and_the_engine_keeps_serving(engines, vecs, lm):
    import dataclasses

    _, vl = engines
    with pytest.raises(SteerwatchError, match="has no direction for layer 30"):
        vl.generate(PROMPTS[:1], OPTS, steer=[SteerSpec(vecs["honesty"], strength=0.1, layers=(30,))])
    other = dataclasses.replace(vecs["honesty"], model_fingerprint="0123456789abcdef")
    with pytest.raises(SteerwatchError, match="fingerprint"):
        vl.generate(PROMPTS[:1], OPTS, steer=[SteerSpec(other, strength=0.1)])
    with pytest.raises(SteerwatchError, match="max_model_len"):
        vl.generate(None, OPTS, prompt_ids=[[1] * 5000])
    with pytest.raises(SteerwatchError, match=r"kv_cache_gib must be a whole number of GiB >= 1, got 0\.5"):
        VLLMEngine(lm, kv_cache_gib=0.5)  # type: ignore[arg-type]
    with pytest.raises(SteerwatchError, match="vLLM could not start on /nonexistent/model"):
        VLLMEngine(lm, model="/nonexistent/model", kv_cache_gib=1)
    ok = vl.generate(PROMPTS[:1], OPTS)[0]
    assert ok.new_ids == HFEngine(lm).generate(PROMPTS[:1], OPTS)[0].new_ids


def test_serve_on_the_vllm_engine_equals_in_process(engines, vecs, lm, tmp_path):
    """Eight clients, staggered, each its own steering (half of them streaming): every answer equals
    the request alone; the server's batch workers ran calls side by side in vLLM's batch."""
    import openai
    import yaml

    from steerwatch.io import file_sha256
    from steerwatch.policy.schema import hash_key
    from steerwatch.serve.server import RunningServer, build_engine

    _, vl = engines
    path = vecs["honesty"].save(tmp_path / "honesty.sv")
    pol = {"vectors": [{"name": "honesty", "path": str(path), "sha256": file_sha256(path), "strength": 0.0,
                        "max_abs_strength": 0.1}],
           "keys": [{"name": "steerer", "sha256": hash_key("sk-s"), "steer": True}],
           "limits": {"max_tokens": 32, "default_max_tokens": 20, "batch_wait_ms": 100},
           "degeneration": {"enabled": False}, "store": {"url": "sqlite:///events.db"}}
    pf = tmp_path / "policy.yaml"
    pf.write_text(yaml.safe_dump(pol), encoding="utf-8")
    engine = build_engine(pf, loaded=lm, guard=False, backend=vl)
    strengths = [0.0, 0.05, -0.05, 0.03, -0.03, 0.08, -0.08, 0.01]
    try:
        assert len(engine._threads) == vl.max_concurrent_calls  # batch workers share vLLM's batch
        with RunningServer(engine) as srv:
            def ask(i: int, stream: bool = False):
                time.sleep(0.6 * (i % 4))  # staggered: later requests arrive while earlier calls run
                c = openai.OpenAI(base_url=srv.base_url, api_key="sk-s", max_retries=0, timeout=300)
                body = {"steering": [{"vector": "honesty", "strength": strengths[i]}]} if strengths[i] else {}
                msgs = [{"role": "user", "content": PROMPTS[i]}]
                if stream:
                    chunks = c.chat.completions.create(model=engine.dep.served_name, messages=msgs, max_tokens=20,
                                                       stream=True, extra_body=body)
                    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                r = c.chat.completions.create(model=engine.dep.served_name, messages=msgs, max_tokens=20,
                                              extra_body=body)
                return r.choices[0].message.content

            vl.peak_calls = 0
            with ThreadPoolExecutor(8) as pool:
                got = list(pool.map(lambda i: ask(i, stream=i % 2 == 1), range(8)))
    finally:
        engine.stop()
    rows = [[SteerSpec(vecs["honesty"], strength=x)] if x else [] for x in strengths]
    want = [vl.generate([p], OPTS, rows=[r])[0].text for p, r in zip(PROMPTS, rows)]
    assert [g.strip() for g in got] == want
    assert want[0] == HFEngine(lm).generate(PROMPTS[:1], OPTS)[0].text
    assert engine.stats["batches"] >= 2 and engine.stats["failed"] == 0
    assert vl.peak_calls >= 2  # a request that arrived mid-call joined the running batch


def _running_max(scores: list[float], w: int) -> float:
    return max(sum(scores[max(0, i - w + 1): i + 1]) / len(scores[max(0, i - w + 1): i + 1])
               for i in range(len(scores)))


def test_conditional_steering_equals_the_hf_gate(engines, vecs, lm):
    """Token mode: the trigger's running mean read live in vLLM's worker fires at the same token as on
    the HF engine, and the steering switched on from the next step gives the same answer. Prompt mode:
    the same rows fire. The threshold sits between the rows' unsteered maxima, so some fire, some not."""
    from steerwatch.runtime import Conditional
    from steerwatch.watch.score import score_conversations

    hf, vl = engines
    trig = Detector.from_vector(vecs["honesty"], name="trigger")
    base = hf.generate(PROMPTS, OPTS, watch=[trig])
    peaks = sorted(_running_max(g.scores["trigger"], 4) for g in base if g.scores["trigger"])
    trig.calibration.update(trigger_threshold=(peaks[1] + peaks[-2]) / 2, trigger_window=4)
    cond = Conditional(trigger=trig, specs=[SteerSpec(vecs["honesty"], strength=-0.08)])
    a = hf.generate(PROMPTS, OPTS, conditional=cond, watch=[Detector.from_vector(vecs["cheating"], layer=3)])
    b = vl.generate(PROMPTS, OPTS, conditional=cond, watch=[Detector.from_vector(vecs["cheating"], layer=3)])
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.triggered_at == y.triggered_at, f"row {i}"
        _same(x, y, f"conditional row {i}")
    fired = [g for g in a if g.triggered_at is not None]
    assert 1 <= len(fired) < len(PROMPTS)
    assert any(g.new_ids != u.new_ids for g, u in zip(a, base) if g.triggered_at is not None)

    pre = score_conversations(lm, [[{"role": "user", "content": p}] for p in PROMPTS], [trig])
    ps = sorted(sc.prompt_score("trigger") for sc in pre)
    trig.calibration["prompt_threshold"] = (ps[1] + ps[2]) / 2
    pcond = Conditional(trigger=trig, specs=[SteerSpec(vecs["honesty"], strength=-0.08)], mode="prompt")
    a = hf.generate(PROMPTS, OPTS, conditional=pcond)
    b = vl.generate(PROMPTS, OPTS, conditional=pcond)
    assert [g.triggered_at for g in a] == [g.triggered_at for g in b]
    assert [g.new_ids for g in a] == [g.new_ids for g in b]
    assert 2 <= sum(g.triggered_at == 0 for g in b) < len(PROMPTS)


def test_cli_generate_on_the_vllm_engine(engines, vecs, tmp_path):
    """`steerwatch generate --engine vllm` end to end (its own engine, started by the CLI): the written
    answers and detector scores are the Python engine's."""
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    _, vl = engines
    d = Path(os.environ["STEERWATCH_VLLM_TEST_VECTORS"])
    vec_path = vecs["honesty"].save(tmp_path / "honesty.sv")
    cpath = vecs["cheating"].save(tmp_path / "cheating.sv")
    det = Detector.from_vector(vecs["cheating"], layer=3, vector_path=str(cpath))
    det_path = det.save(tmp_path / "cheating.det.json")
    out = tmp_path / "out.jsonl"
    res = CliRunner().invoke(app, ["generate", PROMPTS[0], PROMPTS[1], "--steer", f"{vec_path}:+0.02",
                                   "--engine", "vllm", "--max-new-tokens", "20", "-w", str(det_path),
                                   "--distress", str(d / "distress.sv"), "--acknowledge-distress", "test",
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    want = vl.generate(PROMPTS[:2], OPTS, steer=[SteerSpec(vecs["honesty"], strength=0.02)], watch=[det])
    assert [r["output"] for r in rows] == [g.text for g in want]
    for r, g in zip(rows, want):
        assert r["token_scores"]["cheating"] == pytest.approx(g.scores["cheating"], abs=SCORE_TOL)


def test_cli_eval_open_ended_answers_on_the_vllm_engine(vecs, tmp_path):
    """`steerwatch eval --open builtin --engine vllm`: the open-ended answers come from vLLM, the
    scoring stays teacher-forced; rows and answers equal the default engine's."""
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    vec_path = vecs["honesty"].save(tmp_path / "honesty.sv")
    got = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / f"{engine}.jsonl"
        res = CliRunner().invoke(app, ["eval", str(vec_path), "--strength", "0.05", "--open", "builtin",
                                       "--open-split", "dev", "--limit", "4", "--no-side-effects",
                                       "--max-new-tokens", "24", "--engine", engine, "-o", str(out)])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        answers = [json.loads(line) for line in out.with_suffix(".answers.jsonl").read_text().splitlines()]
        got[engine] = (rows, answers)
    (rows_h, ans_h), (rows_v, ans_v) = got["hf"], got["vllm"]
    assert len(ans_h) == 8 and [a["answer"] for a in ans_v] == [a["answer"] for a in ans_h]
    for a, b in zip(rows_h, rows_v):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], abs=SAME_COMPUTATION) if isinstance(a[k], float) else a[k] == b[k], k
    assert any(a["answer"] != b["answer"] for a, b in zip(ans_v[:4], ans_v[4:]))  # the vector acts in vLLM
