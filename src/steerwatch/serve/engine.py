"""The serving engine: one worker thread owns the model; concurrent requests are batched into one
call of a runtime engine (:class:`steerwatch.runtime.Engine`; :class:`~steerwatch.runtime.HFEngine`
unless another backend is given), each row with its own steering (per-row hooks), and every row
watched by the policy's detectors.

Batching. The worker takes the first waiting request, then gathers more for up to
``limits.batch_wait_ms`` (at most ``limits.max_batch``) among requests with the same sampling
settings (greedy requests batch together; a request with a ``seed`` runs alone so that its seed
means something). Rows stop independently: at an end-of-turn token, at their own ``max_tokens``,
or at one of their stop strings; the batch ends when every row has stopped.

Per row, after generation: detector scores (rescored unsteered where the row's steering wrote
at or before a detector's layer, see :mod:`steerwatch.runtime.session`), flags and actions (``block``
withholds the text: finish reason ``content_filter``), the degeneration guard (a steered
response whose repeated-4-gram share or unsteered perplexity passes the policy's bound is
regenerated unsteered or at lower strength, and the event recorded), and the store (flagged
responses, or all with ``store.store_all``). All of this happens in the worker, so a client that
disconnects mid-stream loses nothing. A request whose client hung up before it was taken into a
batch is dropped without being generated; at most ``limits.max_queue`` requests wait (:class:`QueueFull`).

Streaming. Deltas are sent as tokens arrive unless the policy has a ``block`` detector: then a
stream is held until the response has been checked (a blocked text is never sent). A streamed
response that degenerates cannot be taken back: the event is recorded and flagged instead.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from .requests import BLOCKED_TEXT, GenRequest, GenResult, describe_specs
from .rows import RowState

if TYPE_CHECKING:  # pragma: no cover
    from ..policy.resolve import Deployment
    from ..runtime import Conditional, Generation
    from ..runtime import Engine as RuntimeEngine
    from ..steer import SteerSpec
    from .store import EventStore

log = logging.getLogger("steerwatch.serve")

# What a client is told when its event could not be stored. Never the exception: a store's error text
# carries the INSERT's parameters (other requests' prompts); the cause is logged under the request id.
STORE_FAILED = ("the event could not be stored; the answer is served and the failure counted in /health "
                "(logged on the server under request id {rid})")


class QueueFull(SteerwatchError):
    """The engine's queue holds ``limits.max_queue`` waiting requests: try again shortly."""


