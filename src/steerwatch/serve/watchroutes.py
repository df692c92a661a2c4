"""The watch page's routes (HTML, read-only): ``GET /watch`` (the events, filtered by query
parameters), ``GET /watch/events/{id}`` (one event), ``GET``/``POST /watch/login`` and ``POST
/watch/logout``. Same keys and rights as ``GET /v1/watch/events``: admin keys only, sent as
``Authorization: Bearer KEY`` or, from a browser, through the sign-in form, which sets a session
cookie (:mod:`steerwatch.serve.sessions`). Every page is sent with ``Cache-Control: no-store`` and a
Content-Security-Policy that allows no scripts."""
from __future__ import annotations

import asyncio
import urllib.parse
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..errors import SteerwatchError
from .sessions import SESSION_TTL_S, Sessions
from .watchpage import WatchFilter, render_event, render_list, render_login, render_message

if TYPE_CHECKING:  # pragma: no cover
    from ..policy.schema import KeyPolicy
    from .engine import Engine

COOKIE = "steerwatch_session"
MAX_LOGIN_BYTES = 4096
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                      "frame-ancestors 'none'; base-uri 'none'"}


def _page(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=HEADERS)


def add_watch_routes(app: FastAPI, engine: Engine) -> None:
    dep = engine.dep
    pol = dep.policy
    sessions = Sessions()
    app.state.watch_sessions = sessions
    by_name = {k.name: k for k in pol.keys}

    def who(request: Request) -> tuple[KeyPolicy | None, HTMLResponse | None]:
        """The admin key behind a request (Bearer header, else the session cookie), or the page to send."""
        if not pol.keys:
            return None, _page(render_login("This server has no API keys, so nobody may read its events. Read "
                                            "the store offline with: steerwatch view --store FILE --html OUT.html",
                                            has_keys=False), 401)
        header = request.headers.get("authorization", "")
        if header:
            presented = header[7:].strip() if header.lower().startswith("bearer ") else None
            key = dep.key(presented) if presented else None
        else:
            name = sessions.lookup(request.cookies.get(COOKIE))
            key = by_name.get(name) if name is not None else None
        if key is None:
            return None, _page(render_login("Sign in with an admin API key." if not header else
                                            "Missing or invalid API key."), 401)
        if not key.admin:
            return None, _page(render_message("not allowed", f"The key {key.name!r} has no admin right; the watch "
                                              "page needs an admin key (as GET /v1/watch/events does)."), 403)
        if engine.store is None:
            return None, _page(render_message("no event store", "This server has no event store."), 404)
        return key, None

    @app.get("/watch", response_class=HTMLResponse)
    async def watch(request: Request) -> Response:
        _, refused = who(request)
        if refused is not None:
            return refused
        try:
            filt = WatchFilter.from_query(dict(request.query_params))
        except SteerwatchError as exc:
            return _page(render_message("bad filter", str(exc)), 400)
        assert engine.store is not None  # checked in who()
        body = await asyncio.to_thread(render_list, engine.store, filt, detectors=[d.name for d in engine.detectors],
                                       model=dep.served_name)
        return _page(body)

    @app.get("/watch/events/{event_id}", response_class=HTMLResponse)
    async def watch_event(request: Request, event_id: str) -> Response:
        _, refused = who(request)
        if refused is not None:
            return refused
        assert engine.store is not None
        row = await asyncio.to_thread(engine.store.get, int(event_id)) if event_id.isdigit() else None
        if row is None:
            return _page(render_message("no such event", f"There is no event {event_id!r} in the store."), 404)
        return _page(await asyncio.to_thread(render_event, row))

    @app.get("/watch/login", response_class=HTMLResponse)
    async def login_form() -> Response:
        return _page(render_login(has_keys=bool(pol.keys)))

    @app.post("/watch/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_LOGIN_BYTES:
                return _page(render_login("The sign-in form was too large."), 413)
        form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"))
        presented = (form.get("key") or [""])[0].strip()
        key = dep.key(presented) if presented and pol.keys else None
        if key is None:
            return _page(render_login("Unknown API key." if pol.keys else "This server has no API keys.",
                                      has_keys=bool(pol.keys)), 401)
        if not key.admin:
            return _page(render_login(f"The key {key.name!r} has no admin right; the watch page needs an admin "
                                      "key."), 403)
        resp = RedirectResponse("/watch", status_code=303, headers=HEADERS)
        resp.set_cookie(COOKIE, sessions.create(key.name), max_age=SESSION_TTL_S, path="/watch", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
        return resp

    @app.post("/watch/logout")
    async def logout(request: Request) -> Response:
        sessions.drop(request.cookies.get(COOKIE))
        resp = RedirectResponse("/watch/login", status_code=303, headers=HEADERS)
        resp.delete_cookie(COOKIE, path="/watch", httponly=True, samesite="strict")
        return resp
