"""Optimised steering vectors: one vector trained by gradient descent through the frozen model.

Where :func:`steerwatch.extract.build.build_vector` reads a direction off recorded activations,
:func:`optimise_vector` *trains* one vector and writes it as an ordinary
:class:`~steerwatch.vector.Vector`. The model is frozen (eval mode, no parameter gradients);
only the vector learns.

Units. The trained parameter is ``w`` (d_model,), in steerwatch's strength unit: at every layer L
of ``layers`` the block output gets ``norm_L * w`` added at every position, with ``norm_L`` the
mean residual norm measured exactly as ``build_vector`` measures it (:class:`~steerwatch.record.NormStats`
over the data's prompts and completions, each sequence's first token left out). So ``w = s * u``
with ``u = w / |w|`` the stored unit direction and ``s = |w|`` the strength: ``SteerSpec(vector,
strength=|w|)`` on the returned vector reproduces the trained intervention exactly. After every
step ``|w|`` is projected back to at most ``max_strength``.

Methods (``method``):

- ``bipo``: bi-directional preference optimisation (Cao et al., NeurIPS 2024, "Personalized
  Steering of Large Language Models via Bi-directional Preference Optimization"). For a pair
  (prompt x, positive y+, negative y-) and a direction ``d`` drawn uniformly from {+1, -1} per
  example, with ``r(y) = log p_{d w}(y|x) - log p_0(y|x)`` (summed over the completion tokens;
  ``p_0`` the unsteered model, computed once and cached)::

      loss = -log sigmoid(beta * d * (r(y+) - r(y-)))

  so ``+w`` prefers y+ over y- relative to the unsteered model and ``-w`` the reverse. The
  validation loss averages both directions (its expectation over ``d``).
- ``fewshot``: maximise the log-probability of the positive completions under ``+w``:
  ``loss = -mean over examples of the mean token log p_w(y+|x)``.

Where the result lives: ``vector.recommended_strength`` is the learned strength ``|w|`` (apply the
vector at that strength to get what was trained), and ``vector.extra["optimisation"]`` records the
method, strength, steps run, best step, loss curve ``[[step, train_loss, val_loss], ...]`` (step 0
is the unsteered model, its train loss null), lr, beta, seed and the data hash; both round-trip
through ``.sv`` files. ``vector.method`` is ``"bipo"`` or ``"fewshot"`` (the extraction-method
registry is not involved: a Vector's method is free text).

Checkpoints. With ``checkpoint=PATH`` the full training state (``w``, step, the Adam state, the
random-number states, the batch queue, the best vector so far, the history) is written atomically
to PATH at every evaluation. A later call with the same PATH resumes from it when it matches (same
method, layers, data hash, model fingerprint, lr, beta, batch size, seed and max_strength; ``steps``
may grow), and gives the same ``w`` as an uninterrupted run; a checkpoint that does not match is an
error (delete it or choose another path). Nothing is written on a failed step.
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ExtractionError
from ..layers import block_output, check_layers, decoder_blocks, replace_block_output

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..chat import Encoded
    from ..data import ContrastPair, ContrastSet
    from ..models import LoadedModel
    from ..vector import Vector

OPT_METHODS = ("bipo", "fewshot")
CHECKPOINT_FORMAT = 1


# ---------------------------------------------------------------------------- the training hook
class _Push:
    """Forward hooks adding ``sign_row * norm_L * w`` to the output of each block L in ``layers``
    while :attr:`w` is set (inert when it is None). Removed by :meth:`remove`."""

    def __init__(self, blocks: Any, layers: Sequence[int], scale: dict[int, float]) -> None:
        self.w: torch.Tensor | None = None  # (d,)
        self.sign: torch.Tensor | None = None  # (rows,)
        self._handles: list[Any] = []
        try:
            for layer in layers:
                def hook(_m: Any, _i: Any, output: Any, s: float = scale[layer]) -> Any:
                    if self.w is None or self.sign is None:
                        return None
                    h = block_output(output)  # (rows, seq, d)
                    delta = self.sign[:, None] * (s * self.w)[None, :]  # (rows, d)
                    return replace_block_output(output, h + delta.to(h.dtype)[:, None, :])
                self._handles.append(blocks[layer].register_forward_hook(hook))
        except Exception:
            self.remove()
            raise

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()


class _Scorer:
    """Completion log-probabilities of encoded examples under the frozen model plus a push."""

    def __init__(self, loaded: LoadedModel, push: _Push) -> None:
        self.loaded = loaded
        self.push = push

    def logprobs(self, encs: Sequence[Encoded], w: torch.Tensor | None,
                 sign: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probability of each example's completion tokens, and their counts: two (rows,)
        float32 tensors. One right-padded forward pass (:func:`steerwatch.batch.forward` with
        ``grad=True``), logits only where they predict a completion token; ``w`` None: unsteered."""
        import torch

        from ..batch import forward

        at, tgt, rows = [], [], []
        for e in encs:
            a, b = e.span
            pos = list(range(max(a, 1) - 1, b - 1))  # the logits at t predict token t + 1
            at.append(pos)
            tgt.append([e.ids[t + 1] for t in pos])
            rows.append(len(pos))
        self.push.w = w
        self.push.sign = None if sign is None else sign.to(self.loaded.device, torch.float32)
        try:
            logits = forward(self.loaded, [e.ids for e in encs], logits_at=at, grad=w is not None)
        finally:
            self.push.w = self.push.sign = None
        assert logits is not None
        k = logits.shape[1]
        target = torch.tensor([t + [t[-1]] * (k - len(t)) for t in tgt], dtype=torch.long)
        mask = torch.tensor([[1.0] * n + [0.0] * (k - n) for n in rows])
        lp = torch.log_softmax(logits, dim=-1).gather(2, target[..., None])[..., 0] * mask
        return lp.sum(1), mask.sum(1)


