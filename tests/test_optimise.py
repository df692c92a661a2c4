"""steerwatch.extract.optimise: optimised steering vectors (BiPO, few-shot) on tiny random models.

The losses are recomputed here by another route (the product's own steering hooks, ``steer.steering``,
and its padded forward pass, ``batch.forward``), so a test passes only when the returned Vector,
applied at its recorded strength, reproduces what was trained."""
from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from conftest import blocks_of, get_loaded
from steerwatch.batch import forward
from steerwatch.chat import encode_example
from steerwatch.data import ContrastPair, ContrastSet
from steerwatch.errors import ExtractionError, LayerResolutionError
from steerwatch.extract import optimise
from steerwatch.extract.optimise import optimise_vector
from steerwatch.steer import SteerSpec, steering
from steerwatch.vector import load_vector
from tolerances import DOUBLE, FP32_ROUTE, FP32_STORED

LAYERS = [1, 2]
FAST = dict(layers=LAYERS, steps=20, eval_every=5, patience=100, lr=0.05, max_strength=0.5, beta=1.0)


def _vowels(n_train: int = 8, n_val: int = 4, *, seed: int = 0, prompt: bool = True) -> ContrastSet:
    """Positives are words of vowels, negatives words of rare consonants: one added vector can
    raise the first's logits against the second's even in a random model."""
    r = random.Random(seed)

    def words(chars: str) -> str:
        return " ".join("".join(r.choice(chars) for _ in range(r.randint(2, 5))) for _ in range(3))

    pairs = [ContrastPair(positive=words("aeiou"), negative=words("xzqkjw"),
                          prompt=words("bcdfghlmnprst") + "?" if prompt else None,
                          split="val" if i >= n_train else "train") for i in range(n_train + n_val)]
    return ContrastSet(name="vowels", pairs=pairs, source="test")


def _logprobs(lm, pairs, vector=None, strength=0.0):
    """(positive, negative) summed completion log-probs and token counts per pair, through the
    product's steering hooks and forward pass."""
    encs = [encode_example(lm.tokenizer, prompt=p.prompt, completion=c, system=p.system)
            for p in pairs for c in (p.positive, p.negative)]
    specs = [SteerSpec(vector, strength=strength)] if vector is not None and strength else []
    with steering(lm, specs):
        logits = forward(lm, [e.ids for e in encs], logits=True)
    lp = torch.log_softmax(logits.double(), -1)
    sums, counts = [], []
    for r, e in enumerate(encs):
        a, b = e.span
        sums.append(sum(float(lp[r, t - 1, e.ids[t]]) for t in range(a, b)))
        counts.append(b - a)
    return sums[0::2], sums[1::2], counts[0::2]


def _bipo_val_loss(lm, data, vector, strength, beta):
    """The validation loss of BiPO at ``strength``, averaged over d = +1 and d = -1."""
    ref_p, ref_n, _ = _logprobs(lm, data.val)
    total = 0.0
    for d in (1, -1):
        lp_p, lp_n, _ = _logprobs(lm, data.val, vector, d * strength)
        for a, b, ra, rb in zip(lp_p, lp_n, ref_p, ref_n):
            z = beta * d * ((a - ra) - (b - rb))
            total += math.log1p(math.exp(-z))  # -log sigmoid(z)
    return total / (2 * len(data.val))


def _mean_token_logprob(lm, data, vector=None, strength=0.0):
    lp_p, _, n = _logprobs(lm, data.val, vector, strength)
    return sum(a / k for a, k in zip(lp_p, n)) / len(n)


def _random_directions(vector, k):
    """``k`` copies of ``vector`` with seeded random unit directions (the same at every layer)."""
    g = torch.Generator().manual_seed(123)
    out = []
    for _ in range(k):
        u = torch.randn(vector.hidden_size, generator=g)
        u /= u.norm()
        out.append(dataclasses.replace(vector, directions={layer: u.clone() for layer in vector.layers}))
    return out


def _hook_counts(lm):
    return [len(b._forward_hooks) for b in blocks_of(lm)]


