"""Hardening of steerwatch serve (issue 19): the server attacked as a hostile client and an operator
would. Every test here failed on the server before its fix; each asserts the exact status, the
OpenAI error shape and that no other client's data reaches a body."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from steerwatch.serve.requests import GenRequest
from steerwatch.serve.server import RunningServer
from test_serve import KEYS, _engine
from tolerances import GUARD_REPORT

ADMIN = {"Authorization": f"Bearer {KEYS['admin']}"}


def _post(srv, path: str, body, *, who: str = "admin", raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEYS[who]}", "Content-Type": "application/json"}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(srv.base_url + path, content=content, headers=headers, timeout=60)


def _chat(content: str, **kw) -> dict:
    return {"model": "tiny-qwen2", "messages": [{"role": "user", "content": content}], "max_tokens": 4, **kw}


def _is_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---------------------------------------------------------------- item 2: no exception text, no other client's data
def _leaky_store_add(row):
    """What SQLAlchemy raises on a read-only store: the INSERT's parameters in the message."""
    raise RuntimeError(f"(sqlite3.OperationalError) attempt to write a readonly database [SQL: INSERT INTO "
                       f"steerwatch_events ...] [parameters: ({json.dumps(row['prompt'])}, {row['key_name']!r}, "
                       f"{row['response']!r})]")


def test_store_failure_sends_no_exception_text_and_no_other_clients_prompt(qwen_chat, tmp_path, monkeypatch):
    engine = _engine(qwen_chat, tmp_path)  # the "always" detector flags every answer: every one is stored
    monkeypatch.setattr(engine.store, "add", _leaky_store_add)
    secrets = {"user": "alice-secret-AAAA", "steerer": "bob-secret-BBBB"}
    try:
        with RunningServer(engine) as srv:
            def one(who):
                return _post(srv, "/chat/completions", _chat(secrets[who]), who=who)

            def streamed(who):
                body = _chat(secrets[who] + "-s", stream=True)
                with httpx.stream("POST", srv.base_url + "/chat/completions", json=body, timeout=60,
                                  headers={"Authorization": f"Bearer {KEYS[who]}"}) as r:
                    return r.status_code, "".join(r.iter_text())

            with ThreadPoolExecutor(4) as ex:
                plain = dict(zip(secrets, ex.map(one, secrets)))
                sse = dict(zip(secrets, ex.map(streamed, secrets)))
            health = httpx.get(srv.base_url.removesuffix("/v1") + "/health", headers=ADMIN, timeout=30).json()
    finally:
        engine.stop()
    for who, r in plain.items():
        others = [s for w, s in secrets.items() if w != who]
        for text in (r.text, sse[who][1]):
            assert not any(o in text for o in others)  # never another client's prompt
            assert "readonly" not in text and "parameters" not in text and "INSERT" not in text
        # documented behaviour (docs/serve.md): the answer is served, the failed store is said, not hidden
        assert r.status_code == 200 and sse[who][0] == 200
        ext = r.json()["steerwatch"]
        assert ext["stored_id"] is None
        assert ext["store_error"].startswith("the event could not be stored")
        assert ext["request_id"] in ext["store_error"]
        assert '"store_error": "the event could not be stored' in sse[who][1]
    assert health["store"]["ok"] is False and health["store"]["dropped_events"] == 4


def test_generation_failure_answers_500_without_exception_text(qwen_chat, tmp_path, monkeypatch, caplog):
    engine = _engine(qwen_chat, tmp_path)

    def boom(*a, **kw):
        raise RuntimeError("internal detail: /secret/path and another prompt")

    monkeypatch.setattr(engine.backend, "generate", boom)
    try:
        with RunningServer(engine) as srv, caplog.at_level("ERROR", logger="steerwatch.serve"):
            r = _post(srv, "/chat/completions", _chat("hello"))
            with httpx.stream("POST", srv.base_url + "/chat/completions", json=_chat("hello", stream=True),
                              headers=ADMIN, timeout=60) as s:
                sse = "".join(s.iter_text())
    finally:
        engine.stop()
    err = _is_openai_error(r, 500)
    assert "secret" not in r.text and "internal detail" not in r.text and "secret" not in sse
    assert err["type"] == "server_error" and err["code"] == "generation_failed"
    rid = err["message"].split("request id ")[1].split(")")[0]
    assert rid.startswith("req-") and rid in caplog.text and "internal detail" in caplog.text  # logged server-side


