"""Load and batching tests for steerwatch serve: many concurrent clients with mixed per-request
steering on a loopback server. Every response must equal what its request gives alone (greedy),
so any cross-request leakage of steering, text or scores fails the test."""
from __future__ import annotations

import json
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
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


# hostile requests mixed into the load (issue 19): each must get its 4xx in OpenAI's shape, never a 5xx
_CHAT = {"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
HOSTILE: list[tuple[str, str, object, set[int]]] = [
    ("POST", "/chat/completions", b"{not json", {400}),
    ("POST", "/chat/completions", b'{"model": "tiny-qwen2", "x": ' + b"[" * 1900 + b"]" * 1900 + b"}", {400}),
    ("POST", "/completions", {"model": "tiny-qwen2", "prompt": []}, {400}),
    ("POST", "/completions", {"model": "tiny-qwen2", "prompt": [40] * 300, "max_tokens": 4}, {400}),
    ("POST", "/chat/completions", {**_CHAT, "seed": 2 ** 64}, {400}),
    ("POST", "/chat/completions", {**_CHAT, "steering": [{"vector": "push", "strength": 0.5}] * 3}, {400}),
    ("POST", "/chat/completions", {**_CHAT, "steering": [{"vector": "push", "strength": 0.5, "layers": [1, 1, 1]}]},
     {400}),
    ("POST", "/chat/completions", b'{"model": "tiny-qwen2", "messages": [{"role": "user", "content": "x"}], '
     b'"steering": [{"vector": "push", "strength": NaN}]}', {400}),
    ("POST", "/chat/completions", {**_CHAT, "steering": [{"vector": "ghost", "strength": 0.1}]}, {400}),
    ("POST", "/chat/completions", {**_CHAT, "messages": [{"role": "user", "content": "y" * 5000}]}, {413}),
    ("GET", "/watch/events?limit=abc", None, {400}),
]


class HealthProbe:
    """Polls /health every 50 ms in a thread and keeps each answer's latency."""

    def __init__(self, root: str, key: str) -> None:
        self.latencies: list[float] = []
        self.bad: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(root, key), daemon=True)
        self._thread.start()

    def _run(self, root: str, key: str) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {key}"}) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                r = c.get(root + "/health")
                self.latencies.append(time.monotonic() - t0)
                if r.status_code != 200:
                    self.bad.append(r.status_code)
                self._stop.wait(0.05)

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(timeout=30)
        return sorted(self.latencies)


