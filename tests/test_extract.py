"""steerwatch.extract (methods, metrics, build) and steerwatch.record / steerwatch.chat: planted
direction recovery, AUROC, end-to-end build on a tiny model, padding-exact recording."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import STEER_ARCHS, BlockCapture, blocks_of, get_loaded, vowel_contrast
from steerwatch.chat import encode_example, render_prompt
from steerwatch.data import ContrastPair, ContrastSet
from steerwatch.errors import ExtractionError, LayerResolutionError, SteerwatchError
from steerwatch.extract import METHODS, check_method, extract_direction
from steerwatch.extract.build import AUTO_BAND, build_vector, resolve_read, resolve_read_method
from steerwatch.extract.metrics import auroc, separation
from steerwatch.record import NormStats, record
from tolerances import DOUBLE, FP32_BATCH, FP32_CANCEL, FP32_ROUTE, changed


# ---------------------------------------------------------------------------- methods on synthetic tensors
def _planted(seed: int, *, a: float = 3.0, noise: float = 1.5, topic: float = 10.0, k: int = 8,
             n: int = 200, d: int = 64, topic_orthogonal: bool = True):
    """pos_i = base_i + a v + noise, neg_i = base_i - a v + noise'. base_i (shared by the two sides
    of pair i) = a common offset + a large random 'topic' in a k-dim subspace."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    v /= v.norm()
    basis = torch.randn(k, d, generator=g)
    if topic_orthogonal:
        basis -= (basis @ v)[:, None] * v
    basis = torch.linalg.qr(basis.T).Q.T  # (k, d) orthonormal rows
    base = topic * torch.randn(n, k, generator=g) @ basis + 3.0 * torch.randn(d, generator=g)
    pos = base + a * v + noise * torch.randn(n, d, generator=g)
    neg = base - a * v + noise * torch.randn(n, d, generator=g)
    return pos, neg, v, basis


# Which methods use the pairing (pos_i and neg_i share base_i) and so cancel a shared "topic"
# however large it is. pca_center is a pooled PCA (all activations centred on their overall
# mean): it ignores the pairing and finds the concept only when the concept dominates the
# variance. logistic is an unpaired probe too, but its covariance-aware fit discounts a large
# topic that is orthogonal to the concept.
TOPIC_ROBUST = ["mean_diff", "pca_diff", "logistic", "lda"]


def _check_recovery(method, pos, neg, v):
    d = extract_direction(method, pos, neg)
    assert d.shape == v.shape and d.dtype == torch.float32
    assert float(d.norm()) == FP32_ROUTE.approx(1.0)
    assert float(d @ v) > 0.9, f"{method}: cosine {float(d @ v):.3f} with the planted direction"
    # swapping the sides flips the direction (sign follows the positive side)
    assert float(extract_direction(method, neg, pos) @ v) < -0.9


@pytest.mark.parametrize("method", list(METHODS))
def test_planted_direction_recovered_concept_dominant(method):
    # every method must find v when the concept is the main axis of variation
    pos, neg, v, basis = _planted(0, a=3.0, noise=1.0, topic=1.0)
    x = torch.cat([pos, neg])
    assert (x @ v).var() > 4 * (x @ basis.T).var(0).max()
    _check_recovery(method, pos, neg, v)


@pytest.mark.parametrize("method", TOPIC_ROBUST)
def test_planted_direction_recovered_under_large_topic(method):
    pos, neg, v, basis = _planted(0)
    # the topic really is large: it dominates the raw variance
    assert (pos @ basis.T).var(0).mean() > 20 * (pos @ v).var()
    _check_recovery(method, pos, neg, v)


@pytest.mark.parametrize("method", ["mean_diff", "pca_diff"])
def test_paired_methods_cancel_a_topic_that_overlaps_the_concept(method):
    # the topic subspace is not orthogonal to v here; pairing (shared base_i) must still cancel it
    pos, neg, v, basis = _planted(1, topic_orthogonal=False)
    assert (basis @ v).norm() > 0.2
    assert float(extract_direction(method, pos, neg) @ v) > 0.9


def test_pca_diff_is_not_a_pooled_pca():
    # a pooled (unpaired) first PC finds the topic; pca_diff must not
    pos, neg, v, basis = _planted(2)
    x = torch.cat([pos, neg])
    _, _, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    assert (basis @ vh[0]).norm() > 0.9  # the naive answer is a topic direction
    assert float(extract_direction("pca_diff", pos, neg) @ v) > 0.9


