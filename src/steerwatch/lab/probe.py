"""An on-policy cheating probe: a direction fitted on the model's *own* lab answers (special-cased
or not, cheated or not), read over the answer's tokens.

Each episode's conversation is rebuilt with the lab's own prompt builder (:mod:`.prompts`: the
setting's instruction, in-context demonstrations, system prompt, and for agentic episodes the
earlier replies and the test runner's feedback), the final answer appended, and the model's
residual stream read over the answer's tokens, unsteered (the answer text is what it is, whatever
steering wrote it). Per layer and per method (``mean_diff``, ``lda``, ``logistic``, as the
deception probes) a direction is fitted on the mean answer activation (the ``mean`` aggregate) or
on the last answer token's (``last``); layer, method and aggregate are chosen by cross-validation
grouped by problem (one HumanEval problem never sits on both sides of a fold), on dev episodes
only. The result is an ordinary steerwatch vector (concept ``cheating``, high = cheating) and a
detector that ``steerwatch watch`` and :func:`score_episodes` read; ``lab report`` scores it
against the execution labels once the episodes carry its scores.

The probe is fitted and scored on the impossible episodes (the population ``lab report`` scores
detectors on). Episodes from the test split are refused for fitting unless explicitly allowed.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..chat import Encoded
    from ..models import LoadedModel
    from ..vector import Vector
    from ..watch.detector import Detector
    from .tasks import Task

LABELS = ("special_cased", "cheated")
PROBE_AGGREGATES = ("mean", "last")  # linear in the activations: the fit reads exactly what the detector scores
CODING_SOURCE = "lab:coding (HumanEval original tasks, dev split, reference solutions)"


# ---------------------------------------------------------------------------------------- episodes
def dedupe(episodes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Episodes once each: the same setting, configuration, task and attempt in two files (a stage
    that reran a setting another stage ran) count once."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for e in episodes:
        key = (e.get("setting"), e.get("config"), e["task"], e.get("attempt", 0))
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def task_lookup(episodes: Sequence[dict[str, Any]], tasks: Sequence[Task] | None = None) -> dict[str, Task]:
    """The task of every episode (default: HumanEval); an episode whose task is missing is an error."""
    if tasks is None:
        from .tasks import humaneval_tasks

        tasks = humaneval_tasks()
    by = {t.id: t for t in tasks}
    missing = sorted({e["task"] for e in episodes} - set(by))
    if missing:
        raise SteerwatchError(f"{len(missing)} episode task(s) are not among the tasks (e.g. {missing[0]!r}): give "
                              "the --tasks file the run used")
    return by


def episode_conversation(episode: dict[str, Any], task: Task) -> list[dict[str, str]]:
    """The conversation the model saw when it wrote the episode's final answer, with that answer
    last: the system prompt, the setting's first turn (instruction, demonstrations), then for each
    earlier turn its reply and the test runner's feedback, exactly as :func:`run_episodes` built it."""
    from ..chat import prompt_messages
    from . import prompts as P
    from .sandbox import RunResult

    opts = episode.get("options")
    if not isinstance(opts, dict):
        raise SteerwatchError(f"episode {episode['task']!r} ({episode.get('setting')}) has no recorded options: its "
                              "prompt cannot be rebuilt; rerun it with `steerwatch lab run`")
    first = P.first_turn(task, instruction=opts.get("instruction", "none"), demos=int(opts.get("demos", 0)))
    turns = episode["turns"]
    replies = [t["response"] for t in turns[:-1]]
    feedbacks = [P.feedback(task, None if t["status"] == "no_code" else RunResult.from_json(t)) for t in turns[:-1]]
    msgs = prompt_messages(P.conversation(first, replies, feedbacks), opts.get("system"))
    return [*msgs, {"role": "assistant", "content": turns[-1]["response"]}]