# ---------------------------------------------------------------------------- losses
def _bipo_loss(beta: float, lp_pos: torch.Tensor, lp_neg: torch.Tensor, ref_pos: torch.Tensor,
               ref_neg: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Per pair: -log sigmoid(beta * d * (r(y+) - r(y-))), r = log p_steered - log p_unsteered."""
    import torch

    return -torch.nn.functional.logsigmoid(beta * sign * ((lp_pos - ref_pos) - (lp_neg - ref_neg)))


def _fewshot_loss(lp_pos: torch.Tensor, n_pos: torch.Tensor) -> torch.Tensor:
    """Per example: minus the mean token log-probability of the positive completion."""
    return -lp_pos / n_pos


class _Objective:
    """The per-pair losses of one method on one split, with the cached unsteered log-probs."""

    def __init__(self, scorer: _Scorer, method: str, beta: float, pairs: list[tuple[Encoded, Encoded]],
                 chunk: int) -> None:
        import torch

        self.scorer, self.method, self.beta, self.pairs, self.chunk = scorer, method, beta, pairs, chunk
        self.ref_pos = self.ref_neg = torch.zeros(len(pairs))
        if method == "bipo":  # p_0, once, in fixed chunks (the same numbers on every run and resume)
            with torch.no_grad():
                pos, neg = [], []
                for i in range(0, len(pairs), chunk):
                    part = pairs[i:i + chunk]
                    lp, _ = scorer.logprobs([p for p, _ in part] + [n for _, n in part], None, None)
                    pos.append(lp[:len(part)])
                    neg.append(lp[len(part):])
            self.ref_pos, self.ref_neg = torch.cat(pos), torch.cat(neg)

    def losses(self, idx: Sequence[int], w: torch.Tensor | None, sign: torch.Tensor) -> torch.Tensor:
        """(len(idx),) per-pair losses; ``sign`` (len(idx),) of +1/-1 (fewshot: ignored, +w)."""
        import torch

        pos = [self.pairs[i][0] for i in idx]
        if self.method == "fewshot":
            lp, n = self.scorer.logprobs(pos, w, torch.ones(len(idx)))
            return _fewshot_loss(lp, n)
        neg = [self.pairs[i][1] for i in idx]
        lp, _ = self.scorer.logprobs(pos + neg, w, torch.cat([sign, sign]))
        dev = lp.device
        at = torch.tensor(list(idx))
        return _bipo_loss(self.beta, lp[:len(idx)], lp[len(idx):], self.ref_pos[at].to(dev),
                          self.ref_neg[at].to(dev), sign.to(dev, torch.float32))

    def mean(self, w: torch.Tensor | None) -> float:
        """The loss over the whole split without gradients; bipo averages d = +1 and d = -1."""
        import torch

        signs = (1.0, -1.0) if self.method == "bipo" else (1.0,)
        total = 0.0
        with torch.no_grad():
            for s in signs:
                for i in range(0, len(self.pairs), self.chunk):
                    idx = list(range(i, min(i + self.chunk, len(self.pairs))))
                    total += float(self.losses(idx, w, torch.full((len(idx),), s)).sum())
        return total / (len(signs) * len(self.pairs))


# ---------------------------------------------------------------------------- checks and state
def _check_options(method: str, steps: int, lr: float, max_strength: float, batch_size: int, beta: float,
                   eval_every: int, patience: int) -> None:
    if method not in OPT_METHODS:
        raise ExtractionError(f"unknown optimisation method {method!r}; valid: {', '.join(OPT_METHODS)}")
    for name, val in (("steps", steps), ("batch_size", batch_size), ("eval_every", eval_every),
                      ("patience", patience)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ExtractionError(f"{name} must be an integer >= 1, got {val!r}")
    for name, num in (("lr", lr), ("max_strength", max_strength), ("beta", beta)):
        if isinstance(num, bool) or not isinstance(num, (int, float)) or not math.isfinite(num) or num <= 0:
            raise ExtractionError(f"{name} must be a finite number > 0, got {num!r}")


def _encode(loaded: LoadedModel, pairs: Sequence[ContrastPair], name: str) -> list[tuple[Encoded, Encoded]]:
    from ..chat import encode_example

    out = []
    for i, p in enumerate(pairs):
        pos = encode_example(loaded.tokenizer, prompt=p.prompt, completion=p.positive, system=p.system)
        neg = encode_example(loaded.tokenizer, prompt=p.prompt, completion=p.negative, system=p.system)
        for side, e in (("positive", pos), ("negative", neg)):
            if e.span[1] - max(e.span[0], 1) < 1:
                raise ExtractionError(f"{name}: pair {i} has no {side} completion token to score; "
                                      "give each side at least one token of text")
        out.append((pos, neg))
    return out


def _load_checkpoint(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExtractionError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); delete it "
                              "to start afresh") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "key" not in state:
        raise ExtractionError(f"{path} is not a steerwatch optimisation checkpoint (format {CHECKPOINT_FORMAT}); "
                              "delete it or choose another checkpoint path")
    diff = [k for k in key if state["key"].get(k) != key[k]]
    if diff:
        what = ", ".join(f"{k} {state['key'].get(k)!r} there, {key[k]!r} now" for k in diff)
        raise ExtractionError(f"checkpoint {path} belongs to another run ({what}); delete it or choose another "
                              "checkpoint path")
    return state


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint intact


# ---------------------------------------------------------------------------- the entry point
def optimise_vector(loaded: LoadedModel, data: ContrastSet, *, method: str = "bipo", layers: Sequence[int],
                    steps: int = 100, lr: float = 0.01, max_strength: float = 0.1, batch_size: int = 4,
                    seed: int = 0, beta: float = 0.1, eval_every: int = 10, patience: int = 3,
                    dev_metric: Callable[[Vector], float] | None = None, checkpoint: str | Path | None = None,
                    progress: bool = False, concept: str | None = None) -> tuple[Vector, dict[str, Any]]:
    """Train one steering vector on ``data.train`` against the frozen model (see the module doc).

    ``layers``: the blocks the vector is added at (all positions), also its default layers.
    Adam on ``w`` with ``lr``; ``|w|`` projected to ``<= max_strength`` after each step; minibatches
    of ``batch_size`` pairs shuffled with ``seed``. Every ``eval_every`` steps (and at the last)
    the validation loss on ``data.val`` and ``dev_metric(vector)`` (higher is better) when given;
    training stops after ``patience`` evaluations without improvement. Returns the best vector (by
    ``dev_metric`` if given, else by validation loss) and the history: ``loss_curve``, ``dev_metric``,
    ``w_norm``, ``best_step``, ``steps_run``, ``stopped_early``, ``strength``, ``initial_val_loss``,
    ``best_val_loss``, ``resumed_from``.

    Raises ExtractionError on bad options, fewer than 2 training or 1 validation pairs, a loss or
    ``w`` that is not finite (naming the step), or a checkpoint of another run; LayerResolutionError
    for layers out of range. No vector is returned and no checkpoint written for a failed step.
    """
    import torch
    from tqdm.auto import tqdm

    from ..record import NormStats, record

    _check_options(method, steps, lr, max_strength, batch_size, beta, eval_every, patience)
    train, val = data.train, data.val
    if len(train) < 2 or len(val) < 1:
        raise ExtractionError(f"{data.name}: optimising a vector needs at least 2 training pairs and 1 validation "
                              f"pair (split 'val'), got {len(train)} training and {len(val)} validation; add "
                              "pairs, or \"split\": \"val\" to some of them")
    layers = check_layers(list(layers), loaded.n_layers)
    if not layers:
        raise ExtractionError("layers must not be empty; name the blocks to train the vector at, e.g. [6, 7, 8]")
    enc_train, enc_val = _encode(loaded, train, data.name), _encode(loaded, val, data.name)

    # the strength unit, measured as build_vector measures it (and validation features on the way)
    norms = NormStats()
    feats = record(loaded, [e for pair in enc_train + enc_val for e in pair], layers=layers,
                   read="completion_mean", batch_size=max(batch_size, 8), norms=norms)  # (2n, L, d)
    stats = {layer: row for layer, row in norms.summary().items() if layer in layers}
    scale = {layer: float(stats[layer]["mean"]) for layer in layers}

    key = {"method": method, "layers": list(layers), "data_sha256": data.sha256,
           "model_fingerprint": loaded.fingerprint, "lr": float(lr), "beta": float(beta),
           "batch_size": int(batch_size), "seed": int(seed), "max_strength": float(max_strength)}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    saved = _load_checkpoint(ckpt, key) if ckpt is not None and ckpt.exists() else None

    def make_vector(w: torch.Tensor, extra: dict[str, Any] | None = None) -> Vector:
        from ..vector import Vector
        from .metrics import separation

        n = float(w.norm())
        if not n > 0:
            raise ExtractionError("the trained vector is zero (no gradient reached it); check that positive and "
                                  "negative completions differ, or raise lr")
        u = (w.detach() / n).to("cpu", torch.float32)
        validation = {}
        if len(val) >= 2:  # how well the direction separates the sides' activations, as build_vector reports
            nt = len(train)
            for slot, layer in enumerate(layers):
                validation[layer] = separation(feats[2 * nt::2, slot] @ u, feats[2 * nt + 1::2, slot] @ u)
        return Vector(directions={layer: u.clone() for layer in layers}, concept=concept or data.name,
                      model_name=loaded.name, model_fingerprint=loaded.fingerprint,
                      hidden_size=loaded.hidden_size, method=method, read_position="completion_mean",
                      default_layers=list(layers), residual_norm=stats, n_model_layers=loaded.n_layers,
                      dataset=data.describe(), validation=validation, recommended_strength=n,
                      extra={"optimisation": extra} if extra is not None else {})

    net = loaded.model
    was_training = net.training
    grads = [p.requires_grad for p in net.parameters()]
    push: _Push | None = None
    try:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        push = _Push(decoder_blocks(net, layers_path=loaded.layers_path), layers, scale)
        scorer = _Scorer(loaded, push)
        bs = min(batch_size, len(train))
        obj_train = _Objective(scorer, method, beta, enc_train, bs)
        obj_val = _Objective(scorer, method, beta, enc_val, bs)

        w = torch.zeros(loaded.hidden_size, device=loaded.device, dtype=torch.float32, requires_grad=True)
        opt = torch.optim.Adam([w], lr=lr)
        rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
        queue: list[list[int]] = []
        history: dict[str, Any] = {"loss_curve": [], "dev_metric": [], "w_norm": [], "resumed_from": None}
        best: dict[str, Any] = {"w": None, "step": None, "score": None, "val_loss": None}
        pending: list[float] = []
        bad, stopped, step = 0, False, 0
        if saved is not None:
            with torch.no_grad():
                w.copy_(saved["w"].to(w.device))
            opt.load_state_dict(saved["adam"])
            rng.setstate(saved["py_rng"])
            gen.set_state(saved["torch_rng"])
            queue, history, best = saved["queue"], saved["history"], saved["best"]
            bad, pending, stopped, step = saved["bad"], saved["pending"], saved["stopped"], saved["step"]
            history["resumed_from"] = step
        else:
            history["loss_curve"].append([0, None, obj_val.mean(None)])  # the unsteered model

        bar = tqdm(total=steps, initial=min(step, steps), desc=f"optimising {data.name} ({method})",
                   disable=not progress, unit="step")
        while step < steps and not stopped:
            step += 1
            if not queue:  # a new epoch: a fresh permutation of the training pairs, in minibatches
                order = list(range(len(train)))
                rng.shuffle(order)
                queue = [order[i:i + bs] for i in range(0, len(order), bs)]
            idx = queue.pop(0)
            sign = (torch.randint(0, 2, (len(idx),), generator=gen) * 2 - 1).float()
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = obj_train.losses(idx, w, sign).mean()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise ExtractionError(f"optimisation diverged at step {step}: the {method} loss is {value}; "
                                          f"try a smaller lr (now {lr:g}) or max_strength (now {max_strength:g})")
                loss.backward()
            try:
                opt.step()
            except RuntimeError as exc:  # an lr past float32's range: Adam's step size overflows
                if "overflow" not in str(exc):
                    raise
                raise ExtractionError(f"optimisation diverged at step {step}: the Adam update overflowed ({exc}); "
                                      f"try a smaller lr (now {lr:g})") from None
            if not bool(torch.isfinite(w).all()):
                raise ExtractionError(f"optimisation diverged at step {step}: the vector is not finite; try a "
                                      f"smaller lr (now {lr:g})")
            with torch.no_grad():
                n = float(w.double().norm())  # float64: a float32 sum of squares overflows for |w| > ~1e19
                if n > max_strength:  # the norm constraint: |w| <= max_strength
                    w.mul_(max_strength / n)
            pending.append(value)
            bar.update(1)
            bar.set_postfix(step=step, loss=f"{value:.4f}")
            if step % eval_every and step != steps:
                continue
            val_loss = obj_val.mean(w.detach())
            train_loss = sum(pending) / len(pending)
            pending = []
            history["loss_curve"].append([step, train_loss, val_loss])
            history["w_norm"].append([step, float(w.detach().norm())])
            score = -val_loss
            if dev_metric is not None:
                score = float(dev_metric(make_vector(w.detach())))
                if not math.isfinite(score):
                    raise ExtractionError(f"dev_metric returned {score} at step {step}; it must return a finite "
                                          "number (higher is better)")
                history["dev_metric"].append([step, score])
            if best["score"] is None or score > best["score"]:
                best = {"w": w.detach().to("cpu").clone(), "step": step, "score": score, "val_loss": val_loss}
                bad = 0
            else:
                bad += 1
                stopped = bad >= patience
            if ckpt is not None:
                _save_checkpoint(ckpt, {
                    "format": CHECKPOINT_FORMAT, "key": key, "step": step, "w": w.detach().to("cpu").clone(),
                    "adam": opt.state_dict(), "py_rng": rng.getstate(), "torch_rng": gen.get_state(),
                    "queue": queue, "history": history, "best": best, "bad": bad, "pending": pending,
                    "stopped": stopped})
        bar.close()
    finally:
        if push is not None:
            push.remove()
        for p, g in zip(net.parameters(), grads):
            p.requires_grad_(g)
        net.train(was_training)

    if best["w"] is None:  # pragma: no cover - every run evaluates at least once
        raise ExtractionError("no evaluation was run; give steps >= 1")
    strength = float(best["w"].norm())
    history.update(best_step=best["step"], steps_run=step, stopped_early=bool(stopped), strength=strength,
                   initial_val_loss=history["loss_curve"][0][2], best_val_loss=best["val_loss"])
    summary = {"method": method, "layers": list(layers), "strength": strength, "max_strength": float(max_strength),
               "steps": steps, "steps_run": step, "best_step": best["step"], "stopped_early": bool(stopped),
               "loss_curve": history["loss_curve"], "dev_metric": history["dev_metric"] or None,
               "initial_val_loss": history["initial_val_loss"], "best_val_loss": best["val_loss"],
               "lr": float(lr), "beta": float(beta), "batch_size": int(batch_size), "seed": int(seed),
               "eval_every": eval_every, "patience": patience, "data_sha256": data.sha256}
    return make_vector(best["w"], summary), history