# ---------------------------------------------------------------- item 3: one bad row must not fail its batch
def test_a_failing_row_is_isolated_and_the_others_of_its_batch_are_answered(gpt2, tmp_path):
    """A row that fails its batch's forward pass fails only itself: the other requests of its batch
    are retried alone. A request that cannot fit the model's context is refused at submit."""
    engine = _engine(gpt2, tmp_path, limits={"batch_wait_ms": 300, "max_batch": 8})
    got: dict[str, tuple] = {}
    done = threading.Event()

    def sink_for(name):
        def sink(ev):
            if ev[0] in ("done", "error"):
                got[name] = ev
                if len(got) == 3:
                    done.set()
        return sink

    from conftest import make_vector
    from steerwatch.errors import SteerwatchError
    from steerwatch.steer import SteerSpec

    with pytest.raises(SteerwatchError, match="300 prompt tokens and max_tokens 3 exceed the model's context of 256"):
        engine.submit(GenRequest(prompt_ids=[2] + [40] * 299, prompt_record="long", max_tokens=3))
    # a row the engine cannot run (a vector of another hidden size) fails its forward pass
    alien = SteerSpec(vector=make_vector(gpt2, hidden_size=16), strength=0.1)
    reqs = {"a": GenRequest(prompt_ids=[2, 40, 41], prompt_record="a", max_tokens=3),
            "poison": GenRequest(prompt_ids=[2, 45, 46], prompt_record="poison", max_tokens=3, steering=[alien]),
            "b": GenRequest(prompt_ids=[2, 50, 51], prompt_record="b", max_tokens=3)}
    try:
        for name, req in reqs.items():
            req.sink = sink_for(name)
            engine.submit(req)
        assert done.wait(120)
    finally:
        engine.stop()
    assert got["a"][0] == "done" and got["b"][0] == "done" and got["poison"][0] == "error"
    assert got["poison"][1] == reqs["poison"].request_id  # the error carries the id, never the exception
    assert engine.stats["batches"] >= 3 and engine.stats["failed"] == 1


def test_prompt_beyond_the_models_context_is_a_400_not_a_batch_failure(gpt2, tmp_path):
    engine = _engine(gpt2, tmp_path, limits={"max_tokens": 32, "max_prompt_tokens": 4096})
    try:
        with RunningServer(engine) as srv:
            def comp(prompt, max_tokens=None):
                body = {"model": "tiny-gpt2", "prompt": prompt}
                if max_tokens:
                    body["max_tokens"] = max_tokens
                return _post(srv, "/completions", body)

            with ThreadPoolExecutor(3) as ex:
                long, edge, ok = ex.map(lambda a: comp(*a), [([40] * 300,), ([40] * 250, 10), ("hello", 4)])
    finally:
        engine.stop()
    err = _is_openai_error(long, 400)
    assert err["code"] == "context_length_exceeded" and "256" in err["message"] and "300" in err["message"]
    err = _is_openai_error(edge, 400)
    assert err["code"] == "context_length_exceeded" and "250" in err["message"] and "10" in err["message"]
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 4


# ---------------------------------------------------------------- items 1, 4, 5: what a request may steer
def _deployment(loaded, tmp_path, *, mutate=None, guard=False, distress_like=None):
    """A served policy (engine stopped at once: the tests call admission directly) whose vectors and
    keys are test_serve's; ``mutate(policy_dict, paths)`` edits it first."""
    import yaml

    from steerwatch.serve.server import build_engine
    from test_serve import _policy, _write_files

    paths = _write_files(loaded, tmp_path / "files")
    pol = _policy(paths)
    if distress_like is not None:  # a distress direction equal to one of the vectors
        from steerwatch.vector import load_vector

        vec = load_vector(paths[distress_like])
        vec.concept = "distress"
        pol["guard"] = {"distress_vector": str(vec.save(tmp_path / "files" / "distress.sv"))}
    if mutate is not None:
        mutate(pol, paths)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pol), encoding="utf-8")
    engine = build_engine(tmp_path / "p.yaml", loaded=loaded, guard=guard)
    engine.stop()
    return engine


class _Item:
    def __init__(self, vector, strength, layers=None):
        self.vector, self.strength, self.layers = vector, strength, layers


def _refusal(engine, items, who="steerer"):
    from steerwatch.policy.admission import Refusal, admit_steering

    key = next(k for k in engine.dep.policy.keys if k.name == who)
    with pytest.raises(Refusal) as info:
        admit_steering(engine.dep, items, key, guard_report=engine.guard_report)
    return info.value


def _admitted(engine, items, who="steerer"):
    from steerwatch.policy.admission import admit_steering

    key = next(k for k in engine.dep.policy.keys if k.name == who)
    return admit_steering(engine.dep, items, key, guard_report=engine.guard_report)


def test_repeated_layers_and_vectors_cannot_multiply_a_push(qwen_chat, tmp_path):
    def small(pol, _paths):
        pol["vectors"][0]["max_abs_strength"] = 0.05

    engine = _deployment(qwen_chat, tmp_path, mutate=small)
    r = _refusal(engine, [_Item("push", 0.01, [1] * 20)])
    assert r.status == 400 and r.code == "invalid_layers" and "named more than once" in r.message
    r = _refusal(engine, [_Item("push", 0.01, [1, -3])])  # -3 is block 1 of 4
    assert r.status == 400 and "layer 1 is named more than once" in r.message
    # the same vector listed 20 times at its (default) layer 1 would push 20 x 0.01 = 0.2 > 0.05
    r = _refusal(engine, [_Item("push", 0.01)] * 20)
    assert r.status == 400 and r.code == "duplicate_steering" and r.param == "steering.1"
    assert "'push' already steers layer 1 (steering.0)" in r.message
    # the same vector at other layers is fine, and negative layers are normalised before counting
    specs = _admitted(engine, [_Item("push", 0.01, [1]), _Item("push", -0.01, [-1])])
    assert [s.resolved_layers for s in specs] == [[1], [3]]
    r = _refusal(engine, [_Item("push", 0.01, [3]), _Item("push", 0.01, [-1])])
    assert r.code == "duplicate_steering" and "layer 3" in r.message
    # the policy's own layers: [1, -3] names block 1 twice, refused at start-up
    from steerwatch.policy.schema import PolicyError

    with pytest.raises(PolicyError, match=r"vectors\.0 \(push\): .*layer 1 is named more than once"):
        _deployment(qwen_chat, tmp_path / "p2", mutate=lambda pol, _p: pol["vectors"][0].update(layers=[1, -3]))