def test_logistic_is_fit_on_standardised_features_and_mapped_back():
    # Standardising makes the fit blind to a per-feature rescaling x -> x * c (c > 0), so the
    # score x . w must be unchanged: the raw-space direction for the rescaled data is w / c.
    pos, neg, _, _ = _planted(3, a=1.0, noise=1.0, topic=2.0)
    c = torch.logspace(-1, 1, pos.shape[1])  # feature scales from 0.1 to 10
    d1 = extract_direction("logistic", pos, neg)
    d2 = extract_direction("logistic", pos * c, neg * c)
    want = d1 / c
    assert float(d2 @ (want / want.norm())) > 0.9999
    assert float(d2 @ d1) < 0.9  # the rescaling really changes the raw direction


def test_lda_discounts_shared_nuisance_for_unpaired_separation():
    """A concept that is a small, consistent shift along v, with a large between-pair 'topic'
    that overlaps v: mean_diff points along v, so the topic leaks into every unpaired score; lda
    whitens it out and separates held-out examples far better. shrinkage=1 is mean_diff exactly."""
    from steerwatch.extract.methods import lda

    pos, neg, v, basis = _planted(5, a=1.0, noise=0.5, topic=6.0, topic_orthogonal=False, n=400)
    assert (basis @ v).norm() > 0.2
    tr, va = slice(0, 200), slice(200, 400)
    aucs = {}
    for method in ("mean_diff", "lda"):
        d = extract_direction(method, pos[tr], neg[tr])
        aucs[method] = auroc(pos[va] @ d, neg[va] @ d)
    assert aucs["lda"] > 0.98 and aucs["lda"] - aucs["mean_diff"] > 0.1, aucs
    FP32_ROUTE.assert_close(lda(pos, neg, shrinkage=1.0), extract_direction("mean_diff", pos, neg))
    with pytest.raises(ExtractionError, match="shrinkage must be in"):
        lda(pos, neg, shrinkage=0.0)


def test_mean_diff_exact():
    g = torch.Generator().manual_seed(3)
    pos, neg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    want = pos.mean(0) - neg.mean(0)
    FP32_ROUTE.assert_close(extract_direction("mean_diff", pos, neg), want / want.norm())


def test_pca_diff_sign_follows_positive_side():
    # differences all along +e0 with varying length: first PC is +-e0, oriented towards pos
    pos = torch.zeros(6, 3)
    pos[:, 0] = torch.arange(1.0, 7.0)
    neg = torch.zeros(6, 3)
    FP32_ROUTE.assert_close(extract_direction("pca_diff", pos, neg), torch.tensor([1.0, 0.0, 0.0]))
    FP32_ROUTE.assert_close(extract_direction("pca_diff", neg, pos), torch.tensor([-1.0, 0.0, 0.0]))


def test_unknown_method_lists_valid_ones():
    for call in (lambda: check_method("pcaa"), lambda: extract_direction("pcaa", torch.ones(3, 2), torch.zeros(3, 2))):
        with pytest.raises(ExtractionError) as exc:
            call()
        assert "unknown method 'pcaa'" in str(exc.value)
        assert "valid: " + ", ".join(METHODS) in str(exc.value)


@pytest.mark.parametrize("method", list(METHODS))
def test_identical_sides_raise(method):
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(4))
    with pytest.raises(ExtractionError, match="identical"):
        extract_direction(method, x, x.clone())


def test_bad_shapes_raise():
    with pytest.raises(ExtractionError, match="same shape"):
        extract_direction("mean_diff", torch.ones(3, 2), torch.zeros(4, 2))
    with pytest.raises(ExtractionError, match="same shape"):
        extract_direction("mean_diff", torch.ones(3), torch.zeros(3))
    with pytest.raises(ExtractionError, match="at least 2 training pairs"):
        extract_direction("mean_diff", torch.ones(1, 2), torch.zeros(1, 2))