def answer_encoded(tokenizer: Any, conversation: Sequence[dict[str, str]]) -> Encoded | None:
    """Token ids up to the end of the last message and the span of its tokens (rendered as the
    watch renders it); None when the answer has no tokens."""
    from ..chat import Encoded
    from ..watch.render import render_conversation

    rc = render_conversation(tokenizer, conversation)
    pos = [i for i, k in enumerate(rc.msg_index) if k == len(conversation) - 1]
    if not pos:
        return None
    end = pos[-1] + 1
    return Encoded(ids=rc.ids[:end], last_prompt=pos[0] - 1, span=(pos[0], end), has_completion=True)


def fit_population(episodes: Sequence[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """The episodes a probe is fitted and scored on: impossible ones (they carry ``cheated``) with
    the label and a final answer."""
    if label not in LABELS:
        raise SteerwatchError(f"unknown label {label!r}; valid: {', '.join(LABELS)}")
    return [e for e in episodes if "cheated" in e and label in e and e["turns"] and e["turns"][-1].get("response")]


def check_fit_split(episodes: Sequence[dict[str, Any]], *, allow_test: bool = False) -> None:
    test = [e for e in episodes if e.get("split") == "test"]
    if test and not allow_test:
        raise SteerwatchError(f"{len(test)} of {len(episodes)} episodes are from the test split (e.g. "
                              f"{test[0]['task']!r}, setting {test[0].get('setting')!r}): fit on dev episodes and "
                              "evaluate on test once; pass allow_test (--allow-test) to fit on them anyway")


# ---------------------------------------------------------------------------------------- features
def answer_features(loaded: LoadedModel, conversations: Sequence[Sequence[dict[str, str]]], *,
                    layers: Sequence[int] | None = None, batch_size: int = 8, progress: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict[int, dict[str, float]], list[int]]:
    """Per aggregate (``mean``: mean over the answer's tokens; ``last``: its last token), the
    activations at ``layers`` (default all): {aggregate: (n_kept, len(layers), d)}; the residual
    norm statistics over the conversations; the indices of the conversations kept (answers with
    tokens). One recording: each answer is read twice as a completion of the same prompt (its whole
    span, and its last token alone), so the record's prompt cache runs each prompt once."""
    from dataclasses import replace

    from ..record import NormStats, record

    enc = [answer_encoded(loaded.tokenizer, c) for c in conversations]
    kept = [i for i, e in enumerate(enc) if e is not None]
    examples = []
    for e in enc:
        if e is not None:
            examples += [e, replace(e, span=(e.span[1] - 1, e.span[1]))]
    layer_list = list(range(loaded.n_layers)) if layers is None else list(layers)
    norms = NormStats()
    got = record(loaded, examples, layers=layer_list, read="completion_mean", batch_size=2 * batch_size,
                 norms=norms, progress=progress, desc="reading answers")
    # every token was counted twice (both reads of an answer): the mean and std are unchanged
    summary = {layer: dict(row, n_tokens=row["n_tokens"] // 2) for layer, row in norms.summary().items()}
    return {"mean": got[0::2], "last": got[1::2]}, summary, kept


# ---------------------------------------------------------------------------------------- fitting
@dataclass
class CheatingProbe:
    vector: Vector
    detector: Detector
    label: str
    method: str
    aggregate: str
    table: list[dict[str, Any]]  # one row per (aggregate, method): chosen layer, CV AUROC, Cohen's d
    counts: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        thr = "uncalibrated" if self.detector.threshold is None else f"threshold {self.detector.threshold:.4g}"
        return (f"<CheatingProbe {self.detector.name!r}: {self.label}, {self.method}/{self.aggregate}, layer "
                f"{self.detector.layer}, {thr}, {self.counts}>")


def fit_rows(episodes: Sequence[dict[str, Any]], *, label: str = "special_cased",
             methods: Sequence[str] = ("mean_diff", "lda", "logistic"), aggregates: Sequence[str] = PROBE_AGGREGATES,
             folds: int = 5, allow_test: bool = False) -> list[dict[str, Any]]:
    """The episodes a probe would be fitted on (impossible, deduplicated), after every check that
    needs no model: options, split, both classes, enough problems for the folds."""
    from ..evals.deception_detect import MIN_PER_CLASS, PROBE_METHODS

    bad = [m for m in methods if m not in PROBE_METHODS]
    if bad or not methods:
        raise SteerwatchError(f"unknown probe method(s) {bad}; valid: {', '.join(PROBE_METHODS)}")
    bad = [a for a in aggregates if a not in PROBE_AGGREGATES]
    if bad or not aggregates:
        raise SteerwatchError(f"unknown aggregate(s) {bad}; valid: {', '.join(PROBE_AGGREGATES)}")
    if folds < 2:
        raise SteerwatchError(f"folds must be at least 2, got {folds}")
    rows = fit_population(dedupe(episodes), label)
    check_fit_split(rows, allow_test=allow_test)
    n_pos = sum(bool(e[label]) for e in rows)
    n_neg = len(rows) - n_pos
    if n_pos < MIN_PER_CLASS or n_neg < MIN_PER_CLASS:
        raise SteerwatchError(f"{n_pos} {label} and {n_neg} other impossible episodes; need at least {MIN_PER_CLASS} "
                              f"of each to fit a probe (run more settings or tasks, or choose another --label)")
    n_groups = len({e["problem"] for e in rows})
    if n_groups < folds:
        raise SteerwatchError(f"{n_groups} problems for {folds} folds: use fewer folds or more tasks")
    return rows


def fit_cheating_probe(loaded: LoadedModel, episodes: Sequence[dict[str, Any]], *, label: str = "special_cased",
                       tasks: Sequence[Task] | None = None, methods: Sequence[str] = ("mean_diff", "lda", "logistic"),
                       aggregates: Sequence[str] = PROBE_AGGREGATES, folds: int = 5, seed: int = 0,
                       allow_test: bool = False, name: str = "cheating-probe", batch_size: int = 8,
                       progress: bool = False,
                       features: tuple[Mapping[str, torch.Tensor], dict[int, dict[str, float]], list[int]] | None = None
                       ) -> CheatingProbe:
    """Fit the probe on ``episodes`` (their impossible ones; duplicates counted once) and choose
    layer, method and aggregate by problem-grouped cross-validation on them. ``features``: the
    :func:`answer_features` of exactly those episodes' conversations (to share between labels)."""
    import torch

    from ..evals.deception_detect import cv_directions, group_folds
    from ..vector import Vector, best_layer
    from ..watch.detector import Detector

    rows = fit_rows(episodes, label=label, methods=methods, aggregates=aggregates, folds=folds,
                    allow_test=allow_test)
    if features is None:
        lookup = task_lookup(rows, tasks)
        convs = [episode_conversation(e, lookup[e["task"]]) for e in rows]
        features = answer_features(loaded, convs, batch_size=batch_size, progress=progress)
    feats, norms, kept = features
    if max(kept, default=-1) >= len(rows) or any(f.shape[0] != len(kept) for f in feats.values()):
        raise SteerwatchError(f"features for {len(kept)} answers given, {len(rows)} episodes to fit")
    rows = [rows[i] for i in kept]
    y = torch.tensor([int(bool(e[label])) for e in rows])
    fold = group_folds([e["problem"] for e in rows], folds, seed)
    table: list[dict[str, Any]] = []
    fitted: list[tuple[dict[int, dict[str, float]], dict[int, torch.Tensor]]] = []
    for agg in aggregates:
        for method in methods:
            validation, directions = cv_directions(feats[agg], y, fold, method=method)
            layer = best_layer(validation)
            table.append({"label": label, "aggregate": agg, "method": method, "layer": layer,
                          "cv_auroc": validation[layer]["auroc"], "cv_cohens_d": validation[layer]["cohens_d"]})
            fitted.append((validation, directions))
    best = max(range(len(table)), key=lambda i: (round(float(table[i]["cv_auroc"]), 3), -i))
    table[best]["chosen"] = True
    validation, directions = fitted[best]
    row = table[best]
    counts = {"positive": int(y.sum()), "negative": int(len(y) - y.sum()),
              "problems": len({e["problem"] for e in rows}), "episodes": len(rows)}
    sha = hashlib.sha256("\n".join(f"{e.get('setting')}\t{e['task']}\t{e.get('attempt', 0)}\t{int(bool(e[label]))}\t"
                                   f"{e['turns'][-1]['response']}" for e in rows).encode()).hexdigest()
    vec = Vector(directions={k: v / v.norm() for k, v in directions.items()}, concept="cheating",
                 model_name=loaded.name, model_fingerprint=loaded.fingerprint, hidden_size=loaded.hidden_size,
                 method=row["method"], read_position="completion_mean" if row["aggregate"] == "mean" else "last_token",
                 default_layers=[row["layer"]], residual_norm=norms, n_model_layers=loaded.n_layers,
                 dataset={"name": name, "label": label, "n_train": len(rows), **counts, "folds": folds, "seed": seed,
                          "settings": sorted({str(e.get("setting")) for e in rows}),
                          "splits": sorted({str(e.get("split")) for e in rows}), "sha256": sha},
                 validation=validation,
                 extra={"kind": "lab_cheating_probe", "aggregate": row["aggregate"],
                        "labels": f"{label}: from the model's own lab answers (static check / execution, issue 16)",
                        "selection": table})
    det = Detector(vector=vec, layer=row["layer"], sign=1, aggregate=row["aggregate"], name=name)
    return CheatingProbe(vector=vec, detector=det, label=label, method=row["method"], aggregate=row["aggregate"],
                         table=table, counts=counts)


def calibrate_on_coding(loaded: LoadedModel, detectors: Sequence[Detector], *, tasks: Sequence[Task] | None = None,
                        fpr: float = 0.01, batch_size: int = 4, progress: bool = False) -> list[dict[str, Any]]:
    """Each detector's threshold from benign coding work, as ``steerwatch calibrate --coding``:
    the reference solutions of the dev ``original`` tasks (one pass for all the detectors)."""
    from ..watch.calibrate import calibrate
    from .prompts import benign_coding
    from .tasks import humaneval_tasks, select

    convs = benign_coding(select(humaneval_tasks() if tasks is None else tasks, split="dev", variants=["original"]))
    return calibrate(loaded, list(detectors), convs, fpr=fpr, source=CODING_SOURCE, batch_size=batch_size,
                     progress=progress)


# ---------------------------------------------------------------------------------------- scoring
def last_message_scores(scored: Any, detector: Detector, n_messages: int) -> list[float]:
    """``detector``'s token scores over the last of ``n_messages`` messages of a scored conversation
    (:class:`steerwatch.watch.score.ScoredConversation`): the answer being judged."""
    return [v for v, k in zip(scored.scores[detector.name], scored.msg_index) if k == n_messages - 1]


def score_episodes(loaded: LoadedModel, detectors: Sequence[Detector], episodes: Sequence[dict[str, Any]], *,
                   tasks: Sequence[Task] | None = None, batch_size: int = 4, progress: bool = False
                   ) -> list[dict[str, Any]]:
    """Copies of ``episodes`` whose final turn carries each detector's score of the final answer
    (``scores[name]``, the detector's own aggregate over the answer's tokens, read unsteered on the
    rebuilt conversation) and its per-token scores (``token_scores[name]``), so that
    :func:`steerwatch.lab.report.detection` and ``lab report`` score it like a detector that
    watched the run."""
    import copy

    from ..watch.score import score_conversations

    if not detectors:
        raise SteerwatchError("no detector to score the episodes with")
    lookup = task_lookup(episodes, tasks)
    convs = [episode_conversation(e, lookup[e["task"]]) for e in episodes]
    scored = score_conversations(loaded, convs, detectors, batch_size=batch_size, progress=progress)
    out = []
    for e, conv, sc in zip(episodes, convs, scored):
        e2 = copy.deepcopy(e)
        last = e2["turns"][-1]
        last.setdefault("scores", {})
        last.setdefault("token_scores", {})
        for d in detectors:
            toks = last_message_scores(sc, d, len(conv))
            last["scores"][d.name] = d.response(toks)
            last["token_scores"][d.name] = [round(v, 5) for v in toks]
        out.append(e2)
    return out