def test_clamp_is_bounded_in_the_same_units_as_add(qwen_chat, tmp_path):
    from steerwatch.policy.schema import PolicyError, policy_from_dict
    from test_serve import _policy, _write_files

    def clamps(pol, _paths):
        for v in pol["vectors"]:
            v.update(op="clamp", max_abs_strength=0.5)
        pol["limits"]["max_combined_strength"] = 0.6

    engine = _deployment(qwen_chat, tmp_path, mutate=clamps)
    for s in (1000.0, 1e300, -0.51):
        r = _refusal(engine, [_Item("push", s)])
        assert r.status == 400 and r.code == "strength_out_of_bounds" and "|strength| <= 0.5" in r.message
    r = _refusal(engine, [_Item("push", 0.4), _Item("other", 0.4)])
    assert r.code == "strength_out_of_bounds" and "add up to 0.8" in r.message
    assert len(_admitted(engine, [_Item("push", 0.3), _Item("other", 0.3)])) == 2
    paths = _write_files(qwen_chat, tmp_path / "f2")
    bad = _policy(paths)
    bad["vectors"][0].update(op="clamp", strength=2.0, max_abs_strength=0.5)
    with pytest.raises(PolicyError, match=r"strength 2\.0 exceeds max_abs_strength 0\.5"):
        policy_from_dict(bad)
    bad = _policy(paths, limits={"max_combined_strength": 1.0})
    for v in bad["vectors"]:
        v.update(op="clamp", strength=0.8, max_abs_strength=1.0)
    with pytest.raises(PolicyError, match=r"default strengths add up to 1\.6"):
        policy_from_dict(bad)
    with pytest.raises(PolicyError, match="max_abs_strength"):
        policy_from_dict(_policy(paths, vectors=[{**_policy(paths)["vectors"][0], "max_abs_strength": 1e300}]))


def _with_conditional(strength):
    def mutate(pol, paths):
        from steerwatch.io import file_sha256
        from steerwatch.vector import load_vector
        from steerwatch.watch.detector import Detector

        det = Detector(vector=load_vector(paths["watched"]), layer=1, name="trig", threshold=0.0,
                       calibration={"trigger_threshold": 0.0, "prompt_threshold": 0.0},
                       vector_path=str(paths["watched"]))
        p = det.save(paths["watched"].parent / "trig.det.json")
        pol["detectors"] = [{"name": "trig", "path": str(p), "sha256": file_sha256(p), "action": "steer",
                             "steer": [{"vector": "push", "strength": strength}]}]
        for v in pol["vectors"]:
            v["max_abs_strength"] = 0.03
        pol["limits"]["max_combined_strength"] = 0.5
    return mutate


def test_conditional_steering_is_checked_with_the_requests_own(qwen_chat, tmp_path):
    """+0.02 requested at layers 1 and 2 plus +0.02 at layer 1 switched on by a detector: 0.06 along
    distress, above the bound of 0.05, though each alone is within it."""
    engine = _deployment(qwen_chat, tmp_path, mutate=_with_conditional(0.02), guard=True, distress_like="push")
    r = _refusal(engine, [_Item("push", 0.02, [1, 2])])
    assert r.status == 400 and r.code == "distress_steering"
    assert "+0.0600" in r.message and "detector 'trig''s conditional steering" in r.message
    assert len(_admitted(engine, [_Item("push", 0.01, [1, 2])])) == 1  # 0.04 in all
    assert len(_admitted(engine, [_Item("push", -0.03)])) == 1  # away from distress


def test_policy_check_refuses_per_request_range_plus_conditional_steering(qwen_chat, tmp_path):
    """At the policy's layers, ±0.03 per request plus +0.04 conditional can reach 0.07: refused at start-up."""
    from steerwatch.policy.schema import PolicyError

    with pytest.raises(PolicyError, match=r"push \(per-request ±0.03 @ 1\) \+ detector trig: 2 steering\(s\) "
                                          r"together push \+0.0700"):
        _deployment(qwen_chat, tmp_path, mutate=_with_conditional(0.04), guard=True, distress_like="push")


def test_conditional_steering_counts_in_the_combined_strength(qwen_chat, tmp_path):
    def mutate(pol, paths):
        _with_conditional(0.3)(pol, paths)
        pol["limits"]["max_combined_strength"] = 0.32

    engine = _deployment(qwen_chat, tmp_path, mutate=mutate)
    r = _refusal(engine, [_Item("other", 0.03)])
    assert r.code == "strength_out_of_bounds" and "0.33" in r.message and "conditional" in r.message

    def bigger(pol, paths):
        _with_conditional(0.4)(pol, paths)
        pol["limits"]["max_combined_strength"] = 0.32

    engine = _deployment(qwen_chat, tmp_path / "b", mutate=bigger)
    assert _admitted(engine, []) == []  # turning its own steering off is always allowed
    assert _refusal(engine, [_Item("other", 0.01)]).code == "strength_out_of_bounds"