# ---------------------------------------------------------------------------- metrics
def test_auroc_known_values():
    assert auroc(torch.tensor([3.0, 4.0, 5.0]), torch.tensor([0.0, 1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0, 5.0])) == 0.0
    assert auroc(torch.full((4,), 0.7), torch.full((3,), 0.7)) == 0.5
    # pos [3, 1], neg [2, 1]: pairs (3,2)=1, (3,1)=1, (1,2)=0, (1,1)=0.5 -> 2.5 / 4
    assert auroc(torch.tensor([3.0, 1.0]), torch.tensor([2.0, 1.0])) == 0.625
    # pos [0.1, 0.4, 0.35, 0.8] vs neg [0.2, 0.4, 0.6]: wins 0+1.5+1+3 = 5.5 of 12 (0.4 vs 0.4 is a tie)
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.2, 0.4, 0.6])) == DOUBLE.approx(5.5 / 12)
    with pytest.raises(SteerwatchError, match="at least one positive and one negative"):
        auroc(torch.tensor([]), torch.tensor([1.0]))
    with pytest.raises(SteerwatchError, match="1 positive and 0 negative scores that are NaN or infinite"):
        auroc(torch.tensor([float("nan"), 1.0]), torch.tensor([1.0]))


def test_auroc_matches_pairwise_count_on_random_scores():
    g = torch.Generator().manual_seed(5)
    p = torch.randint(0, 6, (17,), generator=g).float()
    n = torch.randint(0, 6, (11,), generator=g).float()
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in p.tolist() for b in n.tolist())
    assert auroc(p, n) == DOUBLE.approx(wins / (17 * 11))


def test_separation_rows():
    p, n = torch.tensor([2.0, 3.0, 0.0]), torch.tensor([1.0, 4.0, -1.0])
    row = separation(p, n)
    assert row["paired_acc"] == DOUBLE.approx(2 / 3)
    pooled = ((p.var(unbiased=False) + n.var(unbiased=False)) / 2).sqrt()
    assert row["cohens_d"] == FP32_ROUTE.approx(float((p.mean() - n.mean()) / pooled))
    assert row["auroc"] == auroc(p, n)


# ---------------------------------------------------------------------------- chat encoding
def test_encode_example_plain_and_chat(qwen, qwen_chat):
    for loaded in (qwen, qwen_chat):
        tok = loaded.tokenizer
        e = encode_example(tok, prompt="Hi?", completion="aei", system="Be brief.")
        prompt_text = render_prompt(tok, "Hi?", system="Be brief.")
        assert e.has_completion and e.span == (e.last_prompt + 1, len(e.ids))
        if loaded.has_chat_template:
            # the template already holds its special tokens: none is added (no doubled BOS)
            assert tok.decode(e.ids[: e.last_prompt + 1]) == prompt_text
            assert e.ids.count(tok.bos_token_id) == prompt_text.count("<bos>") == 3
            assert tok.decode(e.ids[e.span[0]:e.span[1]]) == "aei"
        else:
            # plain format: the tokenizer's BOS, then the plain prompt; completion prefixed by a space
            assert prompt_text == "Be brief.\n\nUser: Hi?\nAssistant:"
            assert tok.decode(e.ids[: e.last_prompt + 1]) == "<bos>" + prompt_text
            assert e.ids.count(tok.bos_token_id) == 1
            assert tok.decode(e.ids[e.span[0]:e.span[1]]) == " aei"
        full = encode_example(tok, prompt=None, completion="two words")
        assert full.ids[0] == tok.bos_token_id and full.span == (1, len(full.ids)) and not full.has_completion
        assert tok.decode(full.ids[1:]) == "two words"


# ---------------------------------------------------------------------------- recording under padding
def _examples(tok):
    rng = random.Random(0)
    out = []
    for i in range(10):
        prompt = None if i % 3 == 0 else "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(1, 12)))
        comp = "".join(rng.choice("xyz0123") for _ in range(rng.randint(1, 9)))
        out.append(encode_example(tok, prompt=prompt, completion=comp))
    assert len({len(e.ids) for e in out}) >= 6
    return out


def _manual(loaded, examples, layers):
    """Per example, unpadded and alone: block outputs at ``layers`` (list of (seq, d))."""
    blocks = blocks_of(loaded)
    res = []
    for e in examples:
        with BlockCapture(blocks) as cap, torch.no_grad():
            loaded.model(input_ids=torch.tensor([e.ids]), use_cache=False)
        res.append([cap.outs[layer][0][0] for layer in layers])
    return res


