"""The watch page (``/watch`` on steerwatch serve, ``view --store`` offline) on a tiny random model:
admin keys only (Bearer or a sign-in session), filters with exact counts, the counts over time,
one event's tokens and scores, escaping, the offline file, and the page in headless Chromium."""
from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from steerwatch.serve.server import RunningServer
from steerwatch.serve.store import EventStore, StoreError
from test_report import _browser, _chromium
from test_serve import KEYS, _engine

T0 = datetime(2026, 12, 1, 10, 0, tzinfo=timezone.utc).timestamp()
SCRIPT = "<script>alert(1)</script>"


def _synthetic(store: EventStore) -> dict[str, int]:
    """Four events at known times (real requests are stored 'now'): two flagged (one by a flag, one by
    a conditional-steering trigger), one with a script in its response."""
    base = {"model": "tiny-qwen2", "policy_sha256": "0" * 64, "endpoint": "chat", "steering": [],
            "thresholds": {"always": 0.25, "never": 0.5}}
    ids = {}
    ids["e1"] = store.add({**base, "request_id": "e1", "created": T0 + 600, "key_name": "user", "flagged": True,
                           "flags": ["never"], "events": [], "prompt": [{"role": "user", "content": "say <b>hi</b>"}],
                           "response": SCRIPT + " hi", "scores": {"always": 0.2, "never": 0.6},
                           "token_scores": {"always": [0.1, 0.2, 0.3], "never": [0.4, 0.6, 0.8]},
                           "tokens": ["<script>", "alert(1)", "</script> hi"]})
    ids["e2"] = store.add({**base, "request_id": "e2", "created": T0 + 1200, "key_name": "steerer", "flagged": False,
                           "flags": [], "events": [], "prompt": "plain text", "response": "fine",
                           "scores": {"always": 0.1, "never": 0.1}, "token_scores": {"always": [0.1], "never": [0.1]},
                           "tokens": ["fine"]})
    ids["e3"] = store.add({**base, "request_id": "e3", "created": T0 + 5400, "key_name": "user", "flagged": True,
                           "flags": [], "events": [{"type": "steer", "detector": "never", "at_token": 1,
                                                    "steering": []}], "prompt": "x", "response": "y",
                           "scores": {"always": 0.1, "never": 0.7}, "token_scores": {}, "tokens": []})
    ids["e4"] = store.add({**base, "request_id": "e4", "created": T0 + 86400, "key_name": "admin", "flagged": False,
                           "flags": [], "events": [], "prompt": "x", "response": "z", "scores": {},
                           "token_scores": {}, "tokens": []})
    return ids


@pytest.fixture(scope="module")
def watch(qwen_chat, tmp_path_factory):
    """A server storing every response, three real (flagged by 'always') events, four synthetic ones."""
    tmp = tmp_path_factory.mktemp("watch")
    engine = _engine(qwen_chat, tmp, store={"store_all": True})
    srv = RunningServer(engine)
    root = srv.base_url[: -len("/v1")]
    real = []
    for who, prompt in (("user", "hello there"), ("user", "what is 2+2?"), ("steerer", "the sky is")):
        r = httpx.post(f"{srv.base_url}/chat/completions", headers={"Authorization": f"Bearer {KEYS[who]}"},
                       json={"model": "tiny-qwen2", "messages": [{"role": "user", "content": prompt}],
                             "max_tokens": 6}, timeout=120)
        assert r.status_code == 200, r.text
        real.append(r.json()["steerwatch"]["stored_id"])
    ids = _synthetic(engine.store)
    yield {"srv": srv, "root": root, "engine": engine, "real": real, "ids": ids, "db": tmp / "events.db"}
    srv.stop()
    engine.stop()


def _get(w, path: str, who: str | None = "admin", **kw) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEYS[who]}"} if who else {}
    return httpx.get(w["root"] + path, headers=headers, timeout=60, **kw)


def _ids(page: str) -> list[int]:
    table = page.split('<table class="events">', 1)[1].split("</table>", 1)[0]
    return [int(x) for x in re.findall(r'<tr class="event[^"]*"><td class="num"><a href="[^"]*">(\d+)</a>', table)]


