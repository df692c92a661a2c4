"""steerwatch.steer: exact hook arithmetic, positions, several vectors, per-row steering under
generate() with left padding and a KV cache, hook removal, and every bad input."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import (
    STEER_ARCHS,
    BlockCapture,
    blocks_of,
    forward_blocks,
    get_loaded,
    greedy,
    left_pad,
    make_vector,
    random_ids,
    trim_eos,
)
from steerwatch import generate
from steerwatch.chat import encode_prompt, render_prompt
from steerwatch.errors import LayerResolutionError, SteerSpecError, VectorMismatchError
from steerwatch.steer import SteerSpec, attach, parse_steer_spec, steering
from tolerances import FP32_ROUTE, changed

# a different typical norm per layer, so that using the wrong layer's norm shows
NORMS = {0: 1.5, 1: 2.5, 2: 3.0, 3: 0.7}


def _proj(h: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return (h * u).sum(-1)  # (batch, seq)


def _steered_run(loaded, specs, ids, **kw):
    """One forward under steering; returns (raw, final): per block, the block output before and
    after the steering hooks of this same forward pass."""
    blocks = blocks_of(loaded)
    raw = BlockCapture(blocks)  # registered first: sees the unsteered block outputs
    try:
        with steering(loaded, specs, **kw), BlockCapture(blocks) as final, torch.no_grad():
            loaded.model(input_ids=ids, use_cache=False)
    finally:
        raw.remove()
    return [o[0] for o in raw.outs], [o[0] for o in final.outs]


# ---------------------------------------------------------------------------- exact arithmetic
@pytest.mark.parametrize("arch", STEER_ARCHS)
@pytest.mark.parametrize("layer", [0, 2])
def test_add_changes_only_target_layer_by_exact_amount(arch, layer):
    loaded = get_loaded(arch)
    vec = make_vector(loaded, norm_mean=NORMS, seed=3)
    ids = random_ids(2, 7, seed=4)
    base = forward_blocks(loaded, ids)
    s = 0.5
    with steering(loaded, [SteerSpec(vec, strength=s, layers=(layer,))]):
        steered = forward_blocks(loaded, ids)
    for i in range(layer):
        assert torch.equal(steered[i], base[i]), f"block {i} upstream of layer {layer} changed"
    u = vec.direction(layer)
    expected = base[layer] + (s * NORMS[layer]) * u
    assert torch.equal(steered[layer], expected)
    # the push really is s * norm_L long, along u, at every position
    diff = steered[layer] - base[layer]
    FP32_ROUTE.assert_close(diff.norm(dim=-1), torch.full((2, 7), s * NORMS[layer]))
    FP32_ROUTE.assert_close(_proj(diff, u), torch.full((2, 7), s * NORMS[layer]))
    # downstream blocks see the change
    assert changed(steered[layer + 1], base[layer + 1])


@pytest.mark.parametrize("arch", STEER_ARCHS)
def test_ablate_removes_projection_and_keeps_orthogonal_part(arch):
    loaded = get_loaded(arch)
    vec = make_vector(loaded, norm_mean=NORMS, seed=5)
    layer = 1
    ids = random_ids(2, 7, seed=6)
    base = forward_blocks(loaded, ids)
    # point the direction along the mean residual so that there is a large component to remove
    d = base[layer].mean((0, 1))
    vec.directions[layer] = d / d.norm()
    u = vec.direction(layer)
    raw, final = _steered_run(loaded, [SteerSpec(vec, op="ablate", layers=(layer,))], ids)
    assert torch.equal(raw[layer], base[layer])
    assert _proj(raw[layer], u).abs().mean() > 1e-2  # something to ablate (1000x the tolerance below)
    FP32_ROUTE.assert_close(_proj(final[layer], u), torch.zeros(2, 7))
    orth_before = raw[layer] - _proj(raw[layer], u)[..., None] * u
    orth_after = final[layer] - _proj(final[layer], u)[..., None] * u
    FP32_ROUTE.assert_close(orth_after, orth_before)
    for i in range(layer):
        assert torch.equal(final[i], base[i])
    assert changed(final[layer + 1], base[layer + 1])


@pytest.mark.parametrize("arch", STEER_ARCHS)
@pytest.mark.parametrize("strength", [0.8, -0.3])
def test_clamp_sets_projection(arch, strength):
    loaded = get_loaded(arch)
    vec = make_vector(loaded, norm_mean=NORMS, seed=7)
    layer = 2
    ids = random_ids(3, 5, seed=8)
    u = vec.direction(layer)
    raw, final = _steered_run(loaded, [SteerSpec(vec, op="clamp", strength=strength, layers=(layer,))], ids)
    target = torch.full((3, 5), strength * NORMS[layer])
    assert changed(_proj(raw[layer], u), target)
    FP32_ROUTE.assert_close(_proj(final[layer], u), target)
    orth_before = raw[layer] - _proj(raw[layer], u)[..., None] * u
    orth_after = final[layer] - _proj(final[layer], u)[..., None] * u
    FP32_ROUTE.assert_close(orth_after, orth_before)
    for i in (0, 1, 3):
        assert torch.equal(final[i], raw[i])


def _clamp(h, u, t):
    return h + (t - _proj(h, u))[..., None] * u


@pytest.mark.parametrize("arch", STEER_ARCHS)
def test_several_vectors_each_with_own_layers_and_op(arch):
    loaded = get_loaded(arch)
    v1 = make_vector(loaded, seed=11, norm_mean=2.0, concept="v1")
    v2 = make_vector(loaded, seed=12, norm_mean=3.0, concept="v2")
    v3 = make_vector(loaded, seed=13, norm_mean=1.5, concept="v3")
    specs = [
        SteerSpec(v1, strength=0.4, layers=(1, 3)),
        SteerSpec(v2, op="clamp", strength=0.3, layers=(1, 2)),
        SteerSpec(v3, op="ablate", layers=(2,)),
        SteerSpec(v3, strength=-0.2, layers=(2,)),
    ]
    ids = random_ids(2, 6, seed=14)
    base = forward_blocks(loaded, ids)
    raw, final = _steered_run(loaded, specs, ids)
    assert torch.equal(raw[0], base[0]) and torch.equal(final[0], base[0])
    assert torch.equal(raw[1], base[1])
    # projections first (in the order given), then all adds
    exp1 = _clamp(raw[1], v2.direction(1), 0.3 * 3.0) + 0.4 * 2.0 * v1.direction(1)
    exp2 = _clamp(_clamp(raw[2], v2.direction(2), 0.3 * 3.0), v3.direction(2), 0.0) - 0.2 * 1.5 * v3.direction(2)
    exp3 = raw[3] + 0.4 * 2.0 * v1.direction(3)
    for got, exp in ((final[1], exp1), (final[2], exp2), (final[3], exp3)):
        FP32_ROUTE.assert_close(got, exp)
    # the clamp at layer 1 was real work (the projection moved)
    assert (_proj(raw[1], v2.direction(1)) - 0.9).abs().min() > 1e-2


@pytest.mark.parametrize("arch", STEER_ARCHS)
def test_per_row_forward_arithmetic(arch):
    loaded = get_loaded(arch)
    v1 = make_vector(loaded, seed=21, norm_mean=NORMS)
    v2 = make_vector(loaded, seed=22, norm_mean=2.0)
    rows = [[SteerSpec(v1, strength=0.5, layers=(1,))],
            [],
            [SteerSpec(v2, op="clamp", strength=-0.4, layers=(1,)), SteerSpec(v1, strength=-0.25, layers=(1,))]]
    ids = random_ids(3, 6, seed=23)
    raw, final = _steered_run(loaded, None, ids, rows=rows)
    exp = torch.stack([
        raw[1][0] + 0.5 * NORMS[1] * v1.direction(1),
        raw[1][1],
        _clamp(raw[1][2], v2.direction(1), -0.4 * 2.0) - 0.25 * NORMS[1] * v1.direction(1),
    ])
    FP32_ROUTE.assert_close(final[1], exp)
    assert torch.equal(final[1][1], raw[1][1])
    assert torch.equal(final[0], raw[0])


# ---------------------------------------------------------------------------- strength 0, removal
@pytest.mark.parametrize("arch", STEER_ARCHS)
def test_strength_zero_is_exactly_unsteered(arch):
    loaded = get_loaded(arch)
    vec = make_vector(loaded, seed=1)
    ids = random_ids(2, 6, seed=2)
    with torch.no_grad():
        base = loaded.model(input_ids=ids, use_cache=False).logits
        with steering(loaded, [SteerSpec(vec, strength=0.0, layers=(0, 1, 2, 3))]):
            out = loaded.model(input_ids=ids, use_cache=False).logits
        with steering(loaded, [SteerSpec(vec, strength=0.3, layers=(1,))]):
            moved = loaded.model(input_ids=ids, use_cache=False).logits
    assert torch.equal(out, base)
    assert changed(moved, base)  # the same path with a strength does move


def _hook_ids(loaded):
    # transformers 5 installs its own persistent hooks (hidden-state capture) on blocks, so compare
    # the exact set of hook ids instead of expecting none at all
    return ([set(b._forward_hooks) for b in blocks_of(loaded)], set(loaded.model._forward_pre_hooks),
            set(loaded.model._forward_hooks))


@pytest.mark.parametrize("arch", STEER_ARCHS)
def test_hooks_removed_on_normal_exit_and_on_exception(arch):
    loaded = get_loaded(arch)
    vec = make_vector(loaded, seed=1)
    ids = random_ids(1, 6, seed=3)
    before = _hook_ids(loaded)
    with torch.no_grad():
        base = loaded.model(input_ids=ids).logits
    specs = [SteerSpec(vec, strength=1.0, layers=(1, 2)), SteerSpec(vec, op="ablate", layers=(3,))]
    with steering(loaded, specs) as handle:
        during = _hook_ids(loaded)
        assert handle.active
        with torch.no_grad():
            assert changed(loaded.model(input_ids=ids).logits, base)
    assert during != before  # hooks really were there
    assert not handle.active
    assert _hook_ids(loaded) == before
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, base)

    with pytest.raises(RuntimeError, match="boom"), steering(loaded, specs):
        raise RuntimeError("boom")
    assert _hook_ids(loaded) == before
    with torch.no_grad():
        assert torch.equal(loaded.model(input_ids=ids).logits, base)


def test_handle_remove_is_idempotent(qwen):
    vec = make_vector(qwen, seed=1)
    before = _hook_ids(qwen)
    handle = attach(qwen, [SteerSpec(vec, strength=0.5)])
    assert handle.active and _hook_ids(qwen) != before
    handle.remove()
    handle.remove()
    assert not handle.active and _hook_ids(qwen) == before
    with handle:  # removing an already removed handle is a no-op
        pass
    assert _hook_ids(qwen) == before
    # the handle is also a context manager that removes on exit
    with attach(qwen, [SteerSpec(vec, strength=0.5)]) as h2:
        assert h2.active and _hook_ids(qwen) != before
    assert not h2.active and _hook_ids(qwen) == before


def test_rows_batch_mismatch_raises_and_hooks_removed(qwen):
    vec = make_vector(qwen, seed=1)
    before = _hook_ids(qwen)
    rows = [[SteerSpec(vec, strength=0.5)], []]
    with pytest.raises(SteerSpecError) as exc, steering(qwen, rows=rows), torch.no_grad():
        qwen.model(input_ids=random_ids(3, 5))
    msg = str(exc.value)
    assert "2 rows" in msg and "has 3" in msg and "per batch row" in msg
    assert _hook_ids(qwen) == before
    # also with a projection op only
    with pytest.raises(SteerSpecError, match="per-row"), steering(qwen, rows=[[SteerSpec(vec, op="ablate")]]), \
            torch.no_grad():
        qwen.model(input_ids=random_ids(2, 5))
    assert _hook_ids(qwen) == before


# ---------------------------------------------------------------------------- positions under generate()
@pytest.mark.parametrize("arch", STEER_ARCHS)
def test_positions_generated_and_prompt(arch):
    loaded = get_loaded(arch)
    vec = make_vector(loaded, seed=31, norm_mean=NORMS)
    layer = 1
    ids = random_ids(1, 6, seed=32)
    att = torch.ones_like(ids)
    base = greedy(loaded, ids, att, max_new_tokens=6, output_logits=True, return_dict_in_generate=True)
    n_steps = len(base.logits)
    blocks = blocks_of(loaded)
    u, push = vec.direction(layer), 3.0 * NORMS[layer]

    def run(positions):
        raw = BlockCapture(blocks)
        try:
            with steering(loaded, [SteerSpec(vec, strength=3.0, layers=(layer,), positions=positions)]), \
                    BlockCapture(blocks) as final:
                out = greedy(loaded, ids, att, max_new_tokens=6, output_logits=True, return_dict_in_generate=True)
        finally:
            raw.remove()
        return out, raw.outs[layer], final.outs[layer]

    # generated: the prompt forward pass (call 0) is untouched, every later call is pushed
    out, raw, final = run("generated")
    assert len(raw) == n_steps and raw[0].shape[1] == ids.shape[1] and raw[1].shape[1] == 1  # KV cache in use
    assert torch.equal(final[0], raw[0])
    for r, f in zip(raw[1:], final[1:]):
        assert torch.equal(f, r + push * u)
    assert torch.equal(out.logits[0], base.logits[0])  # first generated token's logits identical
    assert any(changed(a, b) for a, b in zip(out.logits[1:], base.logits[1:]))

    # prompt: only the prefill is pushed
    out, raw, final = run("prompt")
    assert torch.equal(final[0], raw[0] + push * u)
    for r, f in zip(raw[1:], final[1:]):
        assert torch.equal(f, r)
    assert changed(out.logits[0], base.logits[0])

    # all: both
    out, raw, final = run("all")
    for r, f in zip(raw, final):
        assert torch.equal(f, r + push * u)


# ---------------------------------------------------------------------------- per-row steering, batched generate
PROMPTS = ["hi", "what is the capital of France?", "tell me a story", "2+2=?"]


def _row_specs(loaded):
    v1 = make_vector(loaded, seed=41, norm_mean=NORMS, concept="v1")
    v2 = make_vector(loaded, seed=42, norm_mean=2.0, concept="v2")
    v3 = make_vector(loaded, seed=43, norm_mean=1.0, concept="v3")
    return [
        [SteerSpec(v1, strength=2.0, layers=(1,))],
        [],  # this row is not steered
        [SteerSpec(v2, op="clamp", strength=3.0, layers=(2,)), SteerSpec(v3, strength=1.5, layers=(0,))],
        [SteerSpec(v1, strength=-2.0, layers=(1, 2), positions="generated"),
         SteerSpec(v3, op="ablate", layers=(1,))],
    ]


@pytest.mark.parametrize("arch", STEER_ARCHS)
def test_per_row_generate_left_padded_equals_alone(arch):
    loaded = get_loaded(arch)
    tok = loaded.tokenizer
    rows = _row_specs(loaded)
    seqs = [encode_prompt(tok, render_prompt(tok, p)) for p in PROMPTS]
    assert len({len(s) for s in seqs}) == len(seqs)  # different lengths: real left padding
    ids, att = left_pad(seqs, tok.pad_token_id)
    width = ids.shape[1]
    eos = tok.eos_token_id
    with steering(loaded, rows=rows):
        batched = greedy(loaded, ids, att)
    for r, (seq, specs) in enumerate(zip(seqs, rows)):
        one_ids, one_att = left_pad([seq])
        if specs:
            with steering(loaded, specs):
                alone = greedy(loaded, one_ids, one_att)
        else:
            alone = greedy(loaded, one_ids, one_att)
        plain = greedy(loaded, one_ids, one_att)
        got = trim_eos(batched[r, width:].tolist(), eos)
        want = trim_eos(alone[0, len(seq):].tolist(), eos)
        assert got == want, f"row {r}: batched {got} != alone {want}"
        unsteered = trim_eos(plain[0, len(seq):].tolist(), eos)
        if specs:
            assert want != unsteered, f"row {r}: steering did not change the output; the test would be vacuous"
        else:
            assert want == unsteered


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_generation_generate_rows_equal_alone(arch):
    loaded = get_loaded(arch)
    rows = _row_specs(loaded)
    batched = generate(loaded, PROMPTS, rows=rows, max_new_tokens=8)
    alone = [generate(loaded, [p], steer=specs or None, max_new_tokens=8)[0] for p, specs in zip(PROMPTS, rows)]
    plain = generate(loaded, PROMPTS, max_new_tokens=8)
    assert batched == alone
    assert [b != p for b, p in zip(batched, plain)] == [bool(s) for s in rows]
    # shared steering (steer=) is the same as giving every row the same specs
    shared = rows[0]
    assert generate(loaded, PROMPTS, steer=shared, max_new_tokens=8) == \
        generate(loaded, PROMPTS, rows=[shared] * len(PROMPTS), max_new_tokens=8)


def test_generation_generate_bad_rows(qwen):
    from steerwatch.errors import SteerwatchError

    vec = make_vector(qwen)
    with pytest.raises(SteerwatchError, match="one list of steering specs per prompt"):
        generate(qwen, PROMPTS, rows=[[]] * 3, max_new_tokens=2)
    with pytest.raises(SteerwatchError, match="not both"):
        generate(qwen, PROMPTS, rows=[[]] * 4, steer=[SteerSpec(vec, strength=0.1)], max_new_tokens=2)


# ---------------------------------------------------------------------------- bad input
def test_bad_specs(qwen):
    vec = make_vector(qwen, layers=[0, 1, 2])
    with pytest.raises(SteerSpecError, match="unknown steering operation 'mul'; valid: add, ablate, clamp"):
        SteerSpec(vec, op="mul", strength=0.1)
    with pytest.raises(SteerSpecError, match="unknown positions 'middle'; valid: all, prompt, generated"):
        SteerSpec(vec, strength=0.1, positions="middle")
    for bad in (math.nan, math.inf, -math.inf, "0.3", None):
        with pytest.raises(SteerSpecError, match="strength must be a finite number"):
            SteerSpec(vec, strength=bad)
    with pytest.raises(SteerSpecError, match=r"no direction for layer 3; it has layers \[0, 1, 2\]"):
        SteerSpec(vec, strength=0.1, layers=(1, 3))
    spec = SteerSpec(vec, strength=0.1)
    with pytest.raises(SteerSpecError, match="exactly one of specs"):
        attach(qwen, [spec], rows=[[spec]])
    with pytest.raises(SteerSpecError, match="exactly one of specs"):
        attach(qwen)
    with pytest.raises(SteerSpecError, match="must be SteerSpec objects"):
        attach(qwen.model, ["honesty.sv:+0.3"])


def test_vector_layer_beyond_model_on_bare_model(qwen):
    vec = make_vector(qwen, layers=[1, 6], default_layers=[6])
    vec.n_model_layers = None
    with pytest.raises(LayerResolutionError, match=r"valid layers are 0..3"):
        attach(qwen.model, [SteerSpec(vec, strength=0.1)])


def test_describe(qwen):
    vec = make_vector(qwen, concept="honesty")
    assert SteerSpec(vec, strength=0.3, layers=(1, 2)).describe() == "honesty@1,2:+0.3"
    assert SteerSpec(vec, op="clamp", strength=0.5, positions="generated").describe() == "honesty@1:clamp=0.5:generated"
    assert SteerSpec(vec, op="ablate").describe() == "honesty@1:ablate"


@pytest.fixture
def loader(qwen):
    vec = make_vector(qwen, layers=[0, 1, 2, 3], default_layers=[2])
    seen = []

    def load(path):
        seen.append(path)
        return vec
    return vec, seen, load


@pytest.mark.parametrize("text, op, strength, layers, positions", [
    ("x.sv:+0.3", "add", 0.3, None, "all"),
    ("x.sv:-0.25", "add", -0.25, None, "all"),
    ("x.sv:0.1", "add", 0.1, None, "all"),
    ("x.sv@1,2:ablate", "ablate", 0.0, (1, 2), "all"),
    ("x.sv:clamp=0.5:generated", "clamp", 0.5, None, "generated"),
    ("x.sv@-1:+1e-1:prompt", "add", 0.1, (-1,), "prompt"),
    ("  x.sv@3:clamp=-2  ", "clamp", -2.0, (3,), "all"),
    ("x.sv@1-3:+0.02", "add", 0.02, (1, 2, 3), "all"),
    ("x.sv@0-1,3:-0.1:generated", "add", -0.1, (0, 1, 3), "generated"),
])
def test_parse_steer_spec_good(loader, text, op, strength, layers, positions):
    vec, seen, load = loader
    spec = parse_steer_spec(text, load=load)
    assert seen == ["x.sv"]
    assert spec.vector is vec
    assert (spec.op, spec.strength, spec.layers, spec.positions) == (op, strength, layers, positions)


@pytest.mark.parametrize("text, match", [
    ("x.sv", "cannot parse steering spec"),
    ("x.sv@1,2", "cannot parse steering spec"),
    ("x.sv:banana", "unknown operation 'banana'"),
    ("x.sv:clamp=abc", "clamp value"),
    ("x.sv:+0.3:sideways", "unknown operation 'sideways'"),
    ("x.sv:nan", "strength must be a finite number"),
    ("x.sv@7:+0.3", "no direction for layer 7"),
    ("x.sv@3-1:+0.3", "runs backwards; write 1-3"),
])
def test_parse_steer_spec_bad(loader, text, match):
    _, _, load = loader
    with pytest.raises(SteerSpecError, match=match):
        parse_steer_spec(text, load=load)


def test_parse_layer_list_ranges_and_errors():
    from steerwatch.layers import parse_layer_list

    assert parse_layer_list("9-14") == [9, 10, 11, 12, 13, 14]
    assert parse_layer_list("8-9, 14") == [8, 9, 14]
    assert parse_layer_list("-2,-1") == [-2, -1]
    for bad, match in (("9-", "neither a layer number nor a range"), ("a", "neither"), (" , ", "no layers given"),
                       ("5-2", "runs backwards")):
        with pytest.raises(ValueError, match=match):
            parse_layer_list(bad)


# ---------------------------------------------------------------------------- vector / model mismatch
def test_fingerprint_mismatch_raises_unless_forced(qwen):
    vec = make_vector(qwen, fingerprint="0123456789abcdef", norm_mean=NORMS)
    spec = SteerSpec(vec, strength=0.5)
    with pytest.raises(VectorMismatchError) as exc:
        attach(qwen, [spec])
    assert "0123456789abcdef" in str(exc.value) and qwen.fingerprint in str(exc.value) and "force" in str(exc.value)
    with pytest.raises(VectorMismatchError):
        attach(qwen, rows=[[], [spec]])
    ids = random_ids(1, 5)
    base = forward_blocks(qwen, ids)
    with steering(qwen, [spec], force=True):
        steered = forward_blocks(qwen, ids)
    assert torch.equal(steered[1], base[1] + 0.5 * NORMS[1] * vec.direction(1))
    # a bare model has no fingerprint to compare with
    attach(qwen.model, [spec]).remove()


def test_hidden_size_mismatch_always_raises(qwen):
    vec = make_vector(qwen, hidden_size=qwen.hidden_size + 8)
    spec = SteerSpec(vec, strength=0.5)
    for force in (False, True):
        with pytest.raises(VectorMismatchError, match="hidden size 40"):
            attach(qwen, [spec], force=force)
    with pytest.raises(SteerSpecError, match="hidden size 40"):
        attach(qwen.model, [spec])


def test_vector_for_other_model_other_arch_raises(qwen, llama):
    vec = make_vector(llama)  # same hidden size, other weights
    with pytest.raises(VectorMismatchError):
        attach(qwen, [SteerSpec(vec, strength=0.5)])


def test_negative_layers_count_from_the_end(qwen):
    vec = make_vector(qwen, norm_mean=NORMS, seed=9)
    ids = random_ids(1, 5, seed=10)
    with steering(qwen, [SteerSpec(vec, strength=0.5, layers=(-1,))]):
        neg = forward_blocks(qwen, ids)
    with steering(qwen, [SteerSpec(vec, strength=0.5, layers=(3,))]):
        pos = forward_blocks(qwen, ids)
    base = forward_blocks(qwen, ids)
    assert all(torch.equal(a, b) for a, b in zip(neg, pos))
    assert torch.equal(neg[3], base[3] + 0.5 * NORMS[3] * vec.direction(3))


def test_a_spec_naming_one_block_twice_is_refused(qwen):
    """`layers=(1, 1)` or `(1, -3)` on a 4-block model would push twice at block 1 while counting
    one strength: refused at the spec, wherever it comes from (Python, CLI, server)."""
    vec = make_vector(qwen)
    for layers in ((1, 1), (1, -3), (0, 2, 2)):
        with pytest.raises(SteerSpecError, match="named more than once"):
            SteerSpec(vec, strength=0.01, layers=layers)
    with pytest.raises(SteerSpecError, match="named more than once"):
        parse_steer_spec("x.sv@1,1:+0.01", load=lambda p: vec)
    assert SteerSpec(vec, strength=0.01, layers=(-1, 0)).resolved_layers == [3, 0]