@pytest.mark.parametrize("arch", STEER_ARCHS)
def test_record_padding_exact(arch):
    loaded = get_loaded(arch)
    examples = _examples(loaded.tokenizer)
    layers = [0, 2, 3]
    manual = _manual(loaded, examples, layers)
    for read in ("completion_mean", "last_prompt", "last_token"):
        n4, n1 = NormStats(), NormStats()
        f4 = record(loaded, examples, layers=layers, read=read, batch_size=4, norms=n4)
        f1 = record(loaded, examples, layers=layers, read=read, batch_size=1, norms=n1)
        assert f4.shape == (len(examples), len(layers), loaded.hidden_size)
        FP32_BATCH.assert_close(f4, f1)
        want = torch.stack([
            torch.stack([
                h[e.span[0]:e.span[1]].mean(0) if read == "completion_mean"
                else h[e.last_prompt] if read == "last_prompt" else h[len(e.ids) - 1]
                for h in hs])
            for e, hs in zip(examples, manual)])
        FP32_BATCH.assert_close(f4, want)
        s4, s1 = n4.summary(), n1.summary()
        n_tokens = sum(len(e.ids) - 1 for e in examples)
        for j, layer in enumerate(layers):
            norms = torch.cat([hs[j][1:].norm(dim=-1) for hs in manual])  # every token but the first
            assert s4[layer]["n_tokens"] == s1[layer]["n_tokens"] == n_tokens
            assert s4[layer]["mean"] == FP32_ROUTE.approx(float(norms.mean()))
            assert s4[layer]["std"] == FP32_CANCEL.approx(float(norms.std(unbiased=False)))
    # the reads are different things (the test can tell them apart)
    a = record(loaded, examples, layers=[1], read="completion_mean", batch_size=4)
    b = record(loaded, examples, layers=[1], read="last_prompt", batch_size=4)
    assert changed(a, b)


def test_record_bad_options(qwen):
    ex = _examples(qwen.tokenizer)[:2]
    with pytest.raises(ExtractionError, match="unknown read position 'middle'"):
        record(qwen, ex, layers=[0], read="middle")
    with pytest.raises(ExtractionError, match="batch_size"):
        record(qwen, ex, layers=[0], read="last_token", batch_size=0)
    with pytest.raises(LayerResolutionError, match=r"0..3"):
        record(qwen, ex, layers=[4], read="last_token")


def test_record_removes_its_hooks(qwen):
    blocks = blocks_of(qwen)
    before = [set(b._forward_hooks) for b in blocks]
    record(qwen, _examples(qwen.tokenizer), layers=[0, 1, 3], read="completion_mean", batch_size=3)
    assert [set(b._forward_hooks) for b in blocks] == before


# ---------------------------------------------------------------------------- resolve_read
def _pair_set(shared: bool) -> ContrastSet:
    pairs = [ContrastPair(positive=f"yes {i}", negative=f"no {i}", prompt=f"q{i}" if shared else None,
                          split="val" if i % 4 == 0 else "train") for i in range(8)]
    return ContrastSet(name="tiny", pairs=pairs)


def test_resolve_read():
    shared, full = _pair_set(True), _pair_set(False)
    with pytest.raises(ExtractionError, match=r"identical activations.*completion_mean"):
        resolve_read("last_prompt", shared)
    assert resolve_read("last_prompt", full) == "last_prompt"
    assert resolve_read("auto", shared) == "completion_mean"
    assert resolve_read("last_token", shared) == "last_token"
    with pytest.raises(ExtractionError, match="unknown read position"):
        resolve_read("first", shared)


# ---------------------------------------------------------------------------- end to end on a tiny model
def _contrast(n: int = 20) -> ContrastSet:
    return vowel_contrast(n)


