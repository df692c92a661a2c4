"""Generation: steering, watching and conditional steering in one batched, left-padded path. The
only caller of Hugging Face ``model.generate()`` in steerwatch.

**Steering.** ``steer``: specs for every prompt; ``rows``: one list of specs per prompt (each prompt
steered its own way, still batched).

**Live scores.** Read hooks project every token's residual stream on the ``watch`` detectors
during generation. A generated token's score is read when the token is fed back in, so every token
but the last one of a generation that hit ``max_new_tokens`` gets a live score (an end-of-turn
token ends the answer and is not scored, as in teacher-forced scoring).

**Steered and watched at once.** When a row's steering writes at a layer at or before the layer a
detector reads, the live reading would mostly see the injection. Those detectors are rescored from
the generated tokens with one unsteered teacher-forced pass, so their scores measure what was
*said*, never the push; detectors reading upstream of every steered layer keep their live scores
(steering cannot reach them). ``Generation.rescored`` lists which were rescored.

**Conditional steering** (:class:`~steerwatch.runtime.conditional.Conditional`): the trigger's
specs switch on per row when it fires (see that module).

**Streaming and stopping.** ``on_token(tokens)`` is called after every decoding step with each
row's new token (rows that already ended get padding); it may return one bool per row, True where
that row should stop (the server's stop strings and per-request token limits).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..chat import Prompt, encode_chat, encode_raw, prompt_messages
from ..errors import SteerwatchError
from .conditional import Conditional, Gate
from .options import GenerationOptions

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..steer import SteerSpec
    from ..watch.detector import Detector

OnToken = Callable[[list[int]], "Sequence[bool] | None"]


@dataclass
class Generation:
    """One prompt's answer.

    ``new_ids``: the generated token ids up to and including an end-of-turn token (padding
    removed). ``scores``: per watching detector, one score per generated token but a final
    end-of-turn token (see the module docstring for a cut-off last token). ``response``: each
    detector's response score; ``flags``: the calibrated detectors whose threshold it crossed.
    ``triggered_at``: conditional steering, the index of the generated token that fired it."""

    text: str
    prompt_ids: list[int]
    new_ids: list[int]
    scores: dict[str, list[float]] = field(default_factory=dict)
    response: dict[str, float | None] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    triggered_at: int | None = None
    rescored: list[str] = field(default_factory=list)

    @property
    def incoherence(self) -> list[str]:
        """Why the text looks incoherent by its repetition and diversity statistics
        (:func:`steerwatch.watch.quality.incoherence`, no model pass); empty when it looks fine. A
        steered answer that fails usually means the strength is too high."""
        from ..watch.quality import incoherence

        return incoherence(self.text)

    def __repr__(self) -> str:
        """One line: the text clipped, each detector's response score and the flags, never the
        token lists."""
        text = self.text if len(self.text) <= 60 else self.text[:59] + "…"
        parts = [f"{len(self.new_ids)} tokens: {text!r}"]
        parts += [f"{k} {'-' if v is None else f'{v:+.3f}'}" for k, v in list(self.response.items())[:4]]
        if self.flags:
            parts.append("flagged: " + ", ".join(self.flags))
        if self.triggered_at is not None:
            parts.append(f"steering fired at token {self.triggered_at}")
        return "<Generation " + " · ".join(parts) + ">"

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{'-' if v is None else f'{v:+.3f}'}</td>"
                       f"<td>{'FLAGGED' if k in self.flags else ''}</td></tr>" for k, v in self.response.items())
        table = f"<table><tr><th>detector</th><th>score</th><th></th></tr>{rows}</table>" if rows else ""
        return f"<div><pre style='white-space:pre-wrap'>{html.escape(self.text)}</pre>{table}</div>"


class _TokenStream:
    """Hugging Face's streamer and stopping-criterion protocols around ``on_token``."""

    def __init__(self, on_token: OnToken, n: int) -> None:
        self.on_token, self.stop = on_token, [False] * n
        self._prompt_seen = False

    def put(self, value: Any) -> None:  # called once with the prompt ids, then once per step
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        got = self.on_token([int(t) for t in value.reshape(-1).tolist()])
        if got is not None:
            self.stop = [bool(x) for x in got]

    def end(self) -> None:
        pass

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.tensor(self.stop, dtype=torch.bool, device=input_ids.device)


class _StepProgress:
    """A stopping criterion that never stops: it shows the generated-token count of the running
    batch on the progress bar, so one long batch (the quickstart's 50 prompts) is not silent."""

    def __init__(self, bar: Any, limit: int) -> None:
        self.bar, self.limit, self.step = bar, limit, 0

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self.step += 1
        self.bar.set_postfix_str(f"token {self.step}/{self.limit}")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _steered_layers(specs: Sequence[SteerSpec]) -> list[int]:
    return [layer for spec in specs if not (spec.op == "add" and spec.strength == 0.0)
            for layer in spec.resolved_layers]


