"""The HTTP layer: routes only. An OpenAI-compatible API over a serving
:class:`~steerwatch.serve.engine.Engine`; what a request may do is decided by
:mod:`steerwatch.policy.admission`, the wire shapes are :mod:`steerwatch.serve.openai`.

``create_app(engine)`` builds the FastAPI app (FastAPI is imported at module level: it resolves the
handlers' annotations); it holds no global state. Endpoints: ``GET /v1/models``, ``POST
/v1/chat/completions``, ``POST /v1/completions`` (both with SSE streaming), ``GET
/v1/watch/events`` (admin keys), ``GET /health``, and the watch page (``/watch``, HTML for admin keys:
:mod:`steerwatch.serve.watchroutes`). Errors use OpenAI's shape ``{"error": {"message",
"type", "param", "code"}}`` with a 4xx status that says what was wrong.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..policy.admission import Refusal, admit
from . import openai
from .engine import QueueFull
from .openai import ApiError
from .requests import GenRequest, GenResult, chat_prompt, completion_prompt
from .schemas import ChatRequest, CompletionRequest
from .watchroutes import add_watch_routes

if TYPE_CHECKING:  # pragma: no cover
    from ..policy.schema import KeyPolicy
    from .engine import Engine

log = logging.getLogger("steerwatch.serve")
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there
MAX_JSON_DEPTH = 64  # a request body nested deeper is refused (400) before validation


def create_app(engine: Engine) -> FastAPI:
    dep = engine.dep
    pol = dep.policy
    app = FastAPI(title="steerwatch", version=_version(), docs_url=None, redoc_url=None)
    app.state.engine = engine

    # No token covers more characters than the vocabulary's longest entry, so a prompt of more than
    # max_prompt_tokens x that many characters is too long for sure: refused before rendering.
    longest = max((len(t) for t in dep.loaded.tokenizer.get_vocab()), default=1) or 1
    char_cap = pol.limits.max_prompt_tokens * longest

    def precheck_chars(n_chars: int, param: str) -> None:
        if n_chars > char_cap:
            raise ApiError(400, f"the prompt has {n_chars} characters, more than {pol.limits.max_prompt_tokens} "
                                f"tokens can hold (at most {longest} characters per token on this model); this "
                                f"server's limit is {pol.limits.max_prompt_tokens} tokens", param=param,
                           code="prompt_too_long")

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _query_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()  # query parameters (the bodies are validated in body_of)
        param = str(errs[0]["loc"][-1]) if errs and errs[0].get("loc") else None
        parts = [f"{e['loc'][-1]}: {e['msg']}" for e in errs[:5] if e.get("loc")]
        return JSONResponse(ApiError(400, "invalid request: " + "; ".join(parts), param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), code=code).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        rid = "err-" + uuid.uuid4().hex[:24]
        log.error("%s %s failed (%s)", request.method, request.url.path, rid,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse(ApiError(500, f"internal error ({rid}); the cause is logged on the server under this id",
                                     type_="server_error", code="internal_error").body(), status_code=500)

    def auth(request: Request) -> KeyPolicy | None:
        header = request.headers.get("authorization", "")
        presented = header[7:].strip() if header.lower().startswith("bearer ") else None
        if not pol.keys:
            return None  # an open server: anyone may chat, nobody may steer or read events
        key = dep.key(presented) if presented else None
        if key is None:
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer KEY')",
                           type_="authentication_error", code="invalid_api_key")
        return key

    async def body_of(request: Request, model_cls: type[ChatRequest] | type[CompletionRequest]) -> Any:
        limit = pol.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                           code="body_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise ApiError(413, f"request body exceeds the limit of {limit} bytes", code="body_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
        except RecursionError:
            data = None
        if data is None or _depth(data) > MAX_JSON_DEPTH:
            raise ApiError(400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        for name, cap, code in (("messages", pol.limits.max_messages, "too_many_messages"),
                                ("steering", pol.limits.max_steering_items, "too_many_steering_items")):
            items = data.get(name)
            if isinstance(items, list) and len(items) > cap:  # before validation and rendering: both cost CPU
                raise ApiError(400, f"{name} has {len(items)} entries; this server takes at most {cap} "
                                    f"(limits.max_{name if name == 'messages' else 'steering_items'})", param=name,
                               code=code)
        try:
            req = model_cls.model_validate(data)
        except ValidationError as exc:
            msg, param = openai.validation_message(exc)
            raise ApiError(400, msg, param=param) from None
        bad = req.unsupported()
        if bad:
            raise ApiError(400, bad, code="unsupported_parameter")
        if req.model != dep.served_name:
            raise ApiError(404, f"model {req.model!r} is not served here; this server serves {dep.served_name!r}",
                           param="model", code="model_not_found")
        return req

    def gen_request(req: Any, key: KeyPolicy | None, prompt_ids: list[int], record: Any, endpoint: str) -> GenRequest:
        try:
            ok = admit(dep, steering=req.steering, key=key, asked_max_tokens=req.requested_max_tokens(),
                       n_prompt_tokens=len(prompt_ids), guard_report=engine.guard_report,
                       prompt_param="messages" if endpoint == "chat" else "prompt")
        except Refusal as r:
            raise ApiError(r.status, r.message, type_=r.kind, param=r.param, code=r.code) from None
        temperature = pol.limits.default_temperature if req.temperature is None else req.temperature
        return GenRequest(prompt_ids=prompt_ids, prompt_record=record, endpoint=endpoint, max_tokens=ok.max_tokens,
                          stop=req.stops(), temperature=temperature, top_p=req.top_p, seed=req.seed,
                          steering=ok.steering, key_name=key.name if key else None, stream=req.stream)

    def extension(res: GenResult, req: Any) -> dict[str, Any]:
        want = bool(req.watch and req.watch.token_scores)
        toks = None
        if want:
            n = max((len(v) for v in res.token_scores.values()), default=0)
            toks = [dep.loaded.tokenizer.decode([t]) for t in res.token_ids[:n]]
        out = res.extension(token_scores=want, tokens=toks)
        out["policy_sha256"] = dep.policy_sha256
        return out

    async def stream(q: asyncio.Queue, req: Any, gen: GenRequest, *, chat: bool) -> AsyncIterator[str]:
        chunks = openai.Chunks(gen, chat=chat, model=dep.served_name)
        finished = False
        try:
            opening = chunks.opening()
            if opening:
                yield opening
            while True:
                kind, val = await q.get()
                if kind == "delta":
                    yield chunks.delta(val)
                elif kind == "error":
                    yield chunks.error(_failed(val))
                    break
                else:
                    yield chunks.final(val, extension(val, req))
                    if req.stream_options and req.stream_options.include_usage:
                        yield chunks.usage(val)
                    break
            finished = True
            yield chunks.DONE
        finally:
            if not finished:  # the client hung up: dropped if queued, stopped at its next token if generating
                gen.cancelled = True

    async def respond(gen: GenRequest, req: Any, request: Request, *, chat: bool) -> Any:
        """Submit; stream the answer as SSE, or wait for it and return the OpenAI object."""
        loop, q = asyncio.get_running_loop(), asyncio.Queue()  # type: ignore[var-annotated]

        def sink(ev: tuple[str, Any]) -> None:  # called from the engine's thread
            try:
                loop.call_soon_threadsafe(q.put_nowait, ev)
            except RuntimeError:  # the loop is gone (server shutting down); the engine still stores
                pass

        gen.sink = sink
        try:
            engine.submit(gen)
        except QueueFull as exc:
            raise ApiError(503, str(exc), type_="server_error", code="server_overloaded",
                           headers={"Retry-After": "1"}) from None
        if req.stream:
            return StreamingResponse(stream(q, req, gen, chat=chat), media_type="text/event-stream")
        while True:
            try:
                kind, val = await asyncio.wait_for(q.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if not gen.answered and await request.is_disconnected():
                    gen.cancelled = True  # dropped if still queued; once generating, stopped and stored
                    return JSONResponse(ApiError(408, "the client disconnected").body(), status_code=408)
                continue
            if kind == "done":
                return openai.response(gen, val, chat=chat, model=dep.served_name, extension=extension(val, req))
            if kind == "error":
                raise ApiError(500, _failed(val), type_="server_error", code="generation_failed")

    # ------------------------------------------------------------------ endpoints
    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        if pol.keys:  # the policy hash, the model and the counters are for key holders only
            header = request.headers.get("authorization", "")
            presented = header[7:].strip() if header.lower().startswith("bearer ") else None
            if not presented or dep.key(presented) is None:
                return {"status": "ok"}
        store = None if engine.store is None else dict(engine.store_health)
        return {"status": "ok", "model": dep.served_name, "policy_sha256": dep.policy_sha256,
                "batches": engine.stats["batches"], "requests": engine.stats["requests"],
                "failed": engine.stats["failed"], "cancelled": engine.stats["cancelled"],
                "stopped": engine.stats["stopped"],
                "rejected": engine.stats["rejected"], "waiting": engine.waiting, "store": store}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        auth(request)
        return {"object": "list", "data": [{"id": dep.served_name, "object": "model", "created": 0,
                                            "owned_by": "steerwatch"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        key = auth(request)
        req: ChatRequest = await body_of(request, ChatRequest)
        precheck_chars(sum(len(m.content) if isinstance(m.content, str) else
                           sum(len(str(p.get("text", ""))) for p in m.content or []) for m in req.messages)
                       + len(pol.system_prompt or ""), "messages")
        try:  # rendering and tokenising cost CPU: off the event loop
            prompt_ids, msgs = await asyncio.to_thread(chat_prompt, req, dep.loaded.tokenizer, pol.system_prompt)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        return await respond(gen_request(req, key, prompt_ids, msgs, "chat"), req, request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        key = auth(request)
        req: CompletionRequest = await body_of(request, CompletionRequest)
        if isinstance(req.prompt, str) or (isinstance(req.prompt, list) and isinstance(req.prompt[0], str)):
            precheck_chars(len(req.prompt if isinstance(req.prompt, str) else req.prompt[0]), "prompt")
        try:
            prompt_ids, record = await asyncio.to_thread(completion_prompt, req, dep.loaded.tokenizer,
                                                         dep.loaded.model.config.vocab_size)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="prompt") from None
        return await respond(gen_request(req, key, prompt_ids, record, "completion"), req, request, chat=False)

    @app.get("/v1/watch/events")
    async def events(request: Request, flagged: bool = False, limit: int = 100, after: int = 0) -> dict[str, Any]:
        key = auth(request)
        if key is None or not key.admin:
            raise ApiError(403 if key else 401, "reading events needs an admin API key",
                           type_="permission_error", code="admin_required")
        if not 1 <= limit <= 1000:
            raise ApiError(400, "limit must be between 1 and 1000", param="limit")
        if engine.store is None:
            raise ApiError(404, "this server has no event store", code="no_store")
        rows = await asyncio.to_thread(engine.store.list, flagged_only=flagged, limit=limit, after_id=after)
        return {"object": "list", "data": rows}

    add_watch_routes(app, engine)
    return app


def _depth(obj: Any) -> int:
    """How deeply a parsed JSON value nests (iteratively: no recursion on hostile input)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (list, dict)):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((x, d + 1) for x in (o.values() if isinstance(o, dict) else o))
    return deepest


def _failed(request_id: Any) -> str:
    """The message of a failed generation: its request id, never the exception (whose text can carry
    another request's data); the cause is in the server's log under that id."""
    return (f"generation failed (request id {request_id}); the cause is logged on the server under this "
            "request id")


def _version() -> str:
    from .. import __version__

    return __version__
