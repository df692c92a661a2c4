"""The serving engine: one worker thread owns the model; concurrent requests are batched into one
``generate()`` call, each row with its own steering (per-row hooks), and every row watched by the
policy's detectors.

Batching. The worker takes the first waiting request, then gathers more for up to
``limits.batch_wait_ms`` (at most ``limits.max_batch``) among requests with the same sampling
settings (greedy requests batch together; a request with a ``seed`` runs alone so that its seed
means something). Rows stop independently: at an end-of-turn token, at their own ``max_tokens``,
or at one of their stop strings; the batch ends when every row has stopped.

Per row, after generation: detector scores (rescored unsteered where the row's steering wrote
at or before a detector's layer, see :mod:`steerwatch.watch.live`), flags and actions (``block``
withholds the text: finish reason ``content_filter``), the degeneration guard (a steered
response whose repeated-4-gram share or unsteered perplexity passes the policy's bound is
regenerated unsteered or at lower strength, and the event recorded), and the store (flagged
responses, or all with ``store.store_all``). All of this happens in the worker, so a client that
disconnects mid-stream loses nothing.

Streaming. Deltas are sent as tokens arrive unless the policy has a ``block`` detector: then a
stream is held until the response has been checked (a blocked text is never sent). A streamed
response that degenerates cannot be taken back: the event is recorded and flagged instead.
"""
from __future__ import annotations

import math
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from .rows import RowState

if TYPE_CHECKING:  # pragma: no cover
    from ..steer import SteerSpec
    from .policy import Deployment
    from .store import EventStore

BLOCKED_TEXT = "[withheld by the deployment policy]"


@dataclass
class GenRequest:
    prompt_ids: list[int]
    prompt_record: Any  # messages or prompt text, for the store
    endpoint: str = "chat"  # chat | completion
    max_tokens: int = 128
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = None
    steering: list[SteerSpec] = field(default_factory=list)
    key_name: str | None = None
    stream: bool = False
    request_id: str = field(default_factory=lambda: "req-" + uuid.uuid4().hex[:24])
    created: float = field(default_factory=time.time)
    # called from the worker thread with ("delta", str), ("done", GenResult) or ("error", Exception)
    sink: Callable[[tuple[str, Any]], None] | None = None

    def batch_key(self) -> tuple:
        if self.seed is not None:
            return ("seed", self.request_id)
        if self.temperature <= 0:
            return ("greedy",)
        return ("sample", float(self.temperature), self.top_p)


@dataclass
class GenResult:
    request_id: str
    text: str
    finish_reason: str  # stop | length | content_filter
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    scores: dict[str, float | None]  # detector -> response score
    token_scores: dict[str, list[float]]
    thresholds: dict[str, float | None]
    flags: list[str]
    events: list[dict[str, Any]]
    steering: list[dict[str, Any]]
    batch_size: int = 1
    stored_id: int | None = None

    def extension(self, *, token_scores: bool = False, tokens: list[str] | None = None) -> dict[str, Any]:
        out = {"request_id": self.request_id, "steering": self.steering, "scores": self.scores,
               "thresholds": self.thresholds, "flags": self.flags, "events": self.events,
               "batch_size": self.batch_size, "stored_id": self.stored_id}
        if token_scores:
            out["token_scores"] = self.token_scores
            out["tokens"] = tokens or []
        return out


def describe_specs(specs: list[SteerSpec]) -> list[dict[str, Any]]:
    return [{"vector": s.vector.concept, "op": s.op, "strength": s.strength, "layers": s.resolved_layers,
             "positions": s.positions} for s in specs]