@pytest.mark.parametrize("which, method", [("qwen", m) for m in METHODS] + [("qwen_chat", "mean_diff")])
def test_build_vector_end_to_end(method, which, request):
    loaded = request.getfixturevalue(which)
    data = _contrast()
    assert (len(data.train), len(data.val)) == (14, 6)
    vec, rows = build_vector(loaded, data, method=method, layers="auto", progress=False, batch_size=4)
    L = loaded.n_layers
    assert vec.layers == list(range(L)) and vec.n_model_layers == L
    assert vec.method == method and vec.read_position == "completion_mean" and vec.concept == "vowels"
    assert vec.model_fingerprint == loaded.fingerprint and vec.hidden_size == loaded.hidden_size
    assert vec.dataset["n_train"] == 14 and vec.dataset["n_val"] == 6 and vec.dataset["sha256"] == data.sha256
    for layer in range(L):
        assert float(vec.direction(layer).norm()) == FP32_ROUTE.approx(1.0)
    assert [r.layer for r in rows] == list(range(L)) and set(vec.validation) == set(range(L))
    for r in rows:
        assert 0.0 <= r.auroc <= 1.0 and vec.validation[r.layer]["auroc"] == r.auroc

    # recompute features by hand (each example alone, hooks on the blocks)
    pairs = data.train + data.val
    pos_ex = [encode_example(loaded.tokenizer, prompt=p.prompt, completion=p.positive) for p in pairs]
    neg_ex = [encode_example(loaded.tokenizer, prompt=p.prompt, completion=p.negative) for p in pairs]
    layers = list(range(L))
    man_pos, man_neg = _manual(loaded, pos_ex, layers), _manual(loaded, neg_ex, layers)

    def feats(man, exs, layer):
        return torch.stack([hs[layer][e.span[0]:e.span[1]].mean(0) for hs, e in zip(man, exs)])

    for layer in layers:
        fp, fn = feats(man_pos, pos_ex, layer), feats(man_neg, neg_ex, layer)
        d = vec.direction(layer)
        if method == "mean_diff":
            want = fp[:14].mean(0) - fn[:14].mean(0)
            FP32_CANCEL.assert_close(d, want / want.norm())
        else:
            assert float(d @ extract_direction(method, fp[:14], fn[:14])) > 0.999
        # validation is computed on the 6 held-out pairs only (a rank statistic: the same ranks give the
        # same fraction; one rank flipped would move it by 1/36)
        assert vec.validation[layer]["auroc"] == DOUBLE.approx(auroc(fp[14:] @ d, fn[14:] @ d))
        assert vec.validation[layer]["paired_acc"] == DOUBLE.approx(
            float(((fp[14:] @ d) > (fn[14:] @ d)).double().mean()))
        # residual norm: every token of every example except each sequence's first
        norms = torch.cat([hs[layer][1:].norm(dim=-1) for hs in man_pos + man_neg])
        with_first = torch.cat([hs[layer].norm(dim=-1) for hs in man_pos + man_neg])
        stat = vec.residual_norm[layer]
        assert stat["n_tokens"] == norms.numel() == with_first.numel() - 2 * len(pairs)
        assert stat["mean"] > 0 and stat["mean"] == FP32_ROUTE.approx(float(norms.mean()))
        assert vec.norm(layer) == stat["mean"]
        assert stat["mean"] != FP32_ROUTE.approx(float(with_first.mean()))  # the tolerance tells them apart

    # default layer: the best validation AUROC inside the auto band
    assert len(vec.default_layers) == 1
    lo, hi = int(AUTO_BAND[0] * L), max(int(AUTO_BAND[0] * L) + 1, round(AUTO_BAND[1] * L))
    (chosen,) = vec.default_layers
    assert lo <= chosen < hi
    assert round(vec.validation[chosen]["auroc"], 3) == max(round(r.auroc, 3) for r in rows if lo <= r.layer < hi)
    assert [r.layer for r in rows if r.selected] == [chosen]
    # the tiny model does separate vowels from digits (pooled PCA, which ignores the pairing,
    # picks up other variation too: only require it to beat chance clearly)
    assert vec.validation[chosen]["auroc"] >= (0.7 if method == "pca_center" else 0.95)