# ---------------------------------------------------------------------------- learning
def test_bipo_lowers_val_loss_beyond_random_directions(qwen):
    data = _vowels()
    vec, hist = optimise_vector(qwen, data, method="bipo", **FAST)
    s = vec.recommended_strength
    assert s == hist["strength"] and 0 < s <= FAST["max_strength"] + 1e-6
    # the vector, steered through SteerSpec at its recorded strength, gives the loss training recorded
    assert hist["initial_val_loss"] == FP32_ROUTE.approx(math.log(2))  # unsteered: r = 0 on both sides
    assert _bipo_val_loss(qwen, data, vec, s, FAST["beta"]) == FP32_ROUTE.approx(hist["best_val_loss"])
    # the margin: what the best of 8 random directions at the same strength achieves by chance
    chance = max(hist["initial_val_loss"] - _bipo_val_loss(qwen, data, r, s, FAST["beta"])
                 for r in _random_directions(vec, 8))
    final_val = hist["loss_curve"][-1][2]
    assert hist["initial_val_loss"] - final_val > max(chance, 0.0) + 0.05 * hist["initial_val_loss"]
    # the sign matters: flipped, the vector does worse than no steering at all
    assert _bipo_val_loss(qwen, data, -vec, s, FAST["beta"]) > hist["initial_val_loss"]
    lp_p, lp_n, _ = _logprobs(qwen, data.val, vec, s)
    lp_p0, lp_n0, _ = _logprobs(qwen, data.val)
    assert all((a - a0) - (b - b0) > 0 for a, b, a0, b0 in zip(lp_p, lp_n, lp_p0, lp_n0))
    lp_p, lp_n, _ = _logprobs(qwen, data.val, vec, -s)
    assert all((a - a0) - (b - b0) < 0 for a, b, a0, b0 in zip(lp_p, lp_n, lp_p0, lp_n0))


def test_fewshot_raises_positive_logprob(qwen):
    data = _vowels()
    vec, hist = optimise_vector(qwen, data, method="fewshot", **FAST)
    s = vec.recommended_strength
    base = _mean_token_logprob(qwen, data)
    steered = _mean_token_logprob(qwen, data, vec, s)
    assert -hist["initial_val_loss"] == FP32_ROUTE.approx(base)
    assert -hist["best_val_loss"] == FP32_ROUTE.approx(steered)
    chance = max(_mean_token_logprob(qwen, data, r, s) - base for r in _random_directions(vec, 8))
    assert steered - base > 0
    assert steered - base > chance
    assert vec.method == "fewshot" and vec.extra["optimisation"]["method"] == "fewshot"


# ---------------------------------------------------------------------------- constraint, file, determinism
def test_norm_constraint_holds_and_vector_round_trips(qwen, tmp_path):
    data = _vowels()
    cap = 0.05
    vec, hist = optimise_vector(qwen, data, **{**FAST, "max_strength": cap, "lr": 0.1})
    norms = [n for _, n in hist["w_norm"]]
    assert all(n <= cap + 1e-6 for n in norms)
    assert max(norms) == FP32_ROUTE.approx(cap)  # the constraint binds: the test could fail
    assert vec.recommended_strength <= cap + 1e-6
    assert vec.layers == LAYERS and vec.default_layers == LAYERS and vec.method == "bipo"
    assert sorted(vec.residual_norm) == LAYERS
    assert torch.equal(vec.directions[1], vec.directions[2])
    assert float(vec.directions[1].norm()) == FP32_ROUTE.approx(1.0)
    rec = vec.extra["optimisation"]
    assert rec["strength"] == vec.recommended_strength and rec["best_step"] == hist["best_step"]
    assert rec["loss_curve"] == hist["loss_curve"] and rec["loss_curve"][0][:2] == [0, None]
    assert [row[0] for row in rec["loss_curve"]] == [0, 5, 10, 15, 20]
    assert rec["data_sha256"] == data.sha256 == vec.dataset["sha256"]
    assert (rec["lr"], rec["beta"], rec["seed"], rec["steps_run"]) == (0.1, 1.0, 0, 20)

    back = load_vector(vec.save(tmp_path / "opt.sv"))
    assert back.layers == LAYERS and back.default_layers == LAYERS and back.method == "bipo"
    for layer in LAYERS:
        assert torch.equal(back.directions[layer], vec.directions[layer])
        assert back.residual_norm[layer] == DOUBLE.approx(vec.residual_norm[layer])
    assert back.recommended_strength == DOUBLE.approx(vec.recommended_strength)
    assert back.extra == vec.extra and back.dataset == vec.dataset
    with steering(qwen, [SteerSpec(back, strength=back.recommended_strength)]) as handle:  # usable as any vector
        assert handle.layers == LAYERS


def test_seeded_runs_are_identical(qwen):
    data = _vowels()
    a, ha = optimise_vector(qwen, data, seed=7, **FAST)
    b, hb = optimise_vector(qwen, data, seed=7, **FAST)
    assert torch.equal(a.directions[1], b.directions[1])
    assert ha["loss_curve"] == hb["loss_curve"] and ha["w_norm"] == hb["w_norm"]
    _, hc = optimise_vector(qwen, data, seed=8, **FAST)
    assert hc["loss_curve"][1:] != ha["loss_curve"][1:]  # the seed does reach the batches and the signs