def _n_scored(new_ids: list[int], eos: set[int]) -> int:
    """Generated tokens that get a score: all but a final end-of-turn token."""
    return len(new_ids) - (1 if new_ids and new_ids[-1] in eos else 0)


def check_request(lm: LoadedModel, prompts: Sequence[Prompt] | None, prompt_ids: Sequence[Sequence[int]] | None,
                  opts: GenerationOptions, *, steer: Sequence[SteerSpec] | None,
                  rows: Sequence[Sequence[SteerSpec]] | None, watch: Sequence[Detector]
                  ) -> tuple[list[list[int]], list[Detector]]:
    """The checks every engine makes before generating: the prompts tokenised (chat template and
    system prompt) or the token ids taken as given, one steering list per prompt, unique detector
    names. Returns (token ids per prompt, detectors)."""
    if prompt_ids is not None:
        encoded = [[int(t) for t in p] for p in prompt_ids]
        if not encoded or any(not p for p in encoded):
            raise SteerwatchError("prompt_ids must be a non-empty list of non-empty token id lists")
        if prompts is not None and len(prompts) != len(encoded):
            raise SteerwatchError(f"{len(prompts)} prompts but {len(encoded)} prompt_ids; give one or the other")
    elif prompts is None:
        raise SteerwatchError("give prompts (or prompt_ids)")
    elif opts.raw:
        encoded = [encode_raw(lm.tokenizer, p) for p in prompts]  # type: ignore[arg-type]  # it checks
    else:
        encoded = [encode_chat(lm.tokenizer, p, system=opts.system) for p in prompts]
    n = len(encoded)
    if rows is not None and len(rows) != n:
        raise SteerwatchError(f"rows has {len(rows)} entries but there are {n} prompts; give one "
                              "list of steering specs per prompt")
    if steer is not None and rows is not None:
        raise SteerwatchError("give steer=... (all prompts) or rows=... (per prompt), not both")
    detectors = list(watch)
    names = [d.name for d in detectors]
    if len(set(names)) != len(names):
        raise SteerwatchError(f"detector names must be unique, got {names}")
    return encoded, detectors