def test_load_200_requests_16_clients_ten_percent_hostile(qwen_chat, tmp_path):
    """200 requests from 16 clients, one in ten hostile (the attacks of issue 19): every hostile one
    gets its 4xx in OpenAI's shape with nobody else's text in it, every well-formed one its own
    answer (zero leakage) and a stored event, and /health stays fast throughout (p99 < 0.5 s)."""
    engine = _engine(qwen_chat, tmp_path, limits={"max_batch": 16, "batch_wait_ms": 20})
    vec = engine.dep.vectors["push"]
    ref = {(p, s): _alone(qwen_chat, p, strength=s, n=8, vector=vec) for p in PROMPTS for s in STRENGTHS}
    rng = random.Random(1)
    jobs: list[tuple] = []
    for k in range(200):
        if k % 10 == 3:
            jobs.append(("hostile", HOSTILE[(k // 10) % len(HOSTILE)]))
        else:
            jobs.append(("ok", (rng.choice(PROMPTS), rng.choice(STRENGTHS), rng.random() < 0.3)))
    try:
        with RunningServer(engine) as srv:
            probe = HealthProbe(srv.base_url.removesuffix("/v1"), KEYS["user"])
            clients = [openai.OpenAI(base_url=srv.base_url, api_key=KEYS["steerer"], max_retries=0, timeout=120)
                       for _ in range(16)]
            raw = httpx.Client(timeout=120, headers={"Authorization": f"Bearer {KEYS['admin']}"})

            def one(k):
                kind, job = jobs[k]
                if kind == "hostile":
                    method, path, body, _ = job
                    content = body if isinstance(body, bytes) else (None if body is None else json.dumps(body))
                    r = raw.request(method, srv.base_url + path, content=content,
                                    headers={"Content-Type": "application/json"})
                    return r.status_code, r.text
                p, s, stream = job
                kw = dict(model="tiny-qwen2", messages=[{"role": "user", "content": p}], max_tokens=8,
                          extra_body={"steering": [{"vector": "push", "strength": s}]})
                c = clients[k % 16]
                if stream:
                    chunks = list(c.chat.completions.create(stream=True, **kw))
                    last = next(ch for ch in chunks if ch.choices and ch.choices[0].finish_reason)
                    return "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices), \
                        last.model_extra["steerwatch"]
                r = c.chat.completions.create(**kw)
                return r.choices[0].message.content, r.model_extra["steerwatch"]

            with ThreadPoolExecutor(16) as ex:
                out = list(ex.map(one, range(200)))
            latencies = probe.stop()
            raw.close()
        long_prompts = [p for p in PROMPTS if len(p) >= 5]
        for (kind, job), res in zip(jobs, out):
            if kind == "hostile":
                status, text = res
                assert status in job[3], (job[:2], status, text)
                body = json.loads(text)
                assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
                assert not any(p in text for p in long_prompts)  # nobody else's prompt
            else:
                p, s, _ = job
                assert res[0] == ref[(p, s)]  # zero leakage: every answer is its own request's
        good = [(job, res) for (kind, job), res in zip(jobs, out) if kind == "ok"]
        stored = {r["request_id"]: r for r in engine.store.list(flagged_only=True, limit=1000)}
        assert len(good) == 180 and len(stored) == 180  # every well-formed request answered and stored
        for (p, _, _), (text, ext) in good:
            row = stored[ext["request_id"]]
            assert row["response"] == text and row["prompt"][-1]["content"] == p
        assert not probe.bad and len(latencies) >= 20
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        print(f"/health over {len(latencies)} probes under load: p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {p99 * 1000:.0f} ms")  # the figure in docs/results.md (pytest -s)
        assert p99 < 0.5, f"/health p99 {p99:.3f} s over {len(latencies)} probes"
    finally:
        engine.stop()


def _full_store(url: str):
    """An event store on a SQLite file that cannot grow: inserts fail with 'database or disk is full'
    (SQLite's max_page_count set to the file's current size on every connection)."""
    import sqlalchemy as sa

    from steerwatch.serve.store import EventStore

    store = EventStore(url)

    @sa.event.listens_for(store.engine, "connect")
    def _cap(dbapi_conn, _record):
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA max_page_count = 1")
        cur.close()

    store.engine.dispose()  # new connections get the cap
    return store


def test_store_faults_mid_load_are_served_and_counted_never_silent(qwen_chat, tmp_path):
    """Mid-load the store turns read-only, then full: every answer is still served; each one says
    whether its event was stored (stored_id) or not (store_error, nothing of the database's error
    text); /health counts exactly the dropped events; the store recovers when it works again."""
    from steerwatch.serve.store import EventStore

    engine = _engine(qwen_chat, tmp_path, limits={"max_batch": 8, "batch_wait_ms": 10})
    good_store = engine.store
    db = tmp_path / "events.db"
    read_only = EventStore(f"sqlite:///file:{db}?mode=ro&uri=true")
    full = _full_store(f"sqlite:///{tmp_path / 'full.db'}")
    stores = {"normal": good_store, "read-only": read_only, "full": full}
    phases = ["normal", "read-only", "full", "normal"]
    results: list[tuple[str, dict]] = []
    try:
        with RunningServer(engine) as srv:
            root = srv.base_url.removesuffix("/v1")
            c = [openai.OpenAI(base_url=srv.base_url, api_key=KEYS["user"], max_retries=0, timeout=120)
                 for _ in range(4)]

            def one(k):
                r = c[k % 4].chat.completions.create(
                    model="tiny-qwen2", messages=[{"role": "user", "content": f"{phase} {k}"}], max_tokens=4)
                return r.choices[0].message.content, r.model_extra["steerwatch"]

            for phase in phases:
                engine.store = stores[phase]  # the fault appears under load: between batches of this phase
                with ThreadPoolExecutor(4) as ex:
                    results += [(phase, ext) for _, ext in ex.map(one, range(12))]
            health = httpx.get(root + "/health", headers={"Authorization": f"Bearer {KEYS['user']}"},
                               timeout=30).json()
    finally:
        engine.stop()
    for _ph, ext in results:
        assert (ext["stored_id"] is None) == ("store_error" in ext)  # exactly one of the two: never silent
        if "store_error" in ext:
            assert ext["store_error"].startswith("the event could not be stored") and "readonly" not in \
                ext["store_error"] and "full" not in ext["store_error"]
    by_phase = {ph: [ext for p, ext in results if p == ph] for ph in ("read-only", "full")}
    assert all("store_error" in ext for ext in by_phase["read-only"])  # a read-only store takes nothing
    assert any("store_error" in ext for ext in by_phase["full"])
    dropped = sum("store_error" in ext for _, ext in results)
    assert health["store"]["dropped_events"] == dropped and health["store"]["ok"] is True  # recovered
    stored_ids = [ext["stored_id"] for _, ext in results if ext["stored_id"] is not None]
    assert len(stored_ids) == len(results) - dropped
    in_normal = {r["request_id"] for r in good_store.list(limit=1000)}
    assert {ext["request_id"] for ph, ext in results if ph == "normal"} <= in_normal


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