def test_resume_from_checkpoint_matches_uninterrupted_run(qwen, tmp_path):
    data = _vowels()
    opts = {**FAST, "steps": 20, "seed": 3}
    full, hf = optimise_vector(qwen, data, **opts)
    ckpt = tmp_path / "run.ckpt"
    _, h1 = optimise_vector(qwen, data, **{**opts, "steps": 10}, checkpoint=ckpt)
    assert ckpt.is_file() and h1["steps_run"] == 10
    resumed, hr = optimise_vector(qwen, data, **opts, checkpoint=ckpt)
    assert hr["resumed_from"] == 10 and hr["steps_run"] == 20
    assert hr["loss_curve"] == hf["loss_curve"] and hr["w_norm"] == hf["w_norm"]
    assert hr["best_step"] == hf["best_step"]
    assert torch.equal(resumed.directions[1], full.directions[1])
    with pytest.raises(ExtractionError, match=r"another run \(layers"):
        optimise_vector(qwen, data, **{**opts, "layers": [0, 1]}, checkpoint=ckpt)
    with pytest.raises(ExtractionError, match="data_sha256"):
        optimise_vector(qwen, _vowels(seed=1), **opts, checkpoint=ckpt)


def test_dev_metric_chooses_the_vector_and_stops_early(qwen):
    data = _vowels()
    seen = []
    scores = iter([1.0, 5.0, 2.0, 0.0, 3.0, 9.0])

    def dev(vector):
        seen.append(vector)
        return next(scores)

    vec, hist = optimise_vector(qwen, data, **{**FAST, "steps": 40, "patience": 2}, dev_metric=dev)
    assert hist["dev_metric"] == [[5, 1.0], [10, 5.0], [15, 2.0], [20, 0.0]]
    assert hist["best_step"] == 10 and hist["stopped_early"] and hist["steps_run"] == 20
    assert torch.equal(vec.directions[1], seen[1].directions[1])
    assert vec.extra["optimisation"]["dev_metric"] == hist["dev_metric"]


# ---------------------------------------------------------------------------- errors and hygiene
def test_divergence_names_the_step(qwen, monkeypatch, tmp_path):
    data = _vowels()
    # the norm projection keeps w finite at any representable lr: lr=1e9 only pins |w| at max_strength
    _, hist = optimise_vector(qwen, data, **{**FAST, "steps": 5, "lr": 1e9})
    assert hist["w_norm"][-1][1] == FP32_ROUTE.approx(FAST["max_strength"])
    # an lr past float32's range overflows Adam's first step
    with pytest.raises(ExtractionError, match=r"diverged at step 1: the Adam update overflowed.*smaller lr"):
        optimise_vector(qwen, data, **{**FAST, "lr": 1e39})

    real = optimise._bipo_loss

    def broken_on(step, how):
        calls = []

        def loss(beta, lp_pos, *rest):
            out = real(beta, lp_pos, *rest)
            if lp_pos.requires_grad:  # training steps only (the validation loss runs without gradients)
                calls.append(1)
                if len(calls) == step:
                    return out * float("nan") if how == "loss" else out + (lp_pos - lp_pos.detach()).sqrt()
            return out  # sqrt above: value 0, gradient inf at 0, so Adam makes w NaN

        return loss

    ckpt = tmp_path / "nan.ckpt"
    monkeypatch.setattr(optimise, "_bipo_loss", broken_on(3, "loss"))
    with pytest.raises(ExtractionError, match=r"diverged at step 3: the bipo loss is nan; try a smaller lr"):
        optimise_vector(qwen, data, **FAST, checkpoint=ckpt)
    monkeypatch.setattr(optimise, "_bipo_loss", broken_on(2, "grad"))
    with pytest.raises(ExtractionError, match=r"diverged at step 2: the vector is not finite; try a smaller lr"):
        optimise_vector(qwen, data, **FAST, checkpoint=ckpt)
    assert not ckpt.exists()  # the first evaluation (step 5) was never reached: nothing written


