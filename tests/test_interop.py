"""steerwatch.interop.gguf_cvec: llama.cpp control-vector GGUF files, both ways.

Layout is checked with gguf.GGUFReader (what llama.cpp's loader sees); the layer mapping is
checked through the steering hooks (direction.N must move the output of block N and nothing
before it); round trips must give back the directions and the per-layer push; every bad input is
a domain error that says what is wrong."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from conftest import BlockCapture, blocks_of, make_vector, random_ids
from steerwatch.errors import LayerResolutionError, SteerSpecError, VectorFileError, VectorMismatchError
from steerwatch.interop import export_control_vector, import_control_vector, read_control_vector
from steerwatch.steer import SteerSpec, steering
from steerwatch.vector import load_vector
from tolerances import DOUBLE, FP32_ROUTE, FP32_STORED

NORMS = {0: 1.25, 1: 2.5, 2: 3.75, 3: 0.3}  # a different norm per layer, so a wrong layer's norm shows


@pytest.fixture
def vec(qwen):
    v = make_vector(qwen, seed=1, default_layers=[1, 2], norm_mean=NORMS)
    v.validation = {layer: {"auroc": 0.5 + layer / 10} for layer in v.layers}
    v.dataset = {"name": "test", "sha256": "ab" * 32, "n_train": 14, "n_val": 6}
    return v


def write_gguf(path, tensors, *, arch="controlvector", strings=None, int32s=None):
    """A GGUF written like llama-cvector-generator does (i32 layer_count) or with any other layout."""
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in (strings or {}).items():
        w.add_string(k, v)
    for k, v in (int32s or {}).items():
        w.add_int32(k, v)
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def expected_push(v, layer, strength):
    return (v.directions[layer].numpy().astype(np.float64) * (strength * NORMS[layer])).astype(np.float32)


def block_deltas(loaded, specs):
    """Per block: (steered output - unsteered output) of one forward pass, from hooks registered
    before and after the steering hooks."""
    blocks = blocks_of(loaded)
    ids = random_ids(2, 7, seed=5)
    raw = BlockCapture(blocks)
    try:
        with steering(loaded, specs), BlockCapture(blocks) as final, torch.no_grad():
            loaded.model(input_ids=ids, use_cache=False)
    finally:
        raw.remove()
    return [f[0] - r[0] for r, f in zip(raw.outs, final.outs)]


# ---------------------------------------------------------------------------------------- export
def test_export_layout_is_what_llama_cpp_reads(vec, tmp_path):
    path = export_control_vector(vec, tmp_path / "sub" / "v.gguf", strength=0.4)
    r = gguf.GGUFReader(str(path))
    assert r.get_field("general.architecture").contents() == "controlvector"
    assert r.get_field("controlvector.model_hint").contents() == "tiny-qwen2"
    count = r.get_field("controlvector.layer_count")
    assert count.types == [gguf.GGUFValueType.UINT32] and count.contents() == 2
    assert r.get_field("steerwatch.strength").contents() == 0.4
    meta = json.loads(r.get_field("steerwatch.metadata").contents())
    assert meta["concept"] == "test" and meta["layer_convention"] == "block_output"
    assert meta["residual_norm"]["2"]["mean"] == 3.75
    assert [t.name for t in r.tensors] == ["direction.1", "direction.2"]  # steerwatch layer N -> direction.N
    for t, layer in zip(r.tensors, (1, 2)):
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert [int(d) for d in t.shape] == [32] and t.data.dtype == np.float32
        want = expected_push(vec, layer, 0.4)
        assert np.array_equal(np.asarray(t.data), want)
        assert np.linalg.norm(want) == FP32_STORED.approx(0.4 * NORMS[layer])  # raw push, not unit


def test_export_layers_and_hint(vec, tmp_path):
    cv = read_control_vector(export_control_vector(vec, tmp_path / "a.gguf", strength=1.0, layers="all",
                                                   model_hint="qwen2"))
    assert cv.layers == [1, 2, 3] and cv.model_hint == "qwen2" and cv.layer_count == 3  # layer 0 left out
    cv = read_control_vector(export_control_vector(vec, tmp_path / "b.gguf", strength=-0.5, layers=[3]))
    assert cv.layers == [3] and cv.strength == -0.5
    assert torch.equal(cv.pushes[3], torch.from_numpy(expected_push(vec, 3, -0.5)))


def test_export_strength_defaults_to_recommended(vec, tmp_path):
    vec.recommended_strength = 0.15
    cv = read_control_vector(export_control_vector(vec, tmp_path / "v.gguf"))
    assert cv.strength == 0.15
    assert torch.equal(cv.pushes[1], torch.from_numpy(expected_push(vec, 1, 0.15)))


def test_export_refuses_layer_zero_and_bad_options(vec, qwen, tmp_path):
    with pytest.raises(LayerResolutionError, match=r"layer 0.*cannot express"):
        export_control_vector(vec, tmp_path / "v.gguf", strength=0.1, layers=[0, 1])
    v0 = make_vector(qwen, default_layers=[0, 1])
    with pytest.raises(LayerResolutionError, match="default layers include layer 0"):
        export_control_vector(v0, tmp_path / "v.gguf", strength=0.1)
    with pytest.raises(LayerResolutionError, match=r"no direction for layer\(s\) \[7\]"):
        export_control_vector(vec, tmp_path / "v.gguf", strength=0.1, layers=[1, 7])
    with pytest.raises(SteerSpecError, match=r"no recommended strength.*--strength"):
        export_control_vector(vec, tmp_path / "v.gguf")
    for bad in (0.0, float("nan"), float("inf")):
        with pytest.raises(SteerSpecError, match="finite non-zero"):
            export_control_vector(vec, tmp_path / "v.gguf", strength=bad)
    with pytest.raises(VectorFileError, match="is a directory"):
        export_control_vector(vec, tmp_path, strength=0.1)
    assert not (tmp_path / "v.gguf").exists()


# ---------------------------------------------------------------------------------------- mapping + round trip
def test_direction_n_moves_block_n_only(qwen, tmp_path):
    """direction.2 (what llama.cpp adds at the end of block il=2) must move the output of block 2 by
    exactly the tensor and leave blocks 0 and 1 untouched."""
    push = torch.linspace(-1.0, 1.0, 32, dtype=torch.float32)
    path = write_gguf(tmp_path / "cv.gguf", {"direction.2": push.numpy()})
    v = import_control_vector(path, qwen)
    assert v.layers == [2] and v.default_layers == [2] and v.recommended_strength == 1.0
    deltas = block_deltas(qwen, [SteerSpec(v, strength=1.0)])
    assert torch.equal(deltas[0], torch.zeros_like(deltas[0])) and torch.equal(deltas[1], torch.zeros_like(deltas[1]))
    assert FP32_STORED.allclose(deltas[2], push.expand_as(deltas[2]))


@pytest.mark.parametrize("strength", [0.4, -0.3])
def test_round_trip_gives_back_directions_units_and_push(vec, qwen, tmp_path, strength):
    path = export_control_vector(vec, tmp_path / "v.gguf", strength=strength, layers="all")
    back = import_control_vector(path, qwen)
    assert back.layers == [1, 2, 3] and back.default_layers == [1, 2, 3]
    # allclose, not equal: the file stores the float32 product strength*norm*u, and dividing by its
    # norm rounds again, so directions come back within a few float32 ulps (max seen ~3e-8)
    for layer in back.layers:
        assert FP32_STORED.allclose(back.directions[layer], vec.directions[layer])
        assert back.residual_norm[layer] == vec.residual_norm[layer]
    assert back.recommended_strength == strength
    assert (back.concept, back.method, back.read_position) == (vec.concept, vec.method, vec.read_position)
    assert back.validation == {k: vec.validation[k] for k in (1, 2, 3)} and back.dataset == vec.dataset
    assert back.model_fingerprint == qwen.fingerprint
    info = back.extra["gguf_import"]
    assert info["strength_unit"] == "residual_norm" and info["exported_strength"] == strength and not info["notes"]
    # the same per-layer push, through the hooks: original at `strength` == imported at its recommended strength
    cv = read_control_vector(path)
    d_orig = block_deltas(qwen, [SteerSpec(vec, strength=strength, layers=(1,))])[1]
    d_back = block_deltas(qwen, [SteerSpec(back, strength=back.recommended_strength, layers=(1,))])[1]
    assert FP32_STORED.allclose(d_back, cv.pushes[1].expand_as(d_back))
    assert FP32_STORED.allclose(d_back, d_orig)
    # and it is a valid vector file
    again = load_vector(back.save(tmp_path / "v.sv"))
    assert all(torch.equal(again.directions[k], back.directions[k]) for k in back.layers)


def test_foreign_file_strength_equals_llama_scale(qwen, tmp_path):
    """A file as llama-cvector-generator writes it: i32 layer_count, unit tensors; plus one scaled
    tensor as repeng arithmetic can produce."""
    g = torch.Generator().manual_seed(0)
    raw = {n: torch.randn(32, generator=g) for n in (1, 2, 3)}
    raw = {1: raw[1] / raw[1].norm(), 2: raw[2] / raw[2].norm(), 3: 3.0 * raw[3]}
    path = write_gguf(tmp_path / "happy.gguf", {f"direction.{n}": t.numpy() for n, t in raw.items()},
                      strings={"controlvector.model_hint": "qwen2"}, int32s={"controlvector.layer_count": 3})
    v = import_control_vector(path, qwen)
    assert v.concept == "happy" and v.method == "gguf_import" and v.recommended_strength == 1.0
    assert v.default_layers == [1, 2, 3] and v.extra["gguf_import"]["strength_unit"] == "gguf_tensor_norm"
    assert v.extra["gguf_import"]["model_hint"] == "qwen2" and v.extra["gguf_import"]["layer_count"] == 3
    for n, t in raw.items():
        assert v.residual_norm[n]["mean"] == DOUBLE.approx(float(t.double().norm()))
        assert FP32_STORED.allclose(v.directions[n], t / t.norm())
        assert FP32_STORED.allclose(v.norm(n) * v.directions[n], t)  # strength 1 == scale 1
    assert import_control_vector(path, qwen, concept="joy").concept == "joy"


def test_tampered_steerwatch_file_is_imported_as_foreign(vec, qwen, tmp_path):
    cv = read_control_vector(export_control_vector(vec, tmp_path / "v.gguf", strength=0.4))
    path = write_gguf(tmp_path / "t.gguf", {"direction.1": (2 * cv.pushes[1]).numpy(),
                                            "direction.2": cv.pushes[2].numpy()},
                      strings={"steerwatch.metadata": json.dumps(vec.metadata())})
    v = import_control_vector(path, qwen)
    assert v.extra["gguf_import"]["strength_unit"] == "gguf_tensor_norm" and v.recommended_strength == 1.0
    assert any("does not match the tensors" in n for n in v.extra["gguf_import"]["notes"])


def test_duplicate_index_summed_and_zero_tensor_left_out(qwen, tmp_path):
    a, b = torch.ones(32), torch.arange(32, dtype=torch.float32)
    path = write_gguf(tmp_path / "d.gguf", {"direction.1": a.numpy(), "direction.01": b.numpy(),
                                             "direction.3": np.zeros(32, np.float32)})
    v = import_control_vector(path, qwen)
    assert v.layers == [1] and FP32_ROUTE.allclose(v.norm(1) * v.direction(1), a + b)
    notes = " | ".join(v.extra["gguf_import"]["notes"])
    assert "summed" in notes and "direction.3 is all zeros" in notes


# ---------------------------------------------------------------------------------------- bad input
def _expect(exc, fn, *words):
    with pytest.raises(exc) as info:
        fn()
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


def test_bad_files(qwen, tmp_path):
    ok = np.ones(32, np.float32)
    _expect(VectorFileError, lambda: import_control_vector(tmp_path / "nope.gguf", qwen), "does not exist", "nope.gguf")
    (tmp_path / "text.gguf").write_text("hello")
    _expect(VectorFileError, lambda: read_control_vector(tmp_path / "text.gguf"), "not a GGUF file")
    (tmp_path / "trunc.gguf").write_bytes(b"GGUF\x03\x00")
    _expect(VectorFileError, lambda: read_control_vector(tmp_path / "trunc.gguf"), "corrupt or truncated")
    model_file = write_gguf(tmp_path / "m.gguf", {"token_embd.weight": np.ones((4, 32), np.float32)}, arch="qwen2")
    _expect(VectorFileError, lambda: read_control_vector(model_file), "general.architecture 'qwen2'", "model file")
    cases = {
        "zero": ({"direction.0": ok}, "layer index 0"),
        "name": ({"direction.1": ok, "bias.1": ok}, "unexpected tensor 'bias.1'"),
        "neg": ({"direction.-1": ok}, "unexpected tensor 'direction.-1'"),
        "f16": ({"direction.1": ok.astype(np.float16)}, "type F16"),
        "2d": ({"direction.1": np.ones((2, 32), np.float32)}, "shape [32, 2]"),
        "len": ({"direction.1": ok, "direction.2": np.ones(16, np.float32)}, "16 values but earlier tensors have 32"),
        "nan": ({"direction.1": np.full(32, np.nan, np.float32)}, "NaN"),
        "empty": ({}, "holds no direction tensors"),
    }
    for name, (tensors, words) in cases.items():
        path = write_gguf(tmp_path / f"{name}.gguf", tensors)
        _expect(VectorFileError, lambda path=path: import_control_vector(path, qwen), words)
    path = write_gguf(tmp_path / "allzero.gguf", {"direction.1": np.zeros(32, np.float32)})
    _expect(VectorFileError, lambda: import_control_vector(path, qwen), "every direction tensor is zero")


def test_wrong_model(vec, qwen, tmp_path):
    small = write_gguf(tmp_path / "s.gguf", {"direction.1": np.ones(16, np.float32)})
    _expect(VectorMismatchError, lambda: import_control_vector(small, qwen), "n_embd 16", "hidden size 32")
    deep = write_gguf(tmp_path / "deep.gguf", {"direction.4": np.ones(32, np.float32)})
    _expect(VectorMismatchError, lambda: import_control_vector(deep, qwen), "direction.4", "4 layers (valid 1..3)")
    other = make_vector(qwen, seed=2, default_layers=[1], fingerprint="deadbeefdeadbeef", norm_mean=NORMS)
    path = export_control_vector(other, tmp_path / "o.gguf", strength=0.2)
    _expect(VectorMismatchError, lambda: import_control_vector(path, qwen), "deadbeefdeadbeef", "--force")
    forced = import_control_vector(path, qwen, force=True)
    assert forced.model_fingerprint == qwen.fingerprint
    assert forced.extra["gguf_import"]["exported_from"]["model_fingerprint"] == "deadbeefdeadbeef"


# ---------------------------------------------------------------------------------------- CLI
def test_cli_export_import(vec, qwen, tmp_path):
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    model_dir = tmp_path / "model"
    qwen.model.save_pretrained(model_dir)
    qwen.tokenizer.save_pretrained(model_dir)
    sv, gg, back = tmp_path / "v.sv", tmp_path / "v.gguf", tmp_path / "back.sv"
    vec.save(sv)
    runner = CliRunner(env={"COLUMNS": "300"})
    res = runner.invoke(app, ["export-gguf", str(sv), "-o", str(gg)])
    assert res.exit_code == 2 and "--strength" in res.output and not gg.exists()
    res = runner.invoke(app, ["export-gguf", str(sv), "-o", str(gg), "--layers", "0,1", "--strength", "0.1"])
    assert res.exit_code == 2 and "layer 0" in res.output
    res = runner.invoke(app, ["export-gguf", str(sv), "-o", str(gg), "--strength", "-0.05", "--all-layers"])
    assert res.exit_code == 0, res.output
    assert "--control-vector" in res.output and read_control_vector(gg).layers == [1, 2, 3]
    res = runner.invoke(app, ["import-gguf", str(gg), "-o", str(back), "--model", str(model_dir)])
    assert res.exit_code == 0, res.output
    v = load_vector(back)
    assert v.recommended_strength == -0.05 and v.layers == [1, 2, 3]
    assert all(FP32_STORED.allclose(v.directions[k], vec.directions[k]) for k in v.layers)
    res = runner.invoke(app, ["import-gguf", str(tmp_path / "missing.gguf"), "-o", str(back), "--model",
                              str(model_dir)])
    assert res.exit_code == 2 and "does not exist" in res.output