def test_build_vector_with_read_directions(qwen):
    data = _contrast()
    plain, _ = build_vector(qwen, data, progress=False, batch_size=4)
    vec, rows = build_vector(qwen, data, read_method="lda", progress=False, batch_size=4)
    assert plain.read_directions == {} and plain.read_method is None
    assert vec.method == "mean_diff" and vec.read_method == "lda" and set(vec.read_directions) == set(vec.layers)
    ordered = data.train + data.val
    pos_ex = [encode_example(qwen.tokenizer, prompt=p.prompt, completion=p.positive) for p in ordered]
    neg_ex = [encode_example(qwen.tokenizer, prompt=p.prompt, completion=p.negative) for p in ordered]
    layers = list(range(qwen.n_layers))
    fp = record(qwen, pos_ex, layers=layers, read="completion_mean")
    fn = record(qwen, neg_ex, layers=layers, read="completion_mean")
    for layer in layers:
        # the steering directions are untouched by the read method, and the defaults are theirs
        assert torch.equal(vec.directions[layer], plain.directions[layer])
        r = vec.read_directions[layer]
        assert float(r @ extract_direction("lda", fp[:14, layer], fn[:14, layer])) > 0.9999
        sep = separation(fp[14:, layer] @ r, fn[14:, layer] @ r)
        assert rows[layer].read_auroc == DOUBLE.approx(sep["auroc"]) == vec.read_auroc(layer)
        assert rows[layer].auroc == vec.auroc(layer) == plain.auroc(layer)
    assert vec.default_layers == plain.default_layers
    # same method for both: no separate read directions; "none" turns a concept default off
    assert resolve_read_method("mean_diff", data, "mean_diff") is None
    assert resolve_read_method("none", ContrastSet(name="c", pairs=data.pairs, default_read_method="lda"),
                               "mean_diff") is None
    assert resolve_read_method(None, ContrastSet(name="c", pairs=data.pairs, default_read_method="lda"),
                               "mean_diff") == "lda"
    with pytest.raises(ExtractionError, match="unknown method 'ldaa'"):
        build_vector(qwen, data, read_method="ldaa", progress=False)


def test_build_vector_explicit_layers_and_errors(qwen):
    data = _contrast()
    vec, _ = build_vector(qwen, data, layers=[2, -1], progress=False)
    assert vec.default_layers == [2, 3] and vec.layers == [0, 1, 2, 3]
    with pytest.raises(ExtractionError, match="'auto' or a list"):
        build_vector(qwen, data, layers="2", progress=False)
    with pytest.raises(LayerResolutionError):
        build_vector(qwen, data, layers=[9], progress=False)
    with pytest.raises(ExtractionError, match="read position 'last_prompt'"):
        build_vector(qwen, data, read="last_prompt", progress=False)
    few_val = ContrastSet(name="x", pairs=[ContrastPair(positive=p.positive, negative=p.negative, prompt=p.prompt,
                                                        split="train") for p in data.pairs[:-1]] + [data.pairs[-1]])
    with pytest.raises(ExtractionError, match="at least 2 validation pairs"):
        build_vector(qwen, few_val, progress=False)


def test_build_vector_unknown_method_fails_before_any_forward(qwen):
    calls = []
    h = qwen.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ExtractionError, match="unknown method 'pcaa'; valid: mean_diff, pca_diff"):
            build_vector(qwen, _contrast(), method="pcaa", progress=False)
    finally:
        h.remove()
    assert calls == []


# --------------------------------------------------------------------------- layer choice
def _rows(aurocs):
    from steerwatch.extract.build import LayerRow

    return [LayerRow(layer=i, auroc=a, paired_acc=a, cohens_d=float(i) / 100, norm=1.0) for i, a in enumerate(aurocs)]


def test_choose_layers_window_ends_one_after_the_best_layer():
    from steerwatch.extract.build import choose_layers, default_window

    aurocs = [0.5] * 24
    aurocs[13] = 0.95
    assert choose_layers(_rows(aurocs), 24, k=6) == [9, 10, 11, 12, 13, 14]
    assert choose_layers(_rows(aurocs), 24, k=1) == [13]
    assert default_window(24) == 6 and default_window(18) == 4 and default_window(2) == 1


def test_choose_layers_stays_in_band_and_inside_the_model():
    from steerwatch.extract.build import choose_layers

    aurocs = [0.5] * 24
    aurocs[23] = 0.99  # outside the auto band (the last blocks): ignored
    aurocs[5] = 0.9
    assert choose_layers(_rows(aurocs), 24, k=1) == [5]
    aurocs = [0.5] * 4
    aurocs[3] = 0.9
    # a window larger than the band is clipped to the model
    assert choose_layers(_rows(aurocs), 4, k=6) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- persona contrast
