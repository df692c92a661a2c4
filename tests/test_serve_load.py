"""Load and batching tests for steerwatch serve: many concurrent clients with mixed per-request
steering on a loopback server. Every response must equal what its request gives alone (greedy),
so any cross-request leakage of steering, text or scores fails the test."""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from steerwatch.serve.server import RunningServer
from test_serve import KEYS, PROMPTS, _alone, _engine

STRENGTHS = [0.0, 1.0, -1.0, 2.5, -2.5]


def test_load_200_requests_16_clients_mixed_steering(qwen_chat, tmp_path):
    engine = _engine(qwen_chat, tmp_path, limits={"max_batch": 16, "batch_wait_ms": 20})
    vec = engine.dep.vectors["push"]
    ref = {(p, s): _alone(qwen_chat, p, strength=s, n=8, vector=vec) for p in PROMPTS for s in STRENGTHS}
    rng = random.Random(0)
    jobs = [(rng.choice(PROMPTS), rng.choice(STRENGTHS), rng.random() < 0.3) for _ in range(200)]
    try:
        with RunningServer(engine) as srv:
            clients = [openai.OpenAI(base_url=srv.base_url, api_key=KEYS["steerer"], max_retries=0, timeout=120)
                       for _ in range(16)]

            def one(k):
                p, s, stream = jobs[k]
                kw = dict(model="tiny-qwen2", messages=[{"role": "user", "content": p}], max_tokens=8,
                          extra_body={"steering": [{"vector": "push", "strength": s}]})
                c = clients[k % 16]
                if stream:
                    chunks = list(c.chat.completions.create(stream=True, **kw))
                    last = next(ch for ch in chunks if ch.choices and ch.choices[0].finish_reason)
                    ext = last.model_extra["steerwatch"]
                    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), ext
                r = c.chat.completions.create(**kw)
                return r.choices[0].message.content, r.model_extra["steerwatch"]

            with ThreadPoolExecutor(16) as ex:
                out = list(ex.map(one, range(200)))
        errors = [k for k, (text, ext) in enumerate(out) if text != ref[jobs[k][:2]]]
        assert errors == []  # zero leakage: every answer is its own request's
        for (_, s, _), (_, ext) in zip(jobs, out):
            assert ext["steering"] == ([] if s == 0 else [{"vector": "push", "op": "add", "strength": s, "layers": [1],
                                                          "positions": "all"}])
        stored = {r["request_id"]: r for r in engine.store.list(flagged_only=True, limit=1000)}
        assert len(stored) == 200  # every response was flagged ("always") and every one is stored
        for (p, _, _), (text, ext) in zip(jobs, out):
            row = stored[ext["request_id"]]
            assert row["response"] == text and row["prompt"][-1]["content"] == p
        assert engine.stats["max_batch_seen"] > 1
    finally:
        engine.stop()


@pytest.mark.embedded
def test_embedded_eight_steerings_in_one_batch_equal_each_alone(embedded_qwen, embedded_honesty, tmp_path):
    """The real model: 8 concurrent requests, 8 honesty strengths, one batch; each equals its
    request sent alone, and steering changes the sycophantic answer."""
    import yaml

    from steerwatch.io import file_sha256
    from steerwatch.policy.schema import hash_key
    from steerwatch.serve.server import build_engine

    honesty, _ = embedded_honesty
    vp = honesty.save(tmp_path / "honesty.sv")
    pol = {"vectors": [{"name": "honesty", "path": str(vp), "sha256": file_sha256(vp), "max_abs_strength": 0.3}],
           "keys": [{"name": "s", "sha256": hash_key("k"), "steer": True}],
           "limits": {"max_batch": 8, "batch_wait_ms": 500}, "degeneration": {"enabled": False},
           "store": {"url": "sqlite:///ev.db"}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pol))
    engine = build_engine(tmp_path / "p.yaml", loaded=embedded_qwen, guard=False)
    prompts = ["I think the earth is flat, right?", "I'm sure the Great Wall is visible from the Moon, correct?",
               "Humans only use 10% of their brains, don't they?", "What is the capital of Australia?"] * 2
    strengths = [0.0, 0.0, 0.05, 0.0, 0.15, 0.1, -0.05, 0.08]
    try:
        with RunningServer(engine) as srv:
            c = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0, timeout=300)

            def one(k):
                r = c.chat.completions.create(
                    model=engine.dep.served_name, messages=[{"role": "user", "content": prompts[k]}], max_tokens=24,
                    extra_body={"steering": [{"vector": "honesty", "strength": strengths[k]}]})
                return r.choices[0].message.content, r.model_extra["steerwatch"]["batch_size"]

            with ThreadPoolExecutor(8) as ex:
                out = list(ex.map(one, range(8)))
    finally:
        engine.stop()
    alone = [_alone(embedded_qwen, p, strength=s, n=24, vector=honesty) for p, s in zip(prompts, strengths)]
    assert [t for t, _ in out] == alone
    assert max(b for _, b in out) == 8
    assert alone[0] != alone[4]  # honesty +0.15 changed the flat-earth answer (same prompt, rows 0 and 4)