def test_opposite_pushes_at_different_layers_do_not_cancel(qwen_chat, tmp_path):
    """+0.04 at layers 2 and 3 with -0.04 at layer 0 summed to +0.04 (within 0.05); layers 2 and 3
    still carry +0.08 towards distress."""
    from steerwatch.policy.guard import check_request
    from steerwatch.steer import SteerSpec

    engine = _deployment(qwen_chat, tmp_path, guard=True, distress_like="push",
                         mutate=lambda pol, _p: [v.update(max_abs_strength=0.04) for v in pol["vectors"]])
    vec, distress = engine.dep.vectors["push"], engine.guard_report.distress
    specs = [SteerSpec(vector=vec, strength=s, layers=(layer,)) for s, layer in ((0.04, 3), (0.04, 2), (-0.04, 0))]
    row = check_request(specs, distress)
    assert row is not None and row.level == "error" and row.numbers["push"] == GUARD_REPORT.approx(0.08)
    r = _refusal(engine, [_Item("push", 0.04, [3]), _Item("push", 0.04, [2]), _Item("push", -0.04, [0])])
    assert r.code == "distress_steering" and "+0.0800" in r.message
    # at one layer they do cancel: nothing is added there
    assert check_request([SteerSpec(vector=vec, strength=0.04, layers=(3, 2)),
                          SteerSpec(vector=vec, strength=-0.04, layers=(3, 2))], distress) is None


# ---------------------------------------------------------------- item 8: every client error a 4xx in OpenAI's shape
@pytest.fixture(scope="module")
def server(qwen_chat, tmp_path_factory):
    engine = _engine(qwen_chat, tmp_path_factory.mktemp("hard"))
    srv = RunningServer(engine)
    yield srv
    srv.stop()
    engine.stop()


@pytest.mark.parametrize("path,body,raw,param,needle", [
    ("/completions", {"model": "tiny-qwen2", "prompt": []}, None, "prompt", "prompt must not be empty"),
    ("/completions", {"model": "tiny-qwen2", "prompt": [[]]}, None, "prompt", None),
    ("/completions", {"model": "tiny-qwen2", "prompt": [""]}, None, "prompt", "prompt must not be empty"),
    ("/chat/completions", None, b'{"model": "tiny-qwen2", "x": ' + b"[" * 1900 + b"]" * 1900 + b"}", None,
     "nested"),
    ("/chat/completions", None, b'{"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}], "x": '
     + b"[" * 100 + b"]" * 100 + b"}", None, "nested deeper than 64"),
    ("/chat/completions", _chat("x", seed=2 ** 64), None, "seed", "seed"),
    ("/chat/completions", _chat("x", seed=-(2 ** 63) - 1), None, "seed", "seed"),
    ("/chat/completions", None, b'{"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}], '
     b'"steering": [{"vector": "push", "strength": NaN}]}', "steering.0.strength", "finite"),
])
def test_malformed_bodies_get_a_400_in_openai_shape(server, path, body, raw, param, needle):
    r = _post(server, path, body, raw=raw)
    err = _is_openai_error(r, 400)
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    if needle is not None:
        assert needle in err["message"]


def test_query_parameters_and_unknown_routes_answer_in_openai_shape(server):
    r = httpx.get(server.base_url + "/watch/events", params={"limit": "abc"}, headers=ADMIN, timeout=30)
    err = _is_openai_error(r, 400)
    assert err["param"] == "limit" and "integer" in err["message"]
    r = httpx.get(server.base_url + "/watch/events", params={"flagged": "maybe"}, headers=ADMIN, timeout=30)
    assert _is_openai_error(r, 400)["param"] == "flagged"
    assert _is_openai_error(httpx.get(server.base_url + "/nothing", timeout=30), 404)["code"] == "not_found"
    r = httpx.get(server.base_url + "/chat/completions", headers=ADMIN, timeout=30)
    assert _is_openai_error(r, 405)["code"] == "method_not_allowed"


