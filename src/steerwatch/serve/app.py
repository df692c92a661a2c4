"""The HTTP layer (FastAPI is imported at module level: it resolves the handlers' annotations): an
OpenAI-compatible API over an :class:`~steerwatch.serve.engine.Engine`.

``create_app(engine)`` builds the FastAPI app; it holds no global state. Endpoints:
``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with SSE
streaming), ``GET /v1/watch/events`` (admin keys), ``GET /health``. Errors use OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` with a 4xx status that says what was wrong.
"""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from ..errors import SteerwatchError
from ..layers import check_layers
from .engine import GenRequest, GenResult
from .schemas import ChatRequest, CompletionRequest

if TYPE_CHECKING:  # pragma: no cover
    from .engine import Engine
    from .policy import KeyPolicy


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _validation_message(exc: ValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    parts = []
    for e in errs[:5]:
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}" if loc else e["msg"])
    param = ".".join(str(x) for x in errs[0]["loc"]) if errs else None
    return "invalid request: " + "; ".join(parts), param


def create_app(engine: Engine) -> FastAPI:
    dep = engine.dep
    pol = dep.policy
    app = FastAPI(title="steerwatch", version=_version(), docs_url=None, redoc_url=None)
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    # ------------------------------------------------------------------ helpers
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
        if not isinstance(data, dict):
            raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            req = model_cls.model_validate(data)
        except ValidationError as exc:
            msg, param = _validation_message(exc)
            raise ApiError(400, msg, param=param) from None
        bad = req.unsupported()
        if bad:
            raise ApiError(400, bad, code="unsupported_parameter")
        if req.model != dep.served_name:
            raise ApiError(404, f"model {req.model!r} is not served here; this server serves {dep.served_name!r}",
                           param="model", code="model_not_found")
        return req

    def steering_of(req: Any, key: KeyPolicy | None) -> list:
        if req.steering is None:
            return dep.default_steering()
        if key is None or not key.steer:
            raise ApiError(403, "this API key may not set per-request steering (the policy gives the 'steer' "
                                "right per key)", type_="permission_error", param="steering", code="steering_forbidden")
        specs, total = [], 0.0
        for i, item in enumerate(req.steering):
            vp = dep.vector_policies.get(item.vector)
            if vp is None:
                raise ApiError(400, f"steering.{i}: unknown vector {item.vector!r}; this policy has "
                                    f"{', '.join(sorted(dep.vector_policies)) or 'none'}", param=f"steering.{i}.vector",
                               code="unknown_vector")
            if vp.op == "add" and abs(item.strength) > vp.max_abs_strength:
                raise ApiError(400, f"steering.{i}: strength {item.strength:g} for {item.vector!r} is out of bounds "
                                    f"(|strength| <= {vp.max_abs_strength:g})", param=f"steering.{i}.strength",
                               code="strength_out_of_bounds")
            try:
                spec = dep.spec(item.vector, item.strength, layers=item.layers)
                check_layers(spec.resolved_layers, dep.loaded.n_layers)
            except SteerwatchError as exc:
                raise ApiError(400, f"steering.{i}: {exc}", param=f"steering.{i}.layers") from None
            total += abs(item.strength) if vp.op == "add" else 0.0
            if not (vp.op == "add" and item.strength == 0.0):
                specs.append(spec)
        report = engine.guard_report
        if report is not None and report.distress is not None and specs:
            from .guard import check_request

            row = check_request(specs, report.distress, acknowledge=report.acknowledgement)
            if row is not None and row.level == "error":
                raise ApiError(400, f"steering refused by the policy guard: {row.message}", param="steering",
                               code="distress_steering")
        if total > pol.limits.max_combined_strength:
            raise ApiError(400, f"the steering strengths add up to {total:g}, above the policy's "
                                f"max_combined_strength {pol.limits.max_combined_strength:g}", param="steering",
                           code="strength_out_of_bounds")
        return specs

    def limits_of(req: Any, prompt_ids: list[int]) -> int:
        lim = pol.limits
        asked = req.requested_max_tokens()
        if asked is not None and asked > lim.max_tokens:
            raise ApiError(400, f"max_tokens {asked} exceeds this server's limit of {lim.max_tokens}",
                           param="max_tokens", code="too_many_tokens")
        if len(prompt_ids) > lim.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens, above this server's limit of "
                                f"{lim.max_prompt_tokens}", param="messages", code="prompt_too_long")
        return asked or lim.default_max_tokens

    def make_request(req: Any, key: KeyPolicy | None, prompt_ids: list[int], record: Any, endpoint: str) -> GenRequest:
        return GenRequest(prompt_ids=prompt_ids, prompt_record=record, endpoint=endpoint,
                          max_tokens=limits_of(req, prompt_ids), stop=req.stops(),
                          temperature=pol.limits.default_temperature if req.temperature is None else req.temperature,
                          top_p=req.top_p, seed=req.seed, steering=steering_of(req, key),
                          key_name=key.name if key else None, stream=req.stream)

    async def run(gen: GenRequest) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def sink(ev: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, ev)
            except RuntimeError:  # the loop is gone (server shutting down); the engine still stores
                pass

        gen.sink = sink
        engine.submit(gen)
        return q

    async def result_of(q: asyncio.Queue) -> GenResult:
        while True:
            kind, val = await q.get()
            if kind == "done":
                return val
            if kind == "error":
                raise ApiError(500, f"generation failed: {val}", type_="server_error")

    def usage(res: GenResult) -> dict[str, int]:
        return {"prompt_tokens": res.prompt_tokens, "completion_tokens": res.completion_tokens,
                "total_tokens": res.prompt_tokens + res.completion_tokens}

    def ext(res: GenResult, req: Any) -> dict[str, Any]:
        want = bool(req.watch and req.watch.token_scores)
        toks = None
        if want:
            n = max((len(v) for v in res.token_scores.values()), default=0)
            toks = [dep.loaded.tokenizer.decode([t]) for t in res.token_ids[:n]]
        out = res.extension(token_scores=want, tokens=toks)
        out["policy_sha256"] = dep.policy_sha256
        return out

    def sse(obj: Any) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def stream(q: asyncio.Queue, req: Any, gen: GenRequest, *, chat: bool) -> AsyncIterator[str]:
        created, cid = int(gen.created), ("chatcmpl-" if chat else "cmpl-") + gen.request_id[4:]
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(delta: Any, finish: str | None, extra: dict | None = None) -> dict:
            choice = ({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None} if chat
                      else {"index": 0, "text": delta, "finish_reason": finish, "logprobs": None})
            out = {"id": cid, "object": obj, "created": created, "model": dep.served_name, "choices": [choice]}
            if extra:
                out.update(extra)
            return out

        if chat:
            yield sse(chunk({"role": "assistant", "content": ""}, None))
        while True:
            kind, val = await q.get()
            if kind == "delta":
                yield sse(chunk({"content": val} if chat else val, None))
            elif kind == "error":
                yield sse({"error": {"message": f"generation failed: {val}", "type": "server_error"}})
                break
            else:
                res: GenResult = val
                yield sse(chunk({} if chat else "", res.finish_reason, {"steerwatch": ext(res, req)}))
                if req.stream_options and req.stream_options.include_usage:
                    yield sse({"id": cid, "object": obj, "created": created, "model": dep.served_name,
                               "choices": [], "usage": usage(res)})
                break
        yield "data: [DONE]\n\n"

    async def respond(gen: GenRequest, req: Any, *, chat: bool) -> Any:
        """Submit; stream the answer as SSE, or wait for it and return the OpenAI object."""
        q = await run(gen)
        if req.stream:
            return StreamingResponse(stream(q, req, gen, chat=chat), media_type="text/event-stream")
        res = await result_of(q)
        choice = ({"index": 0, "message": {"role": "assistant", "content": res.text}} if chat
                  else {"index": 0, "text": res.text})
        choice.update(finish_reason=res.finish_reason, logprobs=None)
        return {"id": ("chatcmpl-" if chat else "cmpl-") + gen.request_id[4:],
                "object": "chat.completion" if chat else "text_completion", "created": int(gen.created),
                "model": dep.served_name, "choices": [choice], "usage": usage(res), "steerwatch": ext(res, req)}

    # ------------------------------------------------------------------ endpoints
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": dep.served_name, "policy_sha256": dep.policy_sha256,
                "batches": engine.stats["batches"], "requests": engine.stats["requests"]}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        auth(request)
        return {"object": "list", "data": [{"id": dep.served_name, "object": "model", "created": 0,
                                            "owned_by": "steerwatch"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        key = auth(request)
        req: ChatRequest = await body_of(request, ChatRequest)
        try:
            msgs = _messages(req, pol.system_prompt)
            from ..chat import encode_prompt, render_messages

            prompt_ids = encode_prompt(dep.loaded.tokenizer, render_messages(dep.loaded.tokenizer, msgs))
        except (ValueError, TypeError) as exc:
            raise ApiError(400, f"messages could not be rendered: {exc}", param="messages") from None
        except Exception as exc:  # chat templates raise their own error types (jinja)
            raise ApiError(400, f"messages could not be rendered with the model's chat template: {exc}",
                           param="messages") from None
        return await respond(make_request(req, key, prompt_ids, msgs, "chat"), req, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        key = auth(request)
        req: CompletionRequest = await body_of(request, CompletionRequest)
        tok = dep.loaded.tokenizer
        p = req.prompt
        if isinstance(p, list) and p and isinstance(p[0], int):
            vocab = dep.loaded.model.config.vocab_size
            if any(not isinstance(t, int) or t < 0 or t >= vocab for t in p):
                raise ApiError(400, f"prompt token ids must be integers in [0, {vocab})", param="prompt")
            prompt_ids = [int(t) for t in p]
            record: Any = list(p)
        else:
            assert not isinstance(p, list) or isinstance(p[0], str)  # the schema allows str, [str] or [int]
            text = p[0] if isinstance(p, list) else p
            if not text:
                raise ApiError(400, "prompt must not be empty", param="prompt")
            prompt_ids = list(tok(text, add_special_tokens=True)["input_ids"])
            record = text
        if not prompt_ids:
            raise ApiError(400, "prompt must not be empty", param="prompt")
        return await respond(make_request(req, key, prompt_ids, record, "completion"), req, chat=False)

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

    return app


def _messages(req: ChatRequest, system: str | None) -> list[dict[str, Any]]:
    msgs = []
    for m in req.messages:
        d: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        for k in ("name", "tool_calls", "tool_call_id"):
            v = getattr(m, k)
            if v is not None:
                d[k] = v
        msgs.append(d)
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _version() -> str:
    from .. import __version__

    return __version__

