"""The part of the vLLM engine that runs inside vLLM's worker processes.

vLLM loads this class as its ``worker_extension_cls`` (a documented engine argument): its methods
are mixed into every worker and called from the engine process with ``LLM.collective_rpc``. The
extension installs ordinary torch forward hooks (public torch API; no vLLM class is patched):

* a forward pre-hook on the model reads, once per step, which tokens of the flattened batch belong
  to which request (``input_batch.req_ids`` and ``query_start_loc``, the layout vLLM's own
  attention metadata is built from) and each token's position;
* a forward hook on every decoder layer applies each request's steering to its own tokens and
  reads its detectors' projections.

A request asks for steering and watching in ``SamplingParams.extra_args["steerwatch"]``:
``{"tag": str, "plan": key | None, "watch": [detector keys], "watch_from": position}``. Plans
(compiled steering: per layer, projections then adds, by position class) and detectors are sent
once with :meth:`SteerwatchWorker.steerwatch_register`; scores come back with
:meth:`SteerwatchWorker.steerwatch_take`.

vLLM keeps the residual stream split between layers as ``(hidden_states, residual)``; their sum is
the block output a Hugging Face hook sees. Adds go into ``residual``; projections and readings use
the sum. A token is a *prompt* position when its position is below the request's prompt length,
else *generated* (the Hugging Face engine's ``prompt`` / ``generated`` phases).

The hooks run in Python at every step, so the engine runs vLLM eagerly (``enforce_eager=True``:
no CUDA graphs, no torch.compile); :meth:`steerwatch_install` refuses a compiled engine.

This module imports nothing from steerwatch but the standard library and torch: it runs in the
worker, where only the model matters.
"""
from __future__ import annotations

import re
from typing import Any

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)$")
POSITION_CLASSES = ("all", "prompt", "generated")
SUPPORTED = "0.32"