def test_a_seeded_request_in_range_is_served(server):
    r = _post(server, "/chat/completions", _chat("x", seed=2 ** 64 - 1, temperature=0.5))
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- item 6: detector mode "prompt"
def test_conditional_prompt_mode_is_refused_at_start_up_and_by_policy_check(qwen_chat, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import steerwatch.cli.policy as cli_policy
    from steerwatch.cli.main import app
    from steerwatch.policy.schema import PolicyError

    def prompt_mode(pol, paths):
        _with_conditional(0.01)(pol, paths)
        pol["detectors"][0]["mode"] = "prompt"

    with pytest.raises(PolicyError, match=r"detectors\.0 \(trig\): mode 'prompt' is not supported by the server.*"
                                          r"mode: token"):
        _deployment(qwen_chat, tmp_path, mutate=prompt_mode)
    monkeypatch.setattr(cli_policy, "load", lambda spec, **kw: qwen_chat)
    res = CliRunner().invoke(app, ["policy", "check", str(tmp_path / "p.yaml")])
    assert res.exit_code == 2 and "mode 'prompt' is not supported" in res.output


# ---------------------------------------------------------------- item 16: keys and /health
def test_health_shows_policy_and_counters_only_to_key_holders(server):
    root = server.base_url.removesuffix("/v1")
    anon = httpx.get(root + "/health", timeout=30)
    assert anon.status_code == 200 and anon.json() == {"status": "ok"}
    bad = httpx.get(root + "/health", headers={"Authorization": "Bearer sk-wrong"}, timeout=30)
    assert bad.json() == {"status": "ok"}
    full = httpx.get(root + "/health", headers={"Authorization": f"Bearer {KEYS['user']}"}, timeout=30).json()
    assert full["policy_sha256"] == server.engine.dep.policy_sha256 and "requests" in full and "store" in full


def test_hash_key_refuses_short_keys():
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    res = CliRunner().invoke(app, ["policy", "hash-key", "short-key-15chr"])
    assert res.exit_code == 2 and "at least 16 characters" in res.output and "secrets.token_urlsafe" in res.output
    assert "sha256:" not in res.output
    res = CliRunner().invoke(app, ["policy", "hash-key"], input="sixteen-chars-ok\n")
    assert res.exit_code == 0 and res.output.startswith("sha256: ")


# ---------------------------------------------------------------- item 17: steerwatch generate applies the guard
def test_cli_generate_refuses_distress_steering_without_acknowledgement(qwen, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import steerwatch.cli.generate as cli_generate
    from conftest import make_vector
    from steerwatch.cli.main import app

    monkeypatch.setattr(cli_generate, "load", lambda spec, **kw: qwen)
    dvec = make_vector(qwen, seed=7, concept="distress", default_layers=(1, 2))
    dpath = dvec.save(tmp_path / "distress.sv")
    base = ["generate", "hi", "--max-new-tokens", "2", "--distress", str(dpath)]
    run = CliRunner().invoke
    res = run(app, [*base, "--steer", f"{dpath}:+5"])
    assert res.exit_code == 2 and "refuses" in res.output and "--acknowledge-distress" in res.output
    assert "+10.0000" in res.output  # 5 at each of 2 layers
    res = run(app, [*base, "--steer", f"{dpath}:+5", "--acknowledge-distress", "welfare study, supervised"])
    assert res.exit_code == 0 and "welfare study, supervised" in res.output
    res = run(app, [*base, "--steer", f"{dpath}:+0.02"])  # 0.04 in all: within the bound
    assert res.exit_code == 0, res.output
    res = run(app, [*base, "--steer", f"{dpath}:-5"])  # away from distress
    assert res.exit_code == 0, res.output
    # two specs within the bound alone, above it together
    res = run(app, [*base, "--steer", f"{dpath}@1:+0.03", "--steer", f"{dpath}@2:+0.03"])
    assert res.exit_code == 2 and "+0.0600" in res.output


# ---------------------------------------------------------------- item 14: friendly errors
def _cli(args, **kw):
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    return CliRunner().invoke(app, args, **kw)


def test_non_utf8_policy_file_is_a_policy_error(tmp_path):
    from steerwatch.policy.schema import PolicyError, load_policy

    p = tmp_path / "policy.yaml"
    p.write_bytes(b"model: default\nserved_name: caf\xe9\n")
    with pytest.raises(PolicyError, match=r"policy\.yaml is not UTF-8 text .*byte 0xe9 at position 31"):
        load_policy(p)
    res = _cli(["policy", "check", str(p)])
    assert res.exit_code == 2 and "not UTF-8" in " ".join(res.output.split())


def test_pickled_model_weights_are_refused_with_a_clear_error(tmp_path):
    import pickle

    from conftest import build_model, make_tokenizer
    from steerwatch.errors import ModelLoadError
    from steerwatch.models import load_model

    d = tmp_path / "model"
    build_model("qwen2").save_pretrained(d)
    make_tokenizer().save_pretrained(d)
    (d / "model.safetensors").unlink()
    # torch's weights-only loader refuses this pickle
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"x": print}, protocol=2))
    with pytest.raises(ModelLoadError, match=r"refused to load the pickled weights in .*model.*safetensors"):
        load_model(str(d), progress=False)
    res = _cli(["generate", "hi", "--model", str(d)])
    assert res.exit_code == 2 and "pickled weights" in " ".join(res.output.split())


def test_import_gguf_reads_the_file_before_loading_the_model(tmp_path, monkeypatch):
    import steerwatch.cli.interop as cli_interop

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded before the file was read")

    monkeypatch.setattr(cli_interop, "load", no_model)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    res = _cli(["import-gguf", str(bad), "-o", str(tmp_path / "x.sv")])
    assert res.exit_code == 2 and "is not a GGUF file" in " ".join(res.output.split())
    res = _cli(["import-gguf", str(tmp_path / "missing.gguf"), "-o", str(tmp_path / "x.sv")])
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())


def test_a_directory_given_as_a_file_is_named_as_a_directory(tmp_path):
    from steerwatch.errors import DataFormatError
    from steerwatch.io import read_text

    d = tmp_path / "pairs.jsonl"
    d.mkdir()
    with pytest.raises(DataFormatError, match=r"pairs\.jsonl: is a directory, not a file"):
        read_text(d)
    res = _cli(["generate", "hi", "-f", str(d)])
    assert res.exit_code == 2 and "is a directory, not a file" in " ".join(res.output.split())