def test_persona_pairs_keep_the_answers_and_drop_the_instruction(qwen_chat):
    """The label must live in the completion alone: pairs carry the question and the two answers
    generated under the two system prompts, and no system prompt."""
    from steerwatch import generate
    from steerwatch.data import PersonaSpec
    from steerwatch.extract.persona import build_persona_pairs

    spec = PersonaSpec(name="p", instructions=[("be kind", "be rude"), ("agree", "disagree")],
                       questions=["q one", "q two", "q three"])
    data = build_persona_pairs(qwen_chat, spec, max_new_tokens=6)
    assert data.name == "p" and data.source.startswith("persona:")
    for _k, p in enumerate(data.pairs):
        assert p.system is None and p.prompt in spec.questions
        qi = spec.questions.index(p.prompt)
        pos_sys, neg_sys = spec.instructions[qi % 2]
        want_pos = generate(qwen_chat, [[{"role": "system", "content": pos_sys}, {"role": "user",
                                                                                  "content": p.prompt}]],
                            max_new_tokens=6)[0]
        want_neg = generate(qwen_chat, [[{"role": "system", "content": neg_sys}, {"role": "user",
                                                                                  "content": p.prompt}]],
                            max_new_tokens=6)[0]
        assert (p.positive, p.negative) == (want_pos, want_neg)
    # every question made a pair unless the two instructions gave the same answer
    assert 1 <= len(data.pairs) <= 3


def test_cli_extract_read_method_and_info(qwen_chat, monkeypatch, tmp_path):
    import json

    from typer.testing import CliRunner

    import steerwatch.cli.extract as cli_extract
    from steerwatch.cli.main import app
    from steerwatch.vector import load_vector

    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: qwen_chat)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative,
                                        "split": p.split}) + "\n" for p in _contrast().pairs))
    runner = CliRunner()
    res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "v.sv"), "--read-method", "lda"])
    assert res.exit_code == 0, res.output
    vec = load_vector(tmp_path / "v.sv")
    assert vec.method == "mean_diff" and vec.read_method == "lda" and set(vec.read_directions) == set(vec.layers)
    flat = " ".join(res.output.split())
    assert "read directions (lda, for detectors)" in flat
    info = runner.invoke(app, ["info", str(tmp_path / "v.sv")])
    assert info.exit_code == 0 and '"read_method": "lda"' in info.output, info.output
    # a file's default is no read directions; a bad read method fails before the model loads
    res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "w.sv")])
    assert res.exit_code == 0 and load_vector(tmp_path / "w.sv").read_directions == {}
    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: pytest.fail("model loaded"))
    res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "x.sv"), "--read-method", "ldaa"])
    assert res.exit_code == 2 and "unknown method 'ldaa'" in res.output


def test_builtin_vector_is_built_once_and_its_rows_survive_the_cache(qwen_chat, tmp_path):
    """extract.library.builtin_vector: the first call builds (as `steerwatch extract NAME`), the second
    reads the cached file and returns the same directions and the same per-layer validation rows."""
    from steerwatch.data import load_concept
    from steerwatch.extract.library import builtin_vector

    logs: list[str] = []
    vec, rows, path = builtin_vector(qwen_chat, "sycophancy", cache_root=tmp_path, log=logs.append)
    assert path.is_file() and path.parent == tmp_path / "vectors" / qwen_chat.fingerprint and len(logs) == 1
    ref, ref_rows = build_vector(qwen_chat, load_concept("sycophancy"), progress=False)
    assert all(torch.equal(vec.directions[k], ref.directions[k]) for k in ref.directions)
    again, rows2, path2 = builtin_vector(qwen_chat, "sycophancy", cache_root=tmp_path, log=logs.append)
    assert path2 == path and len(logs) == 1  # read, not rebuilt
    assert [r.as_dict() for r in rows2] == [r.as_dict() for r in rows] == [r.as_dict() for r in ref_rows]
    assert all(torch.equal(again.directions[k], ref.directions[k]) for k in ref.directions)
    cheat = builtin_vector(qwen_chat, "cheating", cache_root=tmp_path)[1]  # a card with read directions
    assert cheat[0].read_auroc is not None
    assert [r.as_dict() for r in builtin_vector(qwen_chat, "cheating", cache_root=tmp_path)[1]] == \
        [r.as_dict() for r in cheat]