def test_watch_page_needs_an_admin_key(watch):
    r = _get(watch, "/watch", who=None)
    assert r.status_code == 401 and '<form class="login" method="post" action="/watch/login">' in r.text
    assert _get(watch, "/watch", who="user").status_code == 403
    assert _get(watch, "/watch", who="steerer").status_code == 403
    assert _get(watch, f"/watch/events/{watch['real'][0]}", who="user").status_code == 403
    bad = httpx.get(watch["root"] + "/watch", headers={"Authorization": "Bearer sk-not-a-key-at-all"}, timeout=60)
    assert bad.status_code == 401 and "Missing or invalid API key." in bad.text
    ok = _get(watch, "/watch")
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/html")
    assert ok.headers["cache-control"] == "no-store"
    assert "script-src" not in ok.headers["content-security-policy"]
    assert ok.headers["content-security-policy"].startswith("default-src 'none'")  # no script may run


def test_sign_in_sets_a_session_cookie_not_the_key(watch):
    with httpx.Client(base_url=watch["root"], timeout=60) as c:
        assert c.post("/watch/login", data={"key": KEYS["user"]}).status_code == 403  # no admin right
        assert c.post("/watch/login", data={"key": "sk-wrong-wrong-wrong"}).status_code == 401
        assert not c.cookies
        r = c.post("/watch/login", data={"key": KEYS["admin"]})
        assert r.status_code == 303 and r.headers["location"] == "/watch"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/watch" in cookie
        token = c.cookies["steerwatch_session"]
        assert KEYS["admin"] not in cookie and len(token) >= 40
        assert c.get("/watch").status_code == 200
        assert c.get(f"/watch/events/{watch['real'][0]}").status_code == 200
        assert c.get("/v1/watch/events").status_code == 401  # the API still wants the key itself
        c.cookies.set("steerwatch_session", token[:-2] + "xx", path="/watch")
        assert c.get("/watch").status_code == 401
        c.cookies.set("steerwatch_session", token, path="/watch")
        assert c.post("/watch/logout").status_code == 303
        c.cookies.set("steerwatch_session", token, path="/watch")  # the old token no longer opens the page
        assert c.get("/watch").status_code == 401


def test_filters_change_the_listing(watch):
    ids, real = watch["ids"], watch["real"]
    page = _get(watch, "/watch").text
    # flagged first (the real ones, newest first, then e3 and e1), then the rest, newest first
    assert _ids(page) == [*reversed(real), ids["e3"], ids["e1"], ids["e4"], ids["e2"]]
    assert '<b class="total">7</b>' in page
    for query, want in (("flagged=true", [*reversed(real), ids["e3"], ids["e1"]]),
                        ("detector=never", [ids["e3"], ids["e1"]]),
                        ("detector=always", list(reversed(real))),
                        ("key=user", [*reversed(real[:2]), ids["e3"], ids["e1"]]),
                        ("key=steerer", [real[2], ids["e2"]]),
                        ("since=2026-12-01T10:00&until=2026-12-01T12:00", [ids["e3"], ids["e1"], ids["e2"]]),
                        ("since=2026-12-02", [*reversed(real), ids["e4"]]),
                        ("since=2026-12-01&until=2026-12-03&flagged=true&detector=never&key=user",
                         [ids["e3"], ids["e1"]]),
                        ("limit=2&page=2", [real[0], ids["e3"]])):
        got = _get(watch, f"/watch?{query}").text
        assert _ids(got) == want, query
    total = _get(watch, "/watch?limit=2&page=2").text
    assert '3–4 of <b class="total">7</b>' in total and "Page 2 of 4" in total
    r = _get(watch, "/watch?since=yesterday")
    assert r.status_code == 400 and "since must be a date or date-time" in r.text
    assert _get(watch, "/watch?colour=red").status_code == 400


def test_counts_per_detector_over_time(watch):
    page = _get(watch, "/watch?since=2026-12-01T10:00&until=2026-12-01T12:00").text
    titles = re.findall(r"<title>([^<]+)</title>", page.split('<table class="counts">', 1)[1].split("</table>")[0])
    assert titles == ["all events, 2026-12-01 10:00 UTC: 2", "all events, 2026-12-01 11:00 UTC: 1",
                      "never, 2026-12-01 10:00 UTC: 1", "never, 2026-12-01 11:00 UTC: 1"]
    assert "2 hours from 2026-12-01 10:00 to 2026-12-01 11:00 UTC" in page
    days = _get(watch, "/watch?until=2026-12-03&bucket=day").text
    rows = re.findall(r'<tr class="series" data-name="([^"]+)"><td>[^<]+</td><td class="num">(\d+)</td>', days)
    assert rows == [("all events", "4"), ("never", "2")]
    assert "all events, 2026-12-01 UTC: 3" in days and "all events, 2026-12-02 UTC: 1" in days