class SteerwatchWorker:
    """vLLM worker extension: per-request steering and watching through torch hooks."""

    # ------------------------------------------------------------------ set-up (collective_rpc)
    def steerwatch_install(self) -> dict[str, Any]:
        """Register the hooks once. Returns the model's layer count, hidden size and dtype, which
        the engine checks against the vectors and the Hugging Face copy of the model."""
        if getattr(self, "_sw_installed", False):
            return dict(self._sw_info)
        runner = self.model_runner  # type: ignore[attr-defined]
        missing = [name for name in ("model", "input_batch", "query_start_loc", "requests")
                   if not hasattr(runner, name)]
        if missing:
            raise RuntimeError(
                f"steerwatch's vLLM engine needs the model runner's {', '.join(missing)}, which this vLLM "
                f"does not have; it is tested with vLLM {SUPPORTED}.x")
        comp = runner.vllm_config.compilation_config
        mode = int(getattr(comp, "mode", 0) or 0)
        if mode != 0 or not runner.model_config.enforce_eager:
            raise RuntimeError(
                "steerwatch's vLLM engine steers with Python hooks, which torch.compile and CUDA graphs "
                "would skip; start vLLM with enforce_eager=True (the engine does this by default)")
        model = runner.model
        layers: dict[int, Any] = {}
        for name, mod in model.named_modules():
            m = _LAYER.search(name)
            if m and type(mod).__name__ != "PPMissingLayer" and hasattr(mod, "forward"):
                layers.setdefault(int(m.group(1)), mod)
        if not layers:
            raise RuntimeError(f"found no decoder layers ('layers.N') in {type(model).__name__}")
        cfg = runner.model_config.hf_config
        text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        self._sw_plans: dict[str, dict[int, dict[str, Any]]] = {}
        self._sw_dets: dict[str, tuple[int, Any]] = {}
        self._sw_scores: dict[str, dict[str, dict[int, float]]] = {}
        self._sw_trig: dict[str, dict[str, Any]] = {}  # conditional steering: tag -> trigger scores, fired_at
        self._sw_cfg_cache: dict[str, dict[str, Any] | None] = {}
        self._sw_step: dict[int, dict[str, Any]] = {}
        self._sw_handles = [model.register_forward_pre_hook(self._sw_pre, with_kwargs=True)]
        for idx, mod in layers.items():
            self._sw_handles.append(mod.register_forward_hook(self._sw_layer_hook(idx)))
        param = next(model.parameters())
        self._sw_device, self._sw_dtype = param.device, runner.model_config.dtype
        self._sw_info: dict[str, Any] = {"n_layers": int(text.num_hidden_layers), "hidden_size": int(text.hidden_size),
                         "hooked": sorted(layers), "dtype": str(runner.model_config.dtype).replace("torch.", ""),
                         "layer_class": type(next(iter(layers.values()))).__name__}
        self._sw_installed = True
        return self._sw_info

    def steerwatch_register(self, plans: dict[str, list[dict[str, Any]]],
                            detectors: dict[str, dict[str, Any]]) -> int:
        """Store compiled steering plans and detectors by key. A plan is a list of operations
        ``{"layer", "kind": "proj" | "add", "pos", "vec": list[float], "target": float}`` in the
        order they act (projections in order, then adds); a detector ``{"layer", "unit"}``."""
        import torch

        dev, dt = self._sw_device, self._sw_dtype
        for key, ops in plans.items():
            plan: dict[int, dict[str, Any]] = {}
            for op in ops:
                layer = plan.setdefault(int(op["layer"]), {"proj": [], "add": {}})
                vec = torch.tensor(op["vec"], dtype=torch.float32).to(device=dev, dtype=dt)
                if op["kind"] == "proj":
                    layer["proj"].append((op["pos"], vec, float(op["target"])))
                else:
                    prev = layer["add"].get(op["pos"])
                    layer["add"][op["pos"]] = vec if prev is None else prev + vec
            self._sw_plans[key] = plan
        for key, det in detectors.items():
            unit = torch.tensor(det["unit"], dtype=torch.float32).to(device=dev, dtype=dt)
            self._sw_dets[key] = (int(det["layer"]), unit)
        return len(self._sw_plans) + len(self._sw_dets)

    def steerwatch_take(self, tags: list[str]) -> dict[str, dict[str, Any]]:
        """The recorded scores of these requests (``{tag: {"scores": {detector key: {position:
        score}}, "triggered_at": index | None}}``), forgotten here once taken."""
        out: dict[str, dict[str, Any]] = {}
        for tag in tags:
            trig = self._sw_trig.pop(tag, None)
            out[tag] = {"scores": self._sw_scores.pop(tag, {}),
                        "triggered_at": None if trig is None else trig["fired_at"]}
        return out

    # ------------------------------------------------------------------ per step
    def _sw_cfg(self, runner: Any, req_id: str) -> dict[str, Any] | None:
        if req_id in self._sw_cfg_cache:
            return self._sw_cfg_cache[req_id]
        state = runner.requests.get(req_id)
        params = getattr(state, "sampling_params", None)
        raw = (getattr(params, "extra_args", None) or {}).get("steerwatch")
        cfg = None
        if raw:
            plan = raw.get("plan")
            if plan is not None and plan not in self._sw_plans:
                raise RuntimeError(f"steerwatch: request {req_id} names steering plan {plan!r}, which was never "
                                   "registered with this worker")
            watch = [k for k in raw.get("watch") or [] if k in self._sw_dets]
            cond = raw.get("cond")
            if cond is not None and (cond["plan"] not in self._sw_plans or cond["det"] not in self._sw_dets):
                raise RuntimeError(f"steerwatch: request {req_id} names a conditional plan or trigger that was never "
                                   "registered with this worker")
            cfg = {"tag": str(raw["tag"]), "plan": plan, "watch": watch, "cond": cond,
                   "prompt_len": len(state.prompt_token_ids or []),
                   "watch_from": int(raw.get("watch_from", len(state.prompt_token_ids or [])))}
            if cond is not None:
                self._sw_trig.setdefault(cfg["tag"], {"scores": {}, "fired_at": None})
        if len(self._sw_cfg_cache) > 4 * len(runner.requests) + 256:  # forget finished requests
            live = set(runner.requests)
            for rid in [r for r in self._sw_cfg_cache if r not in live]:
                del self._sw_cfg_cache[rid]
        self._sw_cfg_cache[req_id] = cfg
        return cfg

    def _sw_pre(self, _mod: Any, args: tuple, kwargs: dict) -> None:
        """Map the step's tokens to requests: per layer, which token rows each operation and each
        detector touches."""
        import torch

        self._sw_step = {}
        runner = self.model_runner  # type: ignore[attr-defined]
        positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
        n = int(runner.input_batch.num_reqs)
        if positions is None or n == 0 or not (self._sw_plans or self._sw_dets):
            return
        req_ids = list(runner.input_batch.req_ids)[:n]
        cfgs = [self._sw_cfg(runner, rid) for rid in req_ids]
        if not any(cfgs):
            return
        qsl = [int(x) for x in runner.query_start_loc.np[: n + 1]]
        pos = positions.reshape(-1).tolist()
        # (role, plan key) -> position class -> token rows; role 0: the request's steering, 1: its
        # conditional steering once the trigger fired (applied after the readings, as the HF gate is)
        rows: dict[tuple[int, str], dict[str, list[int]]] = {}
        # layer -> [(what, det key, tag, token rows, positions, prompt length, cond)]
        reads: dict[int, list[tuple[str, str, str, list[int], list[int], int, Any]]] = {}
        for cfg, a, b in zip(cfgs, qsl[:-1], qsl[1:]):
            if cfg is None or b <= a:
                continue
            plans = [(0, cfg["plan"])] if cfg["plan"] is not None else []
            cond = cfg["cond"]
            trig = self._sw_trig.get(cfg["tag"]) if cond is not None else None
            if trig is not None and trig["fired_at"] is not None:
                plans.append((1, cond["plan"]))
            for role_plan in plans:
                by = rows.setdefault(role_plan, {"all": [], "prompt": [], "generated": []})
                for t in range(a, b):
                    by["all"].append(t)
                    by["prompt" if pos[t] < cfg["prompt_len"] else "generated"].append(t)
            if cfg["watch"]:
                keep = [t for t in range(a, b) if pos[t] >= cfg["watch_from"]]
                if keep:
                    for key in cfg["watch"]:
                        layer = self._sw_dets[key][0]
                        reads.setdefault(layer, []).append(("watch", key, cfg["tag"], keep, [pos[t] for t in keep],
                                                            cfg["prompt_len"], None))
            if trig is not None and trig["fired_at"] is None:
                keep = [t for t in range(a, b) if pos[t] >= cfg["prompt_len"]]
                if keep:
                    layer = self._sw_dets[cond["det"]][0]
                    reads.setdefault(layer, []).append(("trigger", cond["det"], cfg["tag"], keep,
                                                        [pos[t] for t in keep], cfg["prompt_len"], cond))
        dev = self._sw_device
        step: dict[int, dict[str, Any]] = {}
        for (role, key), by in sorted(rows.items(), key=lambda kv: kv[0][0]):
            idx = {c: torch.tensor(v, dtype=torch.long, device=dev) for c, v in by.items() if v}
            for layer, ops in self._sw_plans[key].items():
                slot = step.setdefault(layer, {"edits": ([], []), "reads": []})
                for c in POSITION_CLASSES:  # projections: 'all' first, then the token's own phase
                    for pc, vec, target in ops["proj"]:
                        if pc == c and c in idx:
                            slot["edits"][role].append(("proj", idx[c], vec, target))
                for c in POSITION_CLASSES:
                    vec = ops["add"].get(c)
                    if vec is not None and c in idx:
                        slot["edits"][role].append(("add", idx[c], vec, 0.0))
        for layer, items in reads.items():
            slot = step.setdefault(layer, {"edits": ([], []), "reads": []})
            for what, key, tag, keep, kpos, plen, cond in items:
                slot["reads"].append((what, key, tag, torch.tensor(keep, dtype=torch.long, device=dev), kpos, plen,
                                      cond))
        self._sw_step = step

    def _sw_fire(self, tag: str, cond: dict[str, Any], prompt_len: int, kpos: list[int], vals: list[float]) -> None:
        """The trigger's running mean over the last ``window`` generated tokens; the first token where
        it crosses the threshold fires it (steering from the next step on)."""
        trig = self._sw_trig[tag]
        got = trig["scores"]
        w = int(cond["window"])
        for p, v in sorted(zip(kpos, vals)):
            got[p] = v
            if trig["fired_at"] is None:
                win = [got[q] for q in range(max(prompt_len, p - w + 1), p + 1) if q in got]
                if sum(win) / len(win) > float(cond["threshold"]):
                    trig["fired_at"] = p - prompt_len

    def _sw_layer_hook(self, layer: int):
        def hook(_mod: Any, _args: Any, output: Any) -> Any:
            work = self._sw_step.get(layer)
            if not work:
                return None
            # (hidden_states, residual) in vLLM's decoder layers; a single tensor elsewhere
            split = isinstance(output, tuple) and len(output) >= 2 and output[1] is not None
            hs = output[0] if isinstance(output, tuple) else output
            res: Any = output[1] if split else None
            base, late = work["edits"]
            if base or late:
                target_t = res.clone() if split else hs.clone()
                if split:
                    res = target_t
                else:
                    hs = target_t

            def edit(ops: list) -> None:
                for kind, idx, vec, target in ops:
                    if kind == "add":
                        target_t.index_add_(0, idx, vec.expand(idx.numel(), -1))
                    else:
                        total = hs[idx] + res[idx] if split else hs[idx]
                        coef = total @ vec
                        target_t.index_add_(0, idx, (target - coef)[:, None] * vec[None, :])

            edit(base)
            for what, key, tag, idx, kpos, plen, cond in work["reads"]:
                total = hs[idx] + res[idx] if split else hs[idx]
                vals = (total.float() @ self._sw_dets[key][1].float()).tolist()
                if what == "trigger":
                    self._sw_fire(tag, cond, plen, kpos, vals)
                    continue
                store = self._sw_scores.setdefault(tag, {}).setdefault(key, {})
                for p, v in zip(kpos, vals):
                    store[p] = v
            edit(late)
            if not (base or late):
                return None
            if split:
                return (hs, res, *output[2:])
            return (hs, *output[1:]) if isinstance(output, tuple) else hs
        return hook