# ---------------------------------------------------------------- item 12: tampered vector metadata
def _tampered(tmp_path, qwen, change):
    from safetensors.torch import load_file, save_file

    from conftest import make_vector

    good = make_vector(qwen, default_layers=(1,)).save(tmp_path / "good.sv")
    meta = json.loads(json.loads(good.read_bytes()[8:8 + int.from_bytes(good.read_bytes()[:8], "little")])
                      ["__metadata__"]["steerwatch"])
    meta = change(meta)
    out = tmp_path / "tampered.sv"
    save_file(load_file(str(good)), str(out), metadata={"steerwatch": json.dumps(meta)})
    return out


def _set(key, value):
    def change(meta):
        meta[key] = value
        return meta
    return change


def _norm_row(meta):
    meta["residual_norm"]["1"] = 3.5
    return meta


@pytest.mark.parametrize("change,needle", [
    (_set("residual_norm", [1.0, 2.0]), "residual_norm must be an object"),
    (_norm_row, "residual_norm.1 must be an object"),
    (_set("hidden_size", "abc"), "hidden_size must be a positive integer"),
    (_set("hidden_size", True), "hidden_size must be a positive integer"),
    (_set("default_layers", "x"), "default_layers must be a list of layer numbers"),
    (lambda meta: 7, "the steerwatch metadata must be a JSON object"),
    (_set("format_version", "x"), "format_version must be an integer"),
    (_set("validation", [1, 2]), "validation must be an object"),
    (_set("read_validation", {"1": 5}), "read_validation.1 must be an object"),
    (_set("concept", 12), "concept must be a string"),
    (_set("n_model_layers", "four"), "n_model_layers must be a positive integer or null"),
    (_set("recommended_strength", "big"), "recommended_strength must be a finite number or null"),
    (_set("dataset", "x"), "dataset must be an object"),
    (_set("extra", 3), "extra must be an object"),
])
def test_tampered_vector_metadata_is_a_vector_file_error(qwen, tmp_path, change, needle):
    from steerwatch.errors import VectorFileError
    from steerwatch.vector import load_vector

    with pytest.raises(VectorFileError, match="tampered.sv: .*" + needle.replace(".", r"\.")):
        load_vector(_tampered(tmp_path, qwen, change))


def test_an_absurd_residual_norm_is_refused_against_the_model(qwen, qwen_chat, tmp_path):
    from steerwatch.errors import VectorMismatchError
    from steerwatch.policy.schema import PolicyError
    from steerwatch.vector import check_residual_norm, load_vector

    def huge(meta):
        meta["residual_norm"]["1"]["mean"] = 1e30
        return meta

    path = _tampered(tmp_path, qwen, huge)
    vec = load_vector(path)  # a well-formed file: the number is only absurd for this model
    with pytest.raises(VectorMismatchError, match=r"residual norm 1e\+30 at layer 1, .* measured .* rebuild"):
        check_residual_norm(vec, qwen)
    check_residual_norm(load_vector(tmp_path / "good.sv"), qwen)  # norm 2.0 on a model measuring ~0.1: fine

    def swap(pol, paths):
        from steerwatch.io import file_sha256

        pol["vectors"][0].update(path=str(path), sha256=file_sha256(path))

    with pytest.raises(PolicyError, match=r"vectors\.0 \(push\): .*residual norm 1e\+30"):
        _deployment(qwen_chat, tmp_path / "d", mutate=swap)

def test_cli_generate_refuses_an_absurd_residual_norm(qwen, tmp_path, monkeypatch):
    import steerwatch.cli.generate as cli_generate

    def huge(meta):
        meta["residual_norm"]["1"]["mean"] = 1e30
        return meta

    monkeypatch.setattr(cli_generate, "load", lambda spec, **kw: qwen)
    path = _tampered(tmp_path, qwen, huge)
    res = _cli(["generate", "hi", "--max-new-tokens", "2", "--steer", f"{path}:+0.01", "--distress", str(path)])
    assert res.exit_code == 2 and "residual norm 1e+30" in " ".join(res.output.split())


# ---------------------------------------------------------------- item 7: CPU-heavy preparation
def test_message_and_steering_counts_are_capped_before_rendering(qwen_chat, tmp_path, monkeypatch):
    import steerwatch.serve.app as app_mod
    from steerwatch.policy.schema import Limits

    assert (Limits().max_messages, Limits().max_steering_items) == (256, 16)
    engine = _engine(qwen_chat, tmp_path, limits={"max_messages": 8, "max_steering_items": 4,
                                                  "max_prompt_tokens": 64})

    def never(*a, **kw):
        raise AssertionError("rendered a request that the caps refuse")

    monkeypatch.setattr(app_mod, "chat_prompt", never)
    try:
        with RunningServer(engine) as srv:
            many = {"model": "tiny-qwen2", "messages": [{"role": "user"}] * 9}
            err = _is_openai_error(_post(srv, "/chat/completions", many), 400)
            assert err["param"] == "messages" and err["code"] == "too_many_messages" and "9" in err["message"]
            steer = _chat("x", steering=[{"vector": "push", "strength": 0.0, "layers": [1]}] * 5)
            err = _is_openai_error(_post(srv, "/chat/completions", steer, who="steerer"), 400)
            assert err["param"] == "steering" and err["code"] == "too_many_steering_items" and "5" in err["message"]
            comp = {"model": "tiny-qwen2", "prompt": "x", "steering": [{"vector": "push"}] * 5}
            assert _is_openai_error(_post(srv, "/completions", comp), 400)["code"] == "too_many_steering_items"
            # the character-level tokenizer's longest entry is 5 characters ("<unk>", "<bos>"...): a prompt
            # longer than 64 tokens x 5 characters cannot fit 64 tokens and is refused unrendered
            long = _chat("y" * (64 * 5 + 1))
            err = _is_openai_error(_post(srv, "/chat/completions", long), 400)
            assert err["code"] == "prompt_too_long" and "321 characters" in err["message"]
    finally:
        engine.stop()