def test_event_page_shows_tokens_scores_and_escapes(watch):
    e1 = _get(watch, f"/watch/events/{watch['ids']['e1']}").text
    assert SCRIPT not in e1 and "&lt;script&gt;alert(1)&lt;/script&gt; hi" in e1
    assert "say &lt;b&gt;hi&lt;/b&gt;" in e1
    heat = re.findall(r'<span class="tok" style="background:([^"]+)" title="([^"]+)">([^<]*)</span>', e1)
    assert [t for _, t, _ in heat] == ["token 0: +0.100 (threshold +0.250)", "token 1: +0.200 (threshold +0.250)",
                                       "token 2: +0.300 (threshold +0.250)", "token 0: +0.400 (threshold +0.500)",
                                       "token 1: +0.600 (threshold +0.500)", "token 2: +0.800 (threshold +0.500)"]
    assert [x for _, _, x in heat[:3]] == ["&lt;script&gt;", "alert(1)", "&lt;/script&gt; hi"]
    # blue below the threshold, red above, by (score - threshold) / (2 x the response's spread): always 0.1 is
    # 0.15 under 0.25 with a spread of 0.0816 (z -0.92); never 0.4 is 0.1 under 0.5 with a spread of 0.163 (-0.31)
    assert [bg for bg, _, _ in heat] == ["rgba(40,90,220,0.92)", "rgba(40,90,220,0.31)", "rgba(220,40,40,0.31)",
                                         "rgba(40,90,220,0.31)", "rgba(220,40,40,0.31)", "rgba(220,40,40,0.92)"]
    assert '<tr><td>always</td><td class="num">+0.200</td><td class="num">+0.250</td>' in e1
    assert ('<tr><td>never</td><td class="num above">+0.600</td><td class="num">+0.500</td><td class="num">3</td>'
            '<td><span class="badge fired">fired</span></td></tr>') in e1
    # a real event: the stored tokens and per-token scores, one span per scored token and detector
    rid = watch["real"][0]
    row = watch["engine"].store.get(rid)
    page = _get(watch, f"/watch/events/{rid}").text
    n = len(row["token_scores"]["always"])
    assert n >= 1 and page.count('<span class="tok"') == 2 * n
    assert f'title="token {n - 1}: {row["token_scores"]["never"][n - 1]:+.3f} (threshold +1e+09)"' in page
    assert "hello there" in page and f"{row['scores']['always']:+.3f}" in page
    assert _get(watch, "/watch/events/99999").status_code == 404
    assert _get(watch, "/watch/events/abc").status_code == 404


def test_view_store_writes_the_page_offline(watch, tmp_path):
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    out = tmp_path / "watch.html"
    res = CliRunner().invoke(app, ["view", "--store", str(watch["db"]), "--html", str(out), "--flagged"])
    assert res.exit_code == 0, res.output
    page = out.read_text(encoding="utf-8")
    flagged = [*reversed(watch["real"]), watch["ids"]["e3"], watch["ids"]["e1"]]
    assert _ids(page) == flagged
    assert re.findall(r'<section class="event" id="event-(\d+)">', page) == [str(i) for i in flagged]
    assert f'href="#event-{flagged[0]}"' in page and 'href="/watch' not in page and "<script" not in page
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt; hi" in page
    assert "7 events in events.db" in " ".join(res.output.split())
    res = CliRunner().invoke(app, ["view", "--store", str(watch["db"])])
    assert res.exit_code == 2 and "--store needs --html OUT.html" in res.output
    res = CliRunner().invoke(app, ["view", "--store", str(tmp_path / "nope.db"), "--html", str(out)])
    assert res.exit_code == 2 and "no event store at" in res.output
    assert not (tmp_path / "nope.db").exists()  # read-only: nothing created