def generate(lm: LoadedModel, prompts: Sequence[Prompt] | None, options: GenerationOptions | None = None, *,
             steer: Sequence[SteerSpec] | None = None, rows: Sequence[Sequence[SteerSpec]] | None = None,
             watch: Sequence[Detector] = (), conditional: Conditional | None = None,
             on_token: OnToken | None = None, prompt_ids: Sequence[Sequence[int]] | None = None,
             force: bool = False, progress: bool = False, desc: str = "generating") -> list[Generation]:
    """Generate one answer per prompt (a user message string or a list of chat messages), steered,
    watched and conditionally steered as asked (see the module docstring). ``progress``: a bar
    (titled ``desc``) over the prompts that also counts the running batch's generated tokens.

    ``prompt_ids``: already tokenised prompts instead of ``prompts`` (raw completions; the system
    prompt is then ignored and the conditional ``prompt`` mode is unavailable). ``force``: apply
    vectors built on other weights."""
    import torch
    from tqdm.auto import tqdm

    from ..batch import pad, pad_id
    from ..steer import attach
    from ..watch.score import ProjectionHooks, score_continuations, score_conversations

    opts = options or GenerationOptions()
    encoded, detectors = check_request(lm, prompts, prompt_ids, opts, steer=steer, rows=rows, watch=watch)
    n = len(encoded)
    for d in detectors + ([conditional.trigger] if conditional else []):
        d.vector.check_model(lm, force=force)

    fired = [False] * n
    if conditional is not None and conditional.mode == "prompt":  # one teacher-forced pass over the prompts
        if prompts is None or opts.raw:
            raise SteerwatchError("conditional steering in 'prompt' mode needs chat prompts, not token ids or raw "
                                  "text")
        pre = score_conversations(lm, [prompt_messages(p, opts.system) for p in prompts], [conditional.trigger],
                                  force=force)
        thr = float(conditional.threshold or 0.0)  # calibrated: Conditional checked it
        fired = [(v := sc.prompt_score(conditional.trigger.name)) is not None and v > thr for sc in pre]

    pad_token, eos = pad_id(lm.tokenizer), set(lm.eos_ids)
    gen_kwargs = opts.hf_kwargs(pad_token)
    all_dets = detectors + ([conditional.trigger] if conditional else [])
    if opts.seed is not None:
        torch.manual_seed(opts.seed)
    results: list[Generation] = []
    live: list[torch.Tensor | None] = []  # per row: (width + steps, n_dets) projections, or None
    triggered: list[int | None] = []
    bar = tqdm(total=n, desc=desc, disable=not progress, unit="prompt")
    for start in range(0, n, opts.batch_size):
        idx = list(range(start, min(start + opts.batch_size, n)))
        ids, att = pad([encoded[i] for i in idx], pad_token, side="left")  # the last prompt tokens line up
        width = ids.shape[1]
        kwargs = dict(gen_kwargs)
        criteria: list[Any] = []
        if on_token is not None:
            stream = _TokenStream(on_token, len(idx))
            kwargs["streamer"] = stream
            criteria.append(stream)
        if progress:
            criteria.append(_StepProgress(bar, opts.max_new_tokens))
        if criteria:
            kwargs["stopping_criteria"] = criteria
        with contextlib.ExitStack() as stack:
            if rows is not None:
                batch_rows = [list(rows[i]) for i in idx]
                if any(batch_rows):
                    stack.enter_context(attach(lm, rows=batch_rows, force=force))
            elif steer:
                stack.enter_context(attach(lm, list(steer), force=force))
            hooks = stack.enter_context(ProjectionHooks(lm, all_dets)) if all_dets else None
            gate = None
            if conditional is not None and hooks is not None:
                gate = stack.enter_context(Gate(lm, conditional, hooks, len(all_dets) - 1, [fired[i] for i in idx]))
            with torch.inference_mode():
                out = lm.model.generate(input_ids=ids.to(lm.device), attention_mask=att.to(lm.device), **kwargs)
            proj = hooks.joined() if hooks is not None and hooks.chunks else None  # (batch, width + steps, n)
        for r, i in enumerate(idx):
            new = out[r, width:].tolist()
            cut = next((j + 1 for j, t in enumerate(new) if t in eos), len(new))
            new_ids = new[:cut]
            results.append(Generation(text=lm.tokenizer.decode(new_ids, skip_special_tokens=True).strip(),
                                      prompt_ids=encoded[i], new_ids=new_ids))
            live.append(None if proj is None else proj[r, width:])
            triggered.append(gate.trigger_step[r] if gate is not None else None)
        bar.update(len(idx))
    bar.close()

    for g, proj_row, trig in zip(results, live, triggered):
        k = _n_scored(g.new_ids, eos)
        g.scores = {d.name: [] if proj_row is None else proj_row[:k, j].tolist() for j, d in enumerate(detectors)}
        g.triggered_at = trig
    # rescoring: per row, the detectors that read at or after a layer its steering wrote at
    todo: dict[int, list[Detector]] = {}
    for i, g in enumerate(results):
        specs = list(steer or []) + (list(rows[i]) if rows is not None else [])
        if conditional is not None and g.triggered_at is not None:
            specs += list(conditional.specs)
        steered = _steered_layers(specs)
        dets = [d for d in detectors if steered and d.layer >= min(steered)]
        if dets:
            todo[i] = dets
    for key in {tuple(d.name for d in v) for v in todo.values()}:  # one unsteered pass per detector set
        idx = [i for i, v in todo.items() if tuple(d.name for d in v) == key]
        dets = todo[idx[0]]
        seqs = [(results[i].prompt_ids, results[i].new_ids[:_n_scored(results[i].new_ids, eos)]) for i in idx]
        for i, sc in zip(idx, score_continuations(lm, seqs, dets, batch_size=opts.batch_size)):
            results[i].scores.update(sc)
            results[i].rescored = list(key)
    return judge_responses(results, detectors)


def judge_responses(results: list[Generation], detectors: Sequence[Detector]) -> list[Generation]:
    """Each detector's response score from its token scores, and the flags of the calibrated ones
    it crosses (in place; returns ``results``)."""
    for g in results:
        for det in detectors:
            g.response[det.name] = det.response(g.scores[det.name])
            if det.flagged(g.response[det.name]):
                g.flags.append(det.name)
    return results


def generate_text(lm: LoadedModel, prompts: Sequence[Prompt], *, system: str | None = None,
                  steer: Sequence[SteerSpec] | None = None, rows: Sequence[Sequence[SteerSpec]] | None = None,
                  max_new_tokens: int = 64, batch_size: int = 8, do_sample: bool = False,
                  temperature: float = 1.0, seed: int | None = None, force: bool = False,
                  progress: bool = False, desc: str = "generating") -> list[str]:
    """The answers' text only: :func:`generate` with its options as keywords (``steerwatch.generate``).

    ``steer``: specs applied to every prompt. ``rows``: one list of specs per prompt (each prompt
    steered its own way, still batched). Greedy by default, so results are reproducible."""
    opts = GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=do_sample,
                             temperature=temperature, seed=seed, system=system)
    return [g.text for g in generate(lm, prompts, opts, steer=steer, rows=rows, force=force, progress=progress,
                                     desc=desc)]