def test_rendering_runs_off_the_event_loop(server, monkeypatch):
    """A slow chat-template rendering must not stall /health (or any other request)."""
    import time

    import steerwatch.serve.app as app_mod

    real = app_mod.chat_prompt

    def slow(*a, **kw):
        time.sleep(2.0)
        return real(*a, **kw)

    monkeypatch.setattr(app_mod, "chat_prompt", slow)
    root = server.base_url.removesuffix("/v1")
    with ThreadPoolExecutor(2) as ex:
        fut = ex.submit(_post, server, "/chat/completions", _chat("slow"))
        time.sleep(0.3)
        t0 = time.monotonic()
        assert httpx.get(root + "/health", timeout=30).status_code == 200
        waited = time.monotonic() - t0
        assert fut.result().status_code == 200
    assert waited < 0.5


# ---------------------------------------------------------------- item 9: store faults found at start-up
def _store_policy(qwen_chat, tmp_path, url):
    import yaml

    from test_serve import _policy, _write_files

    pol = _policy(_write_files(qwen_chat, tmp_path / "files"), store={"url": url})
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(pol), encoding="utf-8")
    return p


def _no_model(monkeypatch):
    import steerwatch.models as models

    def no_model(*a, **kw):
        raise AssertionError("the model was loaded before the store was checked")

    monkeypatch.setattr(models, "load_model", no_model)


def test_a_read_only_store_is_refused_before_the_model_loads(qwen_chat, tmp_path, monkeypatch):
    from steerwatch.serve.server import build_engine
    from steerwatch.serve.store import EventStore, StoreError

    db = tmp_path / "events.db"
    EventStore(f"sqlite:///{db}").close()  # the table exists; the store is then opened read-only
    p = _store_policy(qwen_chat, tmp_path, f"sqlite:///file:{db}?mode=ro&uri=true")
    _no_model(monkeypatch)
    with pytest.raises(StoreError, match=r"the event store .* is not writable .*readonly"):
        build_engine(p)
    res = _cli(["serve", "--policy", str(p)])
    assert res.exit_code == 2 and "is not writable" in " ".join(res.output.split())


def test_a_store_path_under_a_file_is_a_store_error(qwen_chat, tmp_path, monkeypatch):
    from steerwatch.serve.server import build_engine
    from steerwatch.serve.store import StoreError

    (tmp_path / "afile").write_text("x")
    p = _store_policy(qwen_chat, tmp_path, "sqlite:///afile/events.db")
    _no_model(monkeypatch)
    with pytest.raises(StoreError, match=r"cannot create the folder .*afile.* for the event store"):
        build_engine(p)


# ---------------------------------------------------------------- item 13: size limits on user files
def test_an_oversized_jsonl_line_is_a_clear_error_before_parsing(tmp_path, monkeypatch):
    import steerwatch.io as io_mod
    from steerwatch.data.conversations import load_conversations
    from steerwatch.data.prompts import load_prompt_items
    from steerwatch.errors import DataFormatError

    monkeypatch.setattr(io_mod, "MAX_LINE_CHARS", 1000)  # the limit is 1,000,000 characters; smaller to test
    ok = json.dumps({"prompt": "fine"})
    big = json.dumps({"prompt": "y" * 2000})
    f = tmp_path / "p.jsonl"
    f.write_text(ok + "\n" + big + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"p\.jsonl, line 2: the line has 2014 characters, more than the "
                                              r"limit of 1000"):
        load_prompt_items(f)
    t = tmp_path / "p.txt"
    t.write_text("short\n" + "z" * 1001 + "\n", encoding="utf-8")
    with pytest.raises(DataFormatError, match=r"p\.txt, line 2: the line has 1001 characters"):
        load_prompt_items(t)
    c = tmp_path / "c.jsonl"
    c.write_text(json.dumps({"messages": [{"role": "user", "content": "x" * 2000}], "label": 1}) + "\n")
    with pytest.raises(DataFormatError, match=r"c\.jsonl, line 1: the line has"):
        load_conversations(c)
    assert len(load_prompt_items(_small(tmp_path))) == 2  # lines within the limit still load


def _small(tmp_path):
    p = tmp_path / "small.txt"
    p.write_text("a\nb\n", encoding="utf-8")
    return p


# ---------------------------------------------------------------- item 15: backpressure and hung-up clients
def _gated(engine):
    """Make the engine's generation wait until ``gate`` is set; ``prompts`` records what it generated."""
    gate, prompts, real = threading.Event(), [], engine.backend.generate

    def generate(*a, **kw):
        assert gate.wait(60)
        prompts.extend(kw["prompt_ids"])
        return real(*a, **kw)

    engine.backend.generate = generate
    return gate, prompts