def test_too_few_pairs_and_bad_options(qwen):
    data = _vowels()
    with pytest.raises(ExtractionError, match="got 1 training and 4 validation"):
        optimise_vector(qwen, _vowels(1, 4), layers=LAYERS)
    with pytest.raises(ExtractionError, match="got 8 training and 0 validation"):
        optimise_vector(qwen, _vowels(8, 0), layers=LAYERS)
    with pytest.raises(LayerResolutionError, match="out of range"):
        optimise_vector(qwen, data, layers=[1, 99])
    with pytest.raises(ExtractionError, match="must not be empty"):
        optimise_vector(qwen, data, layers=[])
    with pytest.raises(ExtractionError, match="valid: bipo, fewshot"):
        optimise_vector(qwen, data, method="dpo", layers=LAYERS)
    for bad in ({"lr": 0.0}, {"max_strength": float("inf")}, {"steps": 0}, {"batch_size": 0}, {"beta": -1.0}):
        with pytest.raises(ExtractionError, match=next(iter(bad))):
            optimise_vector(qwen, data, layers=LAYERS, **bad)


def test_hooks_removed_and_model_restored(qwen):
    data = _vowels()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        before = qwen.model(input_ids=ids).logits
    hooks = _hook_counts(qwen)
    params = list(qwen.model.parameters())
    original = [p.requires_grad for p in params]
    grads = [i % 2 == 0 for i in range(len(params))]  # a mixed pattern the run must put back exactly
    for p, g in zip(params, grads):
        p.requires_grad_(g)
    qwen.model.train()  # the run switches to eval mode and must switch back
    try:
        optimise_vector(qwen, data, **{**FAST, "steps": 5})
        assert qwen.model.training
        assert [p.requires_grad for p in params] == grads
        qwen.model.eval()

        def boom(_vector):
            assert _hook_counts(qwen) != hooks  # the training hooks are attached (inert) meanwhile
            raise RuntimeError("dev metric failed")

        with pytest.raises(RuntimeError, match="dev metric failed"):
            optimise_vector(qwen, data, **FAST, dev_metric=boom)
        assert [p.requires_grad for p in params] == grads
    finally:
        qwen.model.eval()
        for p, g in zip(params, original):
            p.requires_grad_(g)
    assert _hook_counts(qwen) == hooks
    with torch.no_grad():
        after = qwen.model(input_ids=ids).logits
    assert torch.equal(before, after)


def test_full_text_pairs_and_negative_layers_on_llama():
    lm = get_loaded("llama")
    data = _vowels(prompt=False)
    vec, hist = optimise_vector(lm, data, method="bipo", **{**FAST, "layers": [-1], "steps": 10})
    assert vec.layers == [3] and vec.default_layers == [3] and vec.n_model_layers == 4
    assert hist["best_val_loss"] < hist["initial_val_loss"]
    assert _bipo_val_loss(lm, data, vec, vec.recommended_strength, FAST["beta"]) == FP32_ROUTE.approx(
        hist["best_val_loss"])


def test_cli_extract_bipo(qwen, monkeypatch, tmp_path):
    """`steerwatch extract FILE --method bipo --layers ...` trains and writes a vector whose learned
    strength is the one the run reports; without --layers it fails before the model loads."""
    import json

    from typer.testing import CliRunner

    import steerwatch.cli.extract as cli_extract
    from steerwatch.cli.main import app

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative,
                                        "split": p.split}) + "\n" for p in _vowels().pairs))
    runner = CliRunner()
    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: pytest.fail("model loaded"))
    res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "v.sv"), "--method", "bipo"])
    assert res.exit_code == 2 and "pass --layers" in " ".join(res.output.split())
    for opt, val, what in (("--eval-every", "0", "eval_every must be an integer >= 1"),
                           ("--patience", "-1", "patience must be an integer >= 1"),
                           ("--lr", "0", "lr must be a finite number > 0")):
        res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "v.sv"), "--method", "fewshot",
                                  "--layers", "1", opt, val])
        assert res.exit_code == 2 and what in " ".join(res.output.split()), res.output  # before the model loads
    res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "v.sv"), "--method", "fewshot",
                              "--layers", "2-1"])
    assert res.exit_code == 2 and "runs backwards; write 1-2" in " ".join(res.output.split()), res.output
    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: qwen)
    res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "v.sv"), "--method", "bipo", "--layers",
                              "1", "--steps", "6", "--lr", "0.05", "--eval-every", "2", "--json"])
    assert res.exit_code == 0, res.output
    hist = json.loads(res.stdout[res.stdout.index("{"):])
    vec = load_vector(tmp_path / "v.sv")
    assert vec.method == "bipo" and vec.default_layers == [1]
    assert vec.recommended_strength == FP32_STORED.approx(hist["strength"]) and 0 < hist["strength"] <= 0.1 + 1e-6
    assert vec.extra["optimisation"]["steps_run"] == hist["steps_run"] == 6
    assert vec.extra["optimisation"]["eval_every"] == 2 and [r[0] for r in hist["loss_curve"]] == [0, 2, 4, 6]