class Engine:
    """Owns the model and a worker thread; ``submit`` requests from any thread."""

    def __init__(self, deployment: Deployment, *, store: EventStore | None = None,
                 backend: RuntimeEngine | None = None) -> None:
        from ..runtime import Conditional, HFEngine

        self.dep = deployment
        self.store = store
        self.loaded = deployment.loaded
        self.backend: RuntimeEngine = backend if backend is not None else HFEngine(self.loaded)
        self.eos = set(self.loaded.eos_ids)
        self.detectors = [rd.detector for rd in deployment.detectors]
        self.actions = {rd.detector.name: rd.action for rd in deployment.detectors}
        self.conditional = None
        for rd in deployment.detectors:
            if rd.action == "steer":
                self.conditional = Conditional(trigger=rd.detector, specs=rd.steer, mode=rd.mode)
        self.hold_streams = any(a == "block" for a in self.actions.values())
        self.guard_report: Any = None  # set by build_engine when the policy guard ran
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.stats = {"batches": 0, "requests": 0, "max_batch_seen": 0, "failed": 0, "cancelled": 0, "stopped": 0,
                      "rejected": 0}
        self.waiting = 0  # submitted, not yet taken into a batch (bounded by limits.max_queue)
        self._count_lock = threading.Lock()
        self.store_health: dict[str, Any] = {"ok": True, "dropped_events": 0, "last_error_at": None}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Engine:
        """Start the batch workers: one, or as many as the runtime engine runs calls at once
        (``max_concurrent_calls``: the vLLM engine, whose calls share one continuous batch)."""
        if self._thread is None:
            n = max(1, int(getattr(self.backend, "max_concurrent_calls", 1) or 1))
            self._threads = [threading.Thread(target=self._loop, name=f"steerwatch-engine-{i}", daemon=True)
                             for i in range(n)]
            self._thread = self._threads[0]
            for t in self._threads:
                t.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            for _ in self._threads:
                self._queue.put(None)
            for t in self._threads:
                t.join(timeout=60)
            self._thread = None
            self._threads = []

    def submit(self, req: GenRequest) -> None:
        if self._thread is None:
            raise SteerwatchError("the engine is not running; call engine.start() first")
        self._validate(req)
        limit = self.dep.policy.limits.max_queue
        with self._count_lock:
            if self.waiting >= limit:
                self.stats["rejected"] += 1
                raise QueueFull(f"the server is busy: {self.waiting} requests are waiting (limits.max_queue "
                                f"{limit}); retry shortly")
            self.waiting += 1
        self._queue.put(req)

    def _validate(self, req: GenRequest) -> None:
        """What would fail a whole batch, refused for this request alone before it is queued (the HTTP
        layer's admission refuses these earlier, with a 400; this guards direct callers)."""
        vocab = int(self.loaded.model.config.vocab_size)
        if not req.prompt_ids or any(not 0 <= int(t) < vocab for t in req.prompt_ids):
            raise SteerwatchError(f"request {req.request_id}: prompt_ids must be a non-empty list of token ids "
                                  f"in [0, {vocab})")
        if req.max_tokens < 1:
            raise SteerwatchError(f"request {req.request_id}: max_tokens must be at least 1")
        ctx = self.loaded.context_length
        if ctx is not None and len(req.prompt_ids) + req.max_tokens > ctx:
            raise SteerwatchError(f"request {req.request_id}: {len(req.prompt_ids)} prompt tokens and max_tokens "
                                  f"{req.max_tokens} exceed the model's context of {ctx} tokens")

    def _take(self, req: GenRequest) -> bool:
        """A waiting request leaves the queue; False when its client hung up (it is dropped, not generated)."""
        with self._count_lock:
            self.waiting -= 1
            if req.cancelled:
                self.stats["cancelled"] += 1
        if req.cancelled:
            req.answered = True
            log.info("request %s dropped before generation: its client hung up", req.request_id)
            return False
        return True

    def _loop(self) -> None:
        lim = self.dep.policy.limits
        pending: list[GenRequest] = []
        while not self._stopping.is_set():
            if pending:
                first = pending.pop(0)
            else:
                got = self._queue.get()
                if got is None:
                    break
                first = got
            if not self._take(first):
                continue
            batch = [first]
            key = first.batch_key()
            keep = [r for r in pending if r.batch_key() == key][: lim.max_batch - 1]
            batch += [r for r in keep if self._take(r)]
            pending = [r for r in pending if r not in keep]
            deadline = time.monotonic() + lim.batch_wait_ms / 1000.0
            while len(batch) < lim.max_batch:
                left = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=max(left, 0.0)) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._stopping.set()
                    break
                if nxt.batch_key() == key:
                    if self._take(nxt):
                        batch.append(nxt)
                else:
                    pending.append(nxt)
            self._run_isolated(batch)

    def _run_isolated(self, batch: list[GenRequest]) -> None:
        """Run a batch; when it fails, retry each of its requests alone, so that one bad row fails only
        itself. A request that fails alone gets ``("error", request_id)``: never the exception, whose text
        may carry another request's data; the cause is logged with the request id."""
        try:
            self.run_batch(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            log.warning("a batch of %d requests failed (%s: %s); retrying each alone: %s", len(batch),
                        type(exc).__name__, exc, ", ".join(r.request_id for r in batch))
        for req in batch:
            if req.answered:
                continue
            if req.streamed:  # text already sent: a retry would send it twice
                self._fail(req, None)
                continue
            try:
                self.run_batch([req])
            except Exception as exc:
                self._fail(req, exc)

    def _fail(self, req: GenRequest, exc: BaseException | None) -> None:
        with self._count_lock:
            self.stats["failed"] += 1
        if exc is None:
            log.error("request %s failed: its batch failed after part of its stream was sent", req.request_id)
        else:
            log.error("request %s failed", req.request_id, exc_info=(type(exc), exc, exc.__traceback__))
        if req.sink is not None and not req.answered:
            req.answered = True
            req.sink(("error", req.request_id))

    # ------------------------------------------------------------------ one batch
    def run_batch(self, reqs: list[GenRequest]) -> list[GenResult]:
        """Generate, watch, guard and store one batch (synchronously, in the calling thread)."""
        with self._count_lock:
            self.stats["batches"] += 1
            self.stats["requests"] += len(reqs)
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(reqs))
        gens, state = self._generate(reqs, [list(r.steering) for r in reqs], self.conditional)
        with self._count_lock:
            self.stats["stopped"] += state.reason.count("cancelled")  # clients that hung up mid-generation
        results = [self._finish_row(req, gen, state, i, batch_size=len(reqs), conditional=self.conditional)
                   for i, (req, gen) in enumerate(zip(reqs, gens))]
        self._degeneration_guard(reqs, results)
        for i, (req, res) in enumerate(zip(reqs, results)):
            self._store(req, res)
            if req.sink is not None and not req.answered:
                state.flush(i, res.text)  # the rest of the text (all of it when streams are held)
                req.answered = True
                req.sink(("done", res))
        return results

    def _generate(self, reqs: list[GenRequest], steering: list[list[SteerSpec]],
                  conditional: Conditional | None) -> tuple[list[Generation], RowState]:
        """One batch through the runtime: each row its own steering, stopping and streaming."""
        from ..runtime import GenerationOptions

        state = RowState(reqs, self.loaded.tokenizer, self.eos, live=not self.hold_streams)
        temp = reqs[0].temperature  # a batch shares its sampling settings (GenRequest.batch_key)
        opts = GenerationOptions(max_new_tokens=max(r.max_tokens for r in reqs), batch_size=len(reqs),
                                 do_sample=temp > 0, temperature=temp if temp > 0 else 1.0, top_p=reqs[0].top_p,
                                 seed=reqs[0].seed)
        gens = self.backend.generate(None, opts, rows=steering if any(steering) else None, watch=self.detectors,
                                     conditional=conditional, on_token=state.on_token,
                                     prompt_ids=[r.prompt_ids for r in reqs])
        return gens, state

    def _finish_row(self, req: GenRequest, gen: Generation, state: RowState, r: int, *, batch_size: int,
                    conditional: Conditional | None) -> GenResult:
        toks, reason, text = state.tokens[r], state.reason[r], state.text[r]
        n_tok = len(toks)
        n_scored = n_tok - (1 if toks and toks[-1] in self.eos else 0)
        if reason == "stop" and req.stop and text != self.loaded.tokenizer.decode(toks, skip_special_tokens=True):
            # cut at a stop string: score the tokens whose text was kept
            keep = 0
            for j in range(1, n_scored + 1):
                if len(self.loaded.tokenizer.decode(toks[:j], skip_special_tokens=True)) > len(text):
                    break
                keep = j
            n_scored = keep
        token_scores = {name: vals[:n_scored] for name, vals in gen.scores.items()}
        scores: dict[str, float | None] = {}
        flags = []
        for det in self.detectors:
            scores[det.name] = det.response(token_scores[det.name])
            if self.actions[det.name] in ("flag", "block") and det.flagged(scores[det.name]):
                flags.append(det.name)
        events: list[dict[str, Any]] = []
        steering = describe_specs(req.steering)
        if conditional is not None and gen.triggered_at is not None:
            events.append({"type": "steer", "detector": conditional.trigger.name, "at_token": gen.triggered_at,
                           "steering": describe_specs(conditional.specs)})
        if gen.rescored:
            events.append({"type": "rescored", "detectors": gen.rescored})
        blocked = [f for f in flags if self.actions.get(f) == "block"]
        if blocked:
            events.append({"type": "block", "detectors": blocked})
            text, reason = BLOCKED_TEXT, "content_filter"
        completion_tokens = n_tok - (1 if reason == "stop" and toks and toks[-1] in self.eos else 0)
        return GenResult(request_id=req.request_id, text=text, finish_reason=reason,
                         prompt_tokens=len(req.prompt_ids), completion_tokens=completion_tokens, token_ids=toks,
                         scores=scores, token_scores=token_scores,
                         thresholds={d.name: d.threshold for d in self.detectors}, flags=flags, events=events,
                         steering=steering, batch_size=batch_size)

    # ------------------------------------------------------------------ degeneration guard
    def _degenerate(self, req: GenRequest, res: GenResult, steered: bool) -> dict[str, Any] | None:
        deg = self.dep.policy.degeneration
        if not deg.enabled or not steered or res.finish_reason == "content_filter":
            return None
        if res.completion_tokens < deg.min_tokens:
            return None
        from ..watch.quality import text_stats

        reasons, rep = [], text_stats(res.text)["repeat_4gram"]
        if rep > deg.max_repeat:
            reasons.append(f"repeated 4-gram share {rep:.2f} > {deg.max_repeat:g}")
        ppl = None
        if deg.max_ppl is not None:
            from ..watch.quality import continuation_ppl

            # the Hugging Face copy, shared with a vLLM engine's hooks: one user at a time
            with getattr(self.backend, "hf_lock", None) or contextlib.nullcontext():
                ppl = continuation_ppl(self.loaded, req.prompt_ids, res.token_ids)
            if ppl > deg.max_ppl:
                reasons.append(f"unsteered perplexity {ppl:.1f} > {deg.max_ppl:g}")
        if not reasons:
            return None
        return {"type": "degeneration", "reasons": reasons, "repeat_share": rep, "ppl": ppl,
                "text": res.text}

    def _degeneration_guard(self, reqs: list[GenRequest], results: list[GenResult]) -> None:
        deg = self.dep.policy.degeneration
        redo: list[int] = []
        for i, (req, res) in enumerate(zip(reqs, results)):
            steered = bool(req.steering) or any(e["type"] == "steer" for e in res.events)
            ev = self._degenerate(req, res, steered)
            if ev is None:
                continue
            res.flags.append("degeneration")
            if req.stream and not self.hold_streams:
                ev["backoff"] = "none: the response was already streamed"
            elif deg.action == "record":
                ev["backoff"] = "none: policy action is record"
            else:
                redo.append(i)
                ev["backoff"] = "unsteered" if deg.action == "unsteered" else f"strength x{deg.lower_factor:g}"
            res.events.append(ev)
        if not redo:
            return
        from dataclasses import replace

        sub = [reqs[i] for i in redo]
        steering: list[list[SteerSpec]]
        if deg.action == "unsteered":
            steering = [[] for _ in sub]
        else:
            steering = [[replace(s, strength=s.strength * deg.lower_factor) if s.op == "add" else s
                         for s in r.steering] for r in sub]
        conditional = None if deg.action == "unsteered" else self.conditional  # unsteered: fully unsteered
        gens, state = self._generate(sub, steering, conditional)
        for k, i in enumerate(redo):
            old = results[i]
            new = self._finish_row(sub[k], gens[k], state, k, batch_size=old.batch_size, conditional=conditional)
            new.steering = describe_specs(steering[k])
            new.events = old.events + [e for e in new.events if e["type"] != "rescored"]
            new.flags = sorted(set(new.flags) | {"degeneration"})
            results[i] = new

    # ------------------------------------------------------------------ store
    def _store(self, req: GenRequest, res: GenResult) -> None:
        flagged = bool(res.flags) or any(e["type"] in ("block", "degeneration", "steer") for e in res.events)
        if self.store is None or not (flagged or self.dep.policy.store.store_all):
            return
        tok = self.loaded.tokenizer
        row = {
            "request_id": res.request_id, "created": req.created, "key_name": req.key_name,
            "model": self.dep.served_name, "policy_sha256": self.dep.policy_sha256, "endpoint": req.endpoint,
            "flagged": flagged, "flags": res.flags, "events": res.events, "prompt": req.prompt_record,
            "response": res.text, "steering": res.steering, "scores": res.scores,
            "thresholds": res.thresholds, "token_scores": res.token_scores,
            "tokens": [tok.decode([t]) for t in res.token_ids[:max(len(v) for v in res.token_scores.values())]]
            if res.token_scores else [],
        }
        try:
            res.stored_id = self.store.add(row)
        except Exception as exc:  # served anyway, and said: the client, /health and the log all know
            self.store_health.update(ok=False, last_error_at=time.time())
            self.store_health["dropped_events"] += 1
            res.store_error = STORE_FAILED.format(rid=req.request_id)
            log.error("request %s: its event could not be stored (dropped event %d)", req.request_id,
                      self.store_health["dropped_events"], exc_info=(type(exc), exc, exc.__traceback__))
            return
        if not self.store_health["ok"]:
            self.store_health["ok"] = True  # the store works again; dropped_events keeps the count