def test_a_full_queue_answers_503_with_retry_after(qwen_chat, tmp_path):
    import time

    engine = _engine(qwen_chat, tmp_path, limits={"max_batch": 1, "batch_wait_ms": 0, "max_queue": 2})
    gate, _ = _gated(engine)
    try:
        with RunningServer(engine) as srv, ThreadPoolExecutor(4) as ex:
            running = ex.submit(_post, srv, "/chat/completions", _chat("first"))
            deadline = time.monotonic() + 30
            while engine.stats["batches"] < 1 and time.monotonic() < deadline:  # the worker holds "first"
                time.sleep(0.02)
            waiting = [ex.submit(_post, srv, "/chat/completions", _chat(f"wait {i}")) for i in range(2)]
            while engine.waiting < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            over = _post(srv, "/chat/completions", _chat("one too many"))
            gate.set()
            answers = [running.result()] + [w.result() for w in waiting]
    finally:
        gate.set()
        engine.stop()
    err = _is_openai_error(over, 503)
    assert err["code"] == "server_overloaded" and err["type"] == "server_error" and "2" in err["message"]
    assert over.headers["retry-after"] == "1"
    assert [a.status_code for a in answers] == [200, 200, 200]


def test_a_queued_request_whose_client_hung_up_is_not_generated(qwen_chat, tmp_path):
    import time

    engine = _engine(qwen_chat, tmp_path, limits={"max_batch": 1, "batch_wait_ms": 0})
    gate, generated = _gated(engine)
    try:
        with RunningServer(engine) as srv, ThreadPoolExecutor(2) as ex:
            first = ex.submit(_post, srv, "/chat/completions", _chat("first"))
            deadline = time.monotonic() + 30
            while engine.stats["batches"] < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            with pytest.raises(httpx.ReadTimeout):  # this client gives up while its request waits
                httpx.post(srv.base_url + "/chat/completions", json=_chat("hung up"), headers=ADMIN, timeout=0.5)
            stream_gone = {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "gone too"}],
                           "max_tokens": 4, "stream": True}
            with httpx.stream("POST", srv.base_url + "/chat/completions", json=stream_gone, headers=ADMIN,
                              timeout=30) as r:
                next(r.iter_lines())  # the opening chunk, then hang up while queued
            time.sleep(1.5)  # the server notices the hang-ups (it polls every 0.25 s) while the worker is held
            gate.set()
            assert first.result().status_code == 200
            after = _post(srv, "/chat/completions", _chat("after"))
            assert after.status_code == 200
    finally:
        gate.set()
        engine.stop()
    texts = [qwen_chat.tokenizer.decode(p) for p in generated]
    assert any("first" in t for t in texts) and any("after" in t for t in texts)
    assert not any("hung up" in t or "gone too" in t for t in texts)  # never generated
    assert engine.stats["cancelled"] == 2
    assert not any(r["prompt"][-1]["content"] in ("hung up", "gone too") for r in engine.store.list(limit=1000))


def test_a_generating_request_whose_client_hung_up_stops_and_is_stored(qwen_chat, tmp_path):
    """A stream dropped mid-generation stops at its next token (no compute spent on a gone client)
    while the other row of its batch runs to its full length; what was generated is still stored."""
    import time

    engine = _engine(qwen_chat, tmp_path, limits={"max_batch": 2, "batch_wait_ms": 300, "max_tokens": 120})
    real = engine.backend.generate
    steps: list[int] = []

    def slow(*a, **kw):  # 30 ms per decoding step, so the hang-up lands mid-generation
        inner = kw["on_token"]

        def on_token(tokens):
            steps.append(len(tokens))
            time.sleep(0.03)
            return inner(tokens)

        kw["on_token"] = on_token
        return real(*a, **kw)

    engine.backend.generate = slow
    long = {"model": "tiny-qwen2", "max_tokens": 120}
    try:
        with RunningServer(engine) as srv, ThreadPoolExecutor(1) as ex:
            stay = ex.submit(_post, srv, "/chat/completions",
                             dict(long, messages=[{"role": "user", "content": "stay"}]))
            body = dict(long, messages=[{"role": "user", "content": "leave"}], stream=True)
            with httpx.stream("POST", srv.base_url + "/chat/completions", json=body, headers=ADMIN,
                              timeout=30) as r:
                seen = []
                for line in r.iter_lines():  # up to the first text chunk: generation has started
                    seen.append(line)
                    if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                        break
            done = stay.result()
    finally:
        engine.stop()
    assert done.status_code == 200, done.text
    assert engine.stats["stopped"] == 1 and engine.stats["cancelled"] == 0
    rows = {r["prompt"][-1]["content"]: r for r in engine.store.list(limit=1000)}
    n_left = len(next(iter(rows["leave"]["token_scores"].values())))
    n_stay = len(next(iter(rows["stay"]["token_scores"].values())))
    assert done.json()["usage"]["completion_tokens"] == 120 and n_stay >= 119
    assert 0 < n_left < 60, n_left  # stopped soon after the hang-up, long before its 120 tokens