class Engine:
    """Owns the model and a worker thread; ``submit`` requests from any thread."""

    def __init__(self, deployment: Deployment, *, store: EventStore | None = None) -> None:
        from ..generation import _eos_ids
        from ..watch.live import Conditional

        self.dep = deployment
        self.store = store
        self.loaded = deployment.loaded
        self.eos = set(_eos_ids(self.loaded))
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
        self._stopping = threading.Event()
        self.stats = {"batches": 0, "requests": 0, "max_batch_seen": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="steerwatch-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def submit(self, req: GenRequest) -> None:
        if self._thread is None:
            raise SteerwatchError("the engine is not running; call engine.start() first")
        self._queue.put(req)

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
            batch = [first]
            key = first.batch_key()
            keep = [r for r in pending if r.batch_key() == key][: lim.max_batch - 1]
            batch += keep
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
                    batch.append(nxt)
                else:
                    pending.append(nxt)
            try:
                self.run_batch(batch)
            except Exception as exc:  # every request of a failed batch gets the error, the worker goes on
                for req in batch:
                    if req.sink is not None:
                        req.sink(("error", exc))

    # ------------------------------------------------------------------ one batch
    def run_batch(self, reqs: list[GenRequest]) -> list[GenResult]:
        """Generate, watch, guard and store one batch (synchronously, in the calling thread)."""
        self.stats["batches"] += 1
        self.stats["requests"] += len(reqs)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(reqs))
        rows = self._generate(reqs, [list(r.steering) for r in reqs])
        results = [self._finish_row(reqs[i], *rows[i], batch_size=len(reqs)) for i in range(len(reqs))]
        self._degeneration_guard(reqs, results)
        state = rows[0][4] if rows else None
        for i, (req, res) in enumerate(zip(reqs, results)):
            self._store(req, res)
            if req.sink is not None and state is not None:
                state.flush(i, res.text)  # the rest of the text (all of it when streams are held)
                req.sink(("done", res))
        return results

    def _generate(self, reqs: list[GenRequest], steering: list[list[SteerSpec]]) -> list[tuple]:
        from ..watch.live import generate_watched

        live = not self.hold_streams
        state = RowState(reqs, self.loaded.tokenizer, self.eos, live)
        temp = reqs[0].temperature
        gens = generate_watched(
            self.loaded, None, self.detectors, rows=steering if any(steering) else None,
            conditional=self.conditional, max_new_tokens=max(r.max_tokens for r in reqs), batch_size=len(reqs),
            do_sample=temp > 0, temperature=temp if temp > 0 else 1.0, top_p=reqs[0].top_p, seed=reqs[0].seed,
            prompt_ids=[r.prompt_ids for r in reqs], streamer=state, stopping_criteria=[state])
        return [(gens[i], state.tokens[i], state.reason[i], state.text[i], state) for i in range(len(reqs))]

    def _finish_row(self, req: GenRequest, gen: Any, toks: list[int], reason: str, text: str, state: RowState,
                    *, batch_size: int) -> GenResult:
        from ..watch.score import aggregate_scores

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
        scores, flags = {}, []
        for det in self.detectors:
            vals = token_scores[det.name]
            agg = "mean" if det.aggregate == "max_turn" else det.aggregate
            score = aggregate_scores(vals, agg) if vals else None
            scores[det.name] = score
            if (self.actions[det.name] in ("flag", "block") and det.threshold is not None
                    and score is not None and score > det.threshold):
                flags.append(det.name)
        events: list[dict[str, Any]] = []
        steering = describe_specs(req.steering)
        if self.conditional is not None and gen.triggered_at is not None:
            events.append({"type": "steer", "detector": self.conditional.trigger.name, "at_token": gen.triggered_at,
                           "steering": describe_specs(self.conditional.specs)})
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
        from ..evals.coherence import text_stats

        reasons, rep = [], text_stats(res.text)["repeat_4gram"]
        if rep > deg.max_repeat:
            reasons.append(f"repeated 4-gram share {rep:.2f} > {deg.max_repeat:g}")
        ppl = None
        if deg.max_ppl is not None:
            ppl = self._unsteered_ppl(req.prompt_ids, res.token_ids)
            if ppl > deg.max_ppl:
                reasons.append(f"unsteered perplexity {ppl:.1f} > {deg.max_ppl:g}")
        if not reasons:
            return None
        return {"type": "degeneration", "reasons": reasons, "repeat_share": rep, "ppl": ppl,
                "text": res.text}

    def _unsteered_ppl(self, prompt_ids: list[int], new_ids: list[int]) -> float:
        import torch

        ids = torch.tensor([list(prompt_ids) + list(new_ids)], dtype=torch.long, device=self.loaded.device)
        with torch.inference_mode():
            logits = self.loaded.model(input_ids=ids, use_cache=False).logits[0].float()
        p = len(prompt_ids)
        lp = torch.log_softmax(logits[p - 1:-1], dim=-1)
        tgt = ids[0, p:]
        nll = -lp.gather(1, tgt[:, None]).squeeze(1).mean().item()
        return float(math.exp(nll))

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
        saved = self.conditional
        if deg.action == "unsteered":
            self.conditional = None  # the back-off answer is fully unsteered
        try:
            rows = self._generate(sub, steering)
        finally:
            self.conditional = saved
        for k, i in enumerate(redo):
            old = results[i]
            new = self._finish_row(sub[k], *rows[k], batch_size=old.batch_size)
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
        res.stored_id = self.store.add({
            "request_id": res.request_id, "created": req.created, "key_name": req.key_name,
            "model": self.dep.served_name, "policy_sha256": self.dep.policy_sha256, "endpoint": req.endpoint,
            "flagged": flagged, "flags": res.flags, "events": res.events, "prompt": req.prompt_record,
            "response": res.text, "steering": res.steering, "scores": res.scores,
            "token_scores": res.token_scores,
            "tokens": [tok.decode([t]) for t in res.token_ids[:max(len(v) for v in res.token_scores.values())]]
            if res.token_scores else [],
        })
