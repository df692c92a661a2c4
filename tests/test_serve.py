"""steerwatch serve on a tiny random model: the real server (uvicorn on a loopback port) talked to
with the official ``openai`` client and raw HTTP; outputs compared with in-process generation."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from conftest import make_vector
from steerwatch.io import file_sha256
from steerwatch.policy.schema import PolicyError, hash_key, load_policy, policy_from_dict
from steerwatch.runtime import GenerationOptions, generate
from steerwatch.serve.requests import BLOCKED_TEXT
from steerwatch.serve.server import RunningServer, build_engine
from steerwatch.steer import SteerSpec
from steerwatch.watch.detector import Detector
from tolerances import DOUBLE, FP32_BATCH

KEYS = {"user": "sk-user-1", "steerer": "sk-steer-2", "admin": "sk-admin-3"}
PROMPTS = ["hello there", "what is 2+2?", "tell me a story", "abc", "the sky is", "ok", "why?", "code please"]


def _write_files(loaded, d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    push = make_vector(loaded, seed=3, concept="push", default_layers=(1,))
    other = make_vector(loaded, seed=4, concept="other", default_layers=(2,))
    watched = make_vector(loaded, seed=5, concept="watched")
    paths = {"push": push.save(d / "push.sv"), "other": other.save(d / "other.sv"),
             "watched": watched.save(d / "watched.sv")}
    always = Detector(vector=watched, layer=1, name="always", threshold=-1e9, vector_path=str(paths["watched"]))
    never = Detector(vector=watched, layer=2, name="never", threshold=1e9, vector_path=str(paths["watched"]))
    paths["always"] = always.save(d / "always.det.json")
    paths["never"] = never.save(d / "never.det.json")
    return paths


def _policy(paths: dict[str, Path], **over) -> dict:
    pol = {
        "vectors": [
            {"name": "push", "path": str(paths["push"]), "sha256": file_sha256(paths["push"]), "strength": 0.0,
             "max_abs_strength": 4.0},
            {"name": "other", "path": str(paths["other"]), "sha256": file_sha256(paths["other"]), "strength": 0.0,
             "max_abs_strength": 4.0},
        ],
        "detectors": [
            {"name": "always", "path": str(paths["always"]), "sha256": file_sha256(paths["always"]), "action": "flag"},
            {"name": "never", "path": str(paths["never"]), "sha256": file_sha256(paths["never"]), "action": "flag"},
        ],
        "keys": [{"name": "user", "sha256": hash_key(KEYS["user"])},
                 {"name": "steerer", "sha256": hash_key(KEYS["steerer"]), "steer": True},
                 {"name": "admin", "sha256": hash_key(KEYS["admin"]), "steer": True, "admin": True}],
        "limits": {"max_tokens": 32, "default_max_tokens": 12, "max_body_bytes": 4096, "batch_wait_ms": 150,
                   "max_combined_strength": 8.0},
        "degeneration": {"enabled": False},
        "store": {"url": "sqlite:///events.db"},
    }
    for k, v in over.items():
        pol[k] = v if not isinstance(v, dict) else {**pol.get(k, {}), **v}
    return pol


def _engine(loaded, tmp: Path, **over):
    paths = _write_files(loaded, tmp / "files")
    pf = tmp / "policy.yaml"
    pf.write_text(yaml.safe_dump(_policy(paths, **over)), encoding="utf-8")
    return build_engine(pf, loaded=loaded, guard=False)


@pytest.fixture(scope="module")
def server(qwen_chat, tmp_path_factory):
    engine = _engine(qwen_chat, tmp_path_factory.mktemp("serve"))
    srv = RunningServer(engine)
    yield srv
    srv.stop()
    engine.stop()


def _client(srv, who: str | None = "user") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key=KEYS[who] if who else "none", max_retries=0, timeout=60)


def _alone(loaded, prompt: str, *, strength: float = 0.0, n: int = 12, vector=None) -> str:
    spec = [SteerSpec(vector=vector, strength=strength)] if strength else None
    g = generate(loaded, [prompt], GenerationOptions(max_new_tokens=n), steer=spec)[0]
    return loaded.tokenizer.decode(g.new_ids, skip_special_tokens=True)


def test_chat_matches_in_process_generation_and_reports_usage(server, qwen_chat):
    c = _client(server)
    r = c.chat.completions.create(model="tiny-qwen2", messages=[{"role": "user", "content": "hello there"}],
                                  max_tokens=10)
    assert r.choices[0].message.content == _alone(qwen_chat, "hello there", n=10)
    assert r.usage.completion_tokens == (10 if r.choices[0].finish_reason == "length" else r.usage.completion_tokens)
    from steerwatch.chat import encode_prompt, render_messages

    n_prompt = len(encode_prompt(qwen_chat.tokenizer, render_messages(qwen_chat.tokenizer, [
        {"role": "user", "content": "hello there"}])))
    assert r.usage.prompt_tokens == n_prompt
    assert r.usage.total_tokens == n_prompt + r.usage.completion_tokens
    ext = r.model_extra["steerwatch"]
    assert ext["flags"] == ["always"] and ext["steering"] == []
    assert set(ext["scores"]) == {"always", "never"}
    assert [m.id for m in c.models.list().data] == ["tiny-qwen2"]


def test_streaming_equals_non_streaming_and_carries_scores_last(server):
    c = _client(server)
    kw = dict(model="tiny-qwen2", messages=[{"role": "user", "content": "tell me a story"}], max_tokens=12)
    full = c.chat.completions.create(**kw)
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == full.choices[0].finish_reason
    assert finals[0].model_extra["steerwatch"]["scores"] == FP32_BATCH.approx(full.model_extra["steerwatch"]["scores"])
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    comp = c.completions.create(model="tiny-qwen2", prompt="the sky is", max_tokens=8, stream=True)
    assert "".join(ch.choices[0].text for ch in comp) == c.completions.create(
        model="tiny-qwen2", prompt="the sky is", max_tokens=8).choices[0].text


def test_per_request_steering_changes_the_answer_exactly_as_in_process(server, qwen_chat):
    c = _client(server, "steerer")
    msgs = [{"role": "user", "content": "what is 2+2?"}]
    plain = c.chat.completions.create(model="tiny-qwen2", messages=msgs, max_tokens=12).choices[0].message.content
    r = c.chat.completions.create(model="tiny-qwen2", messages=msgs, max_tokens=12,
                                  extra_body={"steering": [{"vector": "push", "strength": 3.0}]})
    vec = server.engine.dep.vectors["push"]
    assert r.choices[0].message.content == _alone(qwen_chat, "what is 2+2?", strength=3.0, vector=vec)
    assert r.choices[0].message.content != plain
    applied = r.model_extra["steerwatch"]["steering"]
    assert applied == [{"vector": "push", "op": "add", "strength": 3.0, "layers": [1], "positions": "all"}]


def test_unauthorised_steering_and_keys_are_refused(server):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.PermissionDeniedError, match="may not set per-request steering"):
        _client(server, "user").chat.completions.create(
            model="tiny-qwen2", messages=msgs, extra_body={"steering": [{"vector": "push", "strength": 1.0}]})
    with pytest.raises(openai.AuthenticationError):
        _client(server, None).chat.completions.create(model="tiny-qwen2", messages=msgs)


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"model": "tiny-qwen2", "messages": []}).encode(), 400, "messages"),
    (json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).encode(), 404, "not served"),
    (json.dumps({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 999}).encode(),
     400, "exceeds this server's limit of 32"),
    (json.dumps({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}], "n": 2}).encode(), 400,
     "n must be 1"),
    (json.dumps({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}],
                 "steering": [{"vector": "ghost", "strength": 0.1}]}).encode(), 400, "unknown vector 'ghost'"),
    (json.dumps({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}],
                 "steering": [{"vector": "push", "strength": 9}]}).encode(), 400, "out of bounds"),
    (json.dumps({"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x" * 5000}]}).encode(), 413,
     "exceeds the limit"),
    (json.dumps({"model": "tiny-qwen2", "messages": [{"role": "robot", "content": "x"}]}).encode(), 400, "role"),
])
def test_bad_requests_get_documented_4xx(server, body, status, needle):
    r = httpx.post(server.base_url + "/chat/completions", content=body, timeout=30,
                   headers={"Authorization": f"Bearer {KEYS['admin']}", "Content-Type": "application/json"})
    assert r.status_code == status
    assert needle in r.json()["error"]["message"]


def test_flagged_responses_are_stored_and_listed_for_admins_only(server):
    c = _client(server, "steerer")
    r = c.chat.completions.create(model="tiny-qwen2", messages=[{"role": "user", "content": "abc"}], max_tokens=6,
                                  extra_body={"watch": {"token_scores": True}})
    ext = r.model_extra["steerwatch"]
    rows = httpx.get(server.base_url + "/watch/events", params={"flagged": "true", "limit": 1000},
                     headers={"Authorization": f"Bearer {KEYS['admin']}"}, timeout=30).json()["data"]
    row = next(x for x in rows if x["id"] == ext["stored_id"])
    assert row["response"] == r.choices[0].message.content and row["flags"] == ["always"]
    assert row["key_name"] == "steerer" and row["policy_sha256"] == ext["policy_sha256"]
    assert row["token_scores"]["always"] == DOUBLE.approx(ext["token_scores"]["always"])
    assert len(row["token_scores"]["always"]) == len(ext["tokens"]) == len(row["tokens"])
    assert row["prompt"] == [{"role": "user", "content": "abc"}]
    denied = httpx.get(server.base_url + "/watch/events", headers={"Authorization": f"Bearer {KEYS['user']}"},
                       timeout=30)
    assert denied.status_code == 403


def test_eight_concurrent_requests_with_eight_steerings_equal_each_alone(server, qwen_chat):
    vec = server.engine.dep.vectors["push"]
    settings = [(p, s) for p, s in zip(PROMPTS, [0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.0])]
    before = server.engine.stats["max_batch_seen"]

    def one(ps):
        p, s = ps
        r = _client(server, "steerer").chat.completions.create(
            model="tiny-qwen2", messages=[{"role": "user", "content": p}], max_tokens=10,
            extra_body={"steering": [{"vector": "push", "strength": s}]})
        return r.choices[0].message.content, r.model_extra["steerwatch"]["batch_size"]

    with ThreadPoolExecutor(8) as ex:
        out = list(ex.map(one, settings))
    assert [t for t, _ in out] == [_alone(qwen_chat, p, strength=s, n=10, vector=vec) for p, s in settings]
    assert max(b for _, b in out) >= 4  # they really shared forward passes
    assert server.engine.stats["max_batch_seen"] >= max(before, 4)


def test_policy_errors_name_the_field(tmp_path, qwen_chat):
    paths = _write_files(qwen_chat, tmp_path / "f")
    bad = _policy(paths)
    bad["vectors"][0]["strenght"] = 1
    with pytest.raises(PolicyError, match=r"vectors\.0\.strenght: Extra inputs are not permitted"):
        policy_from_dict(bad)
    bad = _policy(paths)
    bad["detectors"][0]["action"] = "steer"
    with pytest.raises(PolicyError, match="action 'steer' needs a 'steer' list"):
        policy_from_dict(bad)
    bad = _policy(paths)
    bad["vectors"][0]["sha256"] = "0" * 64
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(PolicyError, match=r"vectors\.0 \(push\): .* has SHA-256 .* the policy says 0000"):
        build_engine(tmp_path / "p.yaml", loaded=qwen_chat, guard=False)
    (tmp_path / "q.yaml").write_text("vectors: [unclosed")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(tmp_path / "q.yaml")


def test_block_action_withholds_text_and_stores_it(qwen_chat, tmp_path):
    paths = _write_files(qwen_chat, tmp_path / "files")
    pol = _policy(paths)
    pol["detectors"][0]["action"] = "block"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pol))
    engine = build_engine(tmp_path / "p.yaml", loaded=qwen_chat, guard=False)
    try:
        with RunningServer(engine) as srv:
            c = _client(srv)
            r = c.chat.completions.create(model="tiny-qwen2", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=6)
            assert r.choices[0].message.content == BLOCKED_TEXT and r.choices[0].finish_reason == "content_filter"
            chunks = list(c.chat.completions.create(model="tiny-qwen2", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=6, stream=True))
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == BLOCKED_TEXT  # never leaked
        rows = engine.store.list()
        assert len(rows) == 2 and all(r["events"][0]["type"] == "block" for r in rows)
    finally:
        engine.stop()


def test_degeneration_guard_backs_off_to_unsteered(qwen_chat, tmp_path):
    engine = _engine(qwen_chat, tmp_path, degeneration={"enabled": True, "max_ppl": 2.0, "min_tokens": 4,
                                                        "action": "unsteered"})
    try:
        with RunningServer(engine) as srv:
            r = _client(srv, "steerer").chat.completions.create(
                model="tiny-qwen2", messages=[{"role": "user", "content": "ok"}], max_tokens=8,
                extra_body={"steering": [{"vector": "push", "strength": 3.0}]})
        ext = r.model_extra["steerwatch"]
        assert r.choices[0].message.content == _alone(qwen_chat, "ok", n=8)  # the unsteered answer
        ev = next(e for e in ext["events"] if e["type"] == "degeneration")
        vec = engine.dep.vectors["push"]
        assert ev["text"] == _alone(qwen_chat, "ok", n=8, strength=3.0, vector=vec)
        assert ev["backoff"] == "unsteered" and ev["ppl"] > 2.0 and ext["steering"] == []
        assert "degeneration" in ext["flags"]
        assert [e["type"] for e in engine.store.list()[-1]["events"]].count("degeneration") == 1
    finally:
        engine.stop()


def test_policy_without_detectors_serves_unwatched(qwen_chat, tmp_path):
    engine = _engine(qwen_chat, tmp_path, detectors=[])
    try:
        with RunningServer(engine) as srv:
            r = _client(srv, "steerer").chat.completions.create(
                model="tiny-qwen2", messages=[{"role": "user", "content": "ok"}], max_tokens=6,
                extra_body={"steering": [{"vector": "other", "strength": 2.0}]})
        assert r.choices[0].message.content == _alone(qwen_chat, "ok", n=6, strength=2.0,
                                                      vector=engine.dep.vectors["other"])
        assert r.model_extra["steerwatch"]["scores"] == {} and r.model_extra["steerwatch"]["flags"] == []
    finally:
        engine.stop()


def test_client_disconnect_mid_stream_loses_nothing(server):
    """The stream is dropped after its first text; generation stops there (issue 19), and what was
    generated is still scored and stored."""
    import time

    before = server.engine.store.count()
    body = {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "disconnect me"}], "max_tokens": 24,
            "stream": True}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEYS['user']}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():  # read up to the first text, then hang up
            if '"content": "' in line and '"content": ""' not in line:
                break
    deadline = time.monotonic() + 30
    while server.engine.store.count() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    row = server.engine.store.list(after_id=0, limit=1000)[-1]
    assert row["prompt"] == [{"role": "user", "content": "disconnect me"}] and row["flags"] == ["always"]
    assert len(row["token_scores"]["always"]) > 0


def test_guard_refuses_distress_steering_at_start_and_per_request(qwen_chat, tmp_path):
    """The policy guard runs at start-up (a policy whose requests may push the distress direction
    past the bound does not start) and on every request (per-request layers can add pushes)."""
    paths = _write_files(qwen_chat, tmp_path / "files")
    distress = make_vector(qwen_chat, seed=3, concept="distress")  # the same directions as "push"
    dpath = distress.save(tmp_path / "files" / "distress.sv")
    pol = _policy(paths, guard={"distress_vector": str(dpath)}, limits={"max_combined_strength": 1.0})
    pol["vectors"][0]["max_abs_strength"] = 0.4  # up to 0.4 along distress on layer 1: refused
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pol))
    with pytest.raises(PolicyError, match="distress"):
        build_engine(tmp_path / "p.yaml", loaded=qwen_chat)
    pol["vectors"][0]["max_abs_strength"] = 0.02
    pol["vectors"][1]["max_abs_strength"] = 0.02
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pol))
    engine = build_engine(tmp_path / "p.yaml", loaded=qwen_chat)
    try:
        with RunningServer(engine) as srv:
            c = _client(srv, "steerer")
            ok = c.chat.completions.create(model="tiny-qwen2", messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4,
                                           extra_body={"steering": [{"vector": "push", "strength": 0.02}]})
            assert ok.model_extra["steerwatch"]["steering"][0]["strength"] == 0.02
            with pytest.raises(openai.BadRequestError, match="refused by the policy guard"):
                c.chat.completions.create(model="tiny-qwen2", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4,
                                          extra_body={"steering": [{"vector": "push", "strength": 0.02,
                                                                    "layers": [0, 1, 2, 3]}]})
    finally:
        engine.stop()


def test_degeneration_guard_on_repetition_records_the_measure(qwen_chat, tmp_path, monkeypatch):
    """The repetition bound: an answer is degenerate when its repeated-4-gram share (as
    evals.coherence.text_stats measures it) passes max_repeat; the event carries the share."""
    from steerwatch.evals.coherence import text_stats
    from steerwatch.serve import engine as eng

    engine = _engine(qwen_chat, tmp_path, degeneration={"enabled": True, "max_repeat": 0.3, "min_tokens": 1,
                                                        "action": "record"})
    loop = "go on and on " * 6
    monkeypatch.setattr(eng.Engine, "_finish_row", _with_text(eng.Engine._finish_row, loop))
    try:
        from steerwatch.serve.requests import GenRequest

        steered = engine.dep.spec("push", 1.0)
        res = engine.run_batch([GenRequest(prompt_ids=[2, 40, 41], prompt_record="x", max_tokens=4, steering=[steered]),
                                GenRequest(prompt_ids=[2, 40, 41], prompt_record="x", max_tokens=4)])
    finally:
        engine.stop()
    ev = next(e for e in res[0].events if e["type"] == "degeneration")
    assert ev["repeat_share"] == DOUBLE.approx(text_stats(loop)["repeat_4gram"]) and ev["repeat_share"] > 0.3
    assert ev["backoff"] == "none: policy action is record"
    assert not any(e["type"] == "degeneration" for e in res[1].events)  # unsteered answers are not judged


def _with_text(fn, text):
    def wrapped(self, *a, **kw):
        res = fn(self, *a, **kw)
        res.text = text
        return res
    return wrapped
