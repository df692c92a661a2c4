"""Watching while generating, and conditional steering.

**Live scores.** Read hooks project every token's residual stream on the detectors during
``generate()``. A generated token's score is read when the token is fed back in, so every token
but the last one of a generation that hit ``max_new_tokens`` gets a live score (an end-of-turn
token ends the answer and is not scored, as in teacher-forced scoring).

**Steered and watched at once.** When steering writes at a layer at or before the layer a
detector reads, the live reading would mostly see the injection. Those detectors are rescored
from the generated text with one unsteered teacher-forced pass, so their scores measure what was
*said*, never the push; detectors reading upstream of every steered layer keep their live scores
(steering cannot reach them). ``WatchedGeneration.rescored`` lists which were rescored.

**Conditional steering.** :class:`Conditional` switches steering on per row when a calibrated
trigger detector fires: ``mode="token"`` from the first forward pass after the token whose
running-mean score (over the last ``window`` tokens) crosses the trigger threshold, and
``mode="prompt"`` for the whole answer when the prompt's mean score crosses the detector's
threshold. Tokens before the trigger are never touched.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from .detector import Detector
from .score import ProjectionHooks, aggregate_scores, score_conversations

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..steer import SteerSpec

MODES = ("token", "prompt")


@dataclass
class Conditional:
    trigger: Detector
    specs: list[SteerSpec]
    mode: str = "token"
    window: int | None = None  # default: the window the trigger was calibrated with

    def __post_init__(self) -> None:
        if self.window is None:
            self.window = int(self.trigger.calibration.get("trigger_window", 8))
        if self.mode not in MODES:
            raise SteerwatchError(f"unknown conditional mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.window < 1:
            raise SteerwatchError(f"window must be >= 1, got {self.window}")
        if self.threshold is None:
            raise SteerwatchError(f"the trigger detector {self.trigger.name!r} is not calibrated; run "
                                  "`steerwatch calibrate` on it first")

    @property
    def threshold(self) -> float | None:
        key = "prompt_threshold" if self.mode == "prompt" else "trigger_threshold"
        return self.trigger.calibration.get(key)


@dataclass
class WatchedGeneration:
    text: str
    new_ids: list[int]
    scores: dict[str, list[float]]  # per generated token (see module docstring for the last token)
    response: dict[str, float | None]  # aggregate per detector
    flags: list[str]
    triggered_at: int | None = None  # conditional steering: index of the generated token that fired it
    rescored: list[str] = field(default_factory=list)


class _Gate:
    def __init__(self, n: int) -> None:
        import torch

        self.value = torch.zeros(n)


class _Observer:
    """Per-batch context: projection hooks, plus the conditional trigger logic."""

    def __init__(self, loaded: LoadedModel, detectors: Sequence[Detector], idx: list[int], width: int,
                 conditional: Conditional | None, prompt_fired: list[bool]) -> None:
        self.loaded, self.detectors, self.idx, self.width = loaded, list(detectors), idx, width
        self.conditional = conditional
        self.all_dets = self.detectors + ([conditional.trigger] if conditional else [])
        self.hooks: ProjectionHooks | None = None
        self.cond_handle: Any = None
        self.gate = _Gate(len(idx))  # read only when there is a conditional
        self.pending: Any = None
        self.trigger_step: list[int | None] = [None] * len(idx)
        self.step = 0
        self.recent: list[Any] = []
        self._pre: Any = None
        self._post: Any = None
        if conditional and conditional.mode == "prompt":  # decided before generation: the whole answer
            for r, f in enumerate(prompt_fired):
                if f:
                    self.gate.value[r] = 1.0
                    self.trigger_step[r] = 0

    def __enter__(self) -> _Observer:
        from ..steer import attach

        self.hooks = ProjectionHooks(self.loaded, self.all_dets) if self.all_dets else None
        if self.conditional:
            self.cond_handle = attach(self.loaded, list(self.conditional.specs), gate=self.gate)
            # decide after each forward pass, apply from the next one: the trigger token's own pass
            # is never steered
            self._pre = self.loaded.model.register_forward_pre_hook(self._before_forward)
            self._post = self.loaded.model.register_forward_hook(self._after_forward)
        return self

    def _before_forward(self, *_a) -> None:
        if self.pending is not None:
            self.gate.value = self.pending
            self.pending = None

    def _after_forward(self, *_a) -> None:
        import torch

        cond, hooks = self.conditional, self.hooks
        assert cond is not None and hooks is not None  # registered only for conditional steering
        chunk = hooks.chunks[-1]
        j = len(self.all_dets) - 1
        layer = cond.trigger.layer
        col = hooks.by_layer[layer].index(j)
        s = chunk[layer][:, :, col]  # (batch, seq) scores of this call
        fired = torch.zeros(len(self.idx), dtype=torch.bool)
        if self.step > 0 and cond.mode == "token":
            self.recent.append(s[:, -1])
            win = torch.stack(self.recent[-(cond.window or 1):], dim=1).mean(1)
            fired = win > float(cond.threshold or 0.0)  # calibrated: __post_init__ checked it
        for r in range(len(self.idx)):
            if fired[r] and self.trigger_step[r] is None:
                self.trigger_step[r] = self.step - 1  # index of the generated token that fired
        if fired.any():
            self.pending = torch.maximum(self.gate.value, fired.float())
        self.step += 1

    def __exit__(self, *exc: object) -> None:
        if self.hooks:
            self.hooks.remove()
        if self.cond_handle is not None:
            self.cond_handle.remove()
        if self._pre is not None:
            self._pre.remove()
            self._post.remove()


def _steered_layers(specs: Sequence[SteerSpec]) -> list[int]:
    layers: list[int] = []
    for spec in specs:
        if spec.op == "add" and spec.strength == 0.0:
            continue
        n = spec.vector.n_model_layers or 10 ** 6
        layers += [(x + n if x < 0 else x) for x in spec.resolved_layers]
    return layers


def generate_watched(loaded: LoadedModel, prompts: Sequence[Any] | None, detectors: Sequence[Detector], *,
                     system: str | None = None, steer: Sequence[SteerSpec] | None = None,
                     rows: Sequence[Sequence[SteerSpec]] | None = None,
                     conditional: Conditional | None = None, max_new_tokens: int = 64, batch_size: int = 8,
                     do_sample: bool = False, temperature: float = 1.0, top_p: float | None = None,
                     seed: int | None = None, prompt_ids: Sequence[list[int]] | None = None,
                     streamer: Any = None, stopping_criteria: Any = None,
                     force: bool = False, progress: bool = False) -> list[WatchedGeneration]:
    """Generate with detectors watching (and optionally conditional steering); see the module
    docstring for how scores stay meaningful under steering.

    ``rows``: per-prompt steering (as in :func:`~steerwatch.generation.generate`); a row's
    detectors are rescored only when that row was steered at or before their layer.
    ``prompt_ids``: pre-tokenised prompts (raw completions); the conditional ``prompt`` mode needs
    chat prompts."""
    from ..generation import generate_ids, prompt_messages

    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        raise SteerwatchError(f"detector names must be unique, got {names}")
    for d in list(detectors) + ([conditional.trigger] if conditional else []):
        d.vector.check_model(loaded, force=force)
    n = len(prompt_ids) if prompt_ids is not None else len(prompts or [])
    observers: dict[int, _Observer] = {}
    fired = [False] * n
    if conditional and conditional.mode == "prompt":  # one teacher-forced pass over the prompts
        if prompt_ids is not None:
            raise SteerwatchError("conditional steering in 'prompt' mode needs chat prompts, not token ids")
        pre = score_conversations(loaded, [prompt_messages(p, system) for p in prompts or []],
                                  [conditional.trigger], force=force)
        thr = float(conditional.threshold or 0.0)  # calibrated: __post_init__ checked it
        fired = [(v := sc.prompt_score(conditional.trigger.name)) is not None and v > thr for sc in pre]

    def on_batch(idx: list[int], width: int) -> _Observer:
        obs = _Observer(loaded, detectors, idx, width, conditional, [fired[i] for i in idx])
        observers[len(observers)] = obs
        return obs

    gens = generate_ids(loaded, prompts, system=system, steer=steer, rows=rows, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, do_sample=do_sample, temperature=temperature, top_p=top_p,
                        seed=seed, force=force, progress=progress, on_batch=on_batch, prompt_ids=prompt_ids,
                        streamer=streamer, stopping_criteria=stopping_criteria)
    eos = _eos(loaded)
    results = []
    for g in gens:
        obs = observers[g.batch_index]
        proj = None
        if obs.hooks is not None and obs.hooks.chunks:
            proj = obs.hooks.joined()  # (batch, width + steps, n_all)
        n_real = _n_scored(g.new_ids, eos)
        scores: dict[str, list[float]] = {}
        for j, det in enumerate(detectors):
            if proj is None:
                scores[det.name] = []
            else:
                scores[det.name] = proj[g.row, obs.width:obs.width + n_real, j].tolist()
        text = loaded.tokenizer.decode(g.new_ids, skip_special_tokens=True).strip()
        trig = obs.trigger_step[g.row] if conditional else None
        results.append(WatchedGeneration(text=text, new_ids=g.new_ids, scores=scores, response={}, flags=[],
                                         triggered_at=trig))
    cond_specs = list(conditional.specs) if conditional else []
    todo: dict[int, list[Detector]] = {}
    for i in range(len(gens)):
        row_specs = list(steer or []) + (list(rows[i]) if rows is not None else [])
        if conditional and results[i].triggered_at is not None:
            row_specs += cond_specs
        steered = _steered_layers(row_specs)
        dets = [d for d in detectors if steered and d.layer >= min(steered)]
        if dets:
            todo[i] = dets
    if todo:  # one unsteered teacher-forced pass over prompt + answer ids, per detector set
        for dets in {tuple(d.name for d in v): v for v in todo.values()}.values():
            key = [d.name for d in dets]
            idx = [i for i, v in todo.items() if [d.name for d in v] == key]
            seqs = [(gens[i].prompt_ids, gens[i].new_ids[:_n_scored(gens[i].new_ids, eos)]) for i in idx]
            clean = score_continuations(loaded, seqs, dets, batch_size=batch_size)
            for i, sc in zip(idx, clean):
                for det in dets:
                    results[i].scores[det.name] = sc[det.name]
                results[i].rescored = key
    for w in results:
        for det in detectors:
            vals = w.scores[det.name]
            how = "mean" if det.aggregate == "max_turn" else det.aggregate
            w.response[det.name] = aggregate_scores(vals, how) if vals else None
            score = w.response[det.name]
            if det.threshold is not None and score is not None and score > det.threshold:
                w.flags.append(det.name)
    return results


def _n_scored(new_ids: list[int], eos: set[int]) -> int:
    """Generated tokens that get a score: all but a final end-of-turn token."""
    return len(new_ids) - (1 if new_ids and new_ids[-1] in eos else 0)


def score_continuations(loaded: LoadedModel, seqs: Sequence[tuple[list[int], list[int]]],
                        detectors: Sequence[Detector], *, batch_size: int = 8) -> list[dict[str, list[float]]]:
    """Teacher-forced (unsteered unless the caller attached steering) scores of the continuation
    tokens of each ``(prompt_ids, continuation_ids)``: the same positions a live reading scores."""
    import torch

    from .score import _StopForward

    out: list[dict[str, list[float]]] = [{} for _ in seqs]
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    hooks = ProjectionHooks(loaded, detectors, stop_after_last=True)
    try:
        with torch.inference_mode():
            for start in range(0, len(seqs), batch_size):
                idx = list(range(start, min(start + batch_size, len(seqs))))
                full = [list(seqs[i][0]) + list(seqs[i][1]) for i in idx]
                width = max(len(f) for f in full)
                ids = torch.full((len(idx), width), pad, dtype=torch.long)
                att = torch.zeros((len(idx), width), dtype=torch.long)
                for r, f in enumerate(full):
                    ids[r, :len(f)] = torch.tensor(f, dtype=torch.long)
                    att[r, :len(f)] = 1
                try:
                    loaded.model(input_ids=ids.to(loaded.device), attention_mask=att.to(loaded.device), use_cache=False)
                except _StopForward:
                    pass
                proj = hooks.take()  # (batch, width, n_det)
                for r, i in enumerate(idx):
                    p, c = len(seqs[i][0]), len(seqs[i][1])
                    out[i] = {d.name: proj[r, p:p + c, j].tolist() for j, d in enumerate(detectors)}
    finally:
        hooks.remove()
    return out


def _eos(loaded: LoadedModel) -> set[int]:
    from ..generation import _eos_ids

    return set(_eos_ids(loaded))