def test_old_store_gains_the_thresholds_column(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE steerwatch_events (id INTEGER PRIMARY KEY, request_id VARCHAR(64) NOT NULL, "
                    "created FLOAT NOT NULL, key_name VARCHAR(200), model VARCHAR(300) NOT NULL, policy_sha256 "
                    "VARCHAR(64) NOT NULL, endpoint VARCHAR(40) NOT NULL, flagged BOOLEAN NOT NULL, flags TEXT NOT "
                    "NULL, events TEXT NOT NULL, prompt TEXT NOT NULL, response TEXT NOT NULL, steering TEXT NOT "
                    "NULL, scores TEXT NOT NULL, token_scores TEXT NOT NULL, tokens TEXT NOT NULL)")
        con.execute("INSERT INTO steerwatch_events VALUES (1, 'r', 1.0, NULL, 'm', 'p', 'chat', 1, '[\"d\"]', "
                    "'[]', '\"x\"', 'y', '[]', '{\"d\": 0.5}', '{\"d\": [0.5]}', '[\"y\"]')")
    ro = EventStore(f"sqlite:///{db}", readonly=True)  # read-only: read as it is, not migrated
    assert ro.get(1)["thresholds"] == {} and ro.names() == {"keys": [], "detectors": ["d"]}
    ro.close()
    with sqlite3.connect(db) as con:
        assert "thresholds" not in [r[1] for r in con.execute("PRAGMA table_info(steerwatch_events)")]
    rw = EventStore(f"sqlite:///{db}")
    rw.add({"request_id": "s", "model": "m", "policy_sha256": "p", "endpoint": "chat", "flagged": False,
            "response": "", "prompt": "", "thresholds": {"d": 0.25}})
    assert [r["thresholds"] for r in rw.list()] == [{}, {"d": 0.25}]
    rw.close()
    with pytest.raises(StoreError, match="no event store at"):
        EventStore(f"sqlite:///{tmp_path / 'missing.db'}", readonly=True)


MEASURE = ("<script>const d=document.documentElement;d.setAttribute('data-scroll-width',String(d.scrollWidth));"
           "d.setAttribute('data-client-width',String(d.clientWidth));"
           "d.setAttribute('data-bars',String(document.querySelectorAll('svg.counts rect.bar').length));"
           "d.setAttribute('data-svg-width',String(Math.round(document.querySelector('svg.counts')"
           ".getBoundingClientRect().width)));</script></body>")


def test_watch_page_in_headless_chromium(watch, tmp_path):
    """The list and an event page as a browser draws them (fetched from the server, with a measuring
    script added for the test): rows and the counts chart drawn, nothing past 1280 px, a screenshot
    that is not blank. STEERWATCH_SAVE_SCREENSHOTS=DIR also keeps the screenshots (docs/img)."""
    exe = _chromium()
    import matplotlib.image
    import numpy as np

    keep = os.environ.get("STEERWATCH_SAVE_SCREENSHOTS")
    for name, path, rows in (("watch-page", "/watch?limit=50", 7),
                             ("watch-event", f"/watch/events/{watch['ids']['e1']}", 0)):
        page = _get(watch, path).text
        html = tmp_path / f"{name}.html"
        html.write_text(page.replace("</body>", MEASURE), encoding="utf-8")
        shot = tmp_path / f"{name}.png"
        res = _browser(exe, tmp_path, f"--screenshot={shot}", "--dump-dom", html.as_uri())
        assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
        attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', re.search(r"<html[^>]*>", res.stdout).group(0)))
        assert int(attrs["scroll-width"]) <= int(attrs["client-width"]) == 1280, name
        if rows:
            assert res.stdout.count('<tr class="event') == rows
            assert int(attrs["bars"]) == len(re.findall(r'<rect class="bar', page)) > 0
            assert int(attrs["svg-width"]) == 480
        img = matplotlib.image.imread(shot)[..., :3]
        assert img.shape == (2000, 1280, 3)
        assert len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50  # text, tints, bars
        white = (img > 0.97).all(-1).mean()
        assert 0.3 < white < 0.995, name
        if keep:
            from PIL import Image

            Path(keep).mkdir(parents=True, exist_ok=True)
            bottom = int(np.nonzero(~(img > 0.97).all(-1).all(-1))[0].max()) + 24  # down to the last drawn row
            Image.open(shot).convert("RGB").crop((0, 0, 1280, min(bottom, 1400))).quantize(256).save(
                Path(keep) / f"{name}.png", optimize=True)


def test_sessions_expire_and_are_bounded():
    from steerwatch.serve.sessions import Sessions

    s = Sessions(ttl_s=3600, max_sessions=2)
    a, b = s.create("ops"), s.create("ops2")
    assert s.lookup(a) == "ops" and s.lookup(b) == "ops2" and s.lookup(a + "x") is None and s.lookup(None) is None
    c = s.create("ops3")  # a third one drops the oldest
    assert s.lookup(a) is None and s.lookup(b) == "ops2" and s.lookup(c) == "ops3"
    s.drop(b)
    assert s.lookup(b) is None
    expired = Sessions(ttl_s=0.0)
    assert expired.lookup(expired.create("ops")) is None
