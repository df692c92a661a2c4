"""steerwatch.vector: exact save/load round trip, strict validation of every broken file, and
vector arithmetic."""
from __future__ import annotations

import dataclasses
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from conftest import make_vector
from steerwatch.errors import VectorFileError, VectorMismatchError
from steerwatch.vector import FORMAT_VERSION, Vector, load_vector
from tolerances import DOUBLE, FP32_STORED


@pytest.fixture
def vec(qwen) -> Vector:
    v = make_vector(qwen, seed=1, default_layers=[1, 2], norm_mean={0: 1.25, 1: 2.5, 2: 3.75, 3: 0.3})
    v.validation = {layer: {"auroc": 0.5 + layer / 10, "paired_acc": 0.75, "cohens_d": 1.0 / 3} for layer in v.layers}
    v.dataset = {"name": "test", "sha256": "ab" * 32, "n_train": 14, "n_val": 6}
    v.recommended_strength = 0.15
    v.extra = {"note": "héllo", "terms": [[1.0, "a"]]}
    return v


def _fields(v: Vector) -> dict:
    return {f.name: getattr(v, f.name) for f in dataclasses.fields(v) if f.name != "directions"}


def test_round_trip_is_exact(vec, tmp_path):
    path = vec.save(tmp_path / "sub" / "test.sv")
    assert path.is_file()
    back = load_vector(path)
    assert back.layers == vec.layers
    for layer in vec.layers:
        assert back.directions[layer].dtype == torch.float32
        assert torch.equal(back.directions[layer], vec.directions[layer])
    assert _fields(back) == _fields(vec)
    # and again (load -> save -> load is stable)
    back.save(tmp_path / "again.sv")
    again = load_vector(tmp_path / "again.sv")
    assert _fields(again) == _fields(vec)
    assert all(torch.equal(again.directions[k], vec.directions[k]) for k in vec.layers)


def test_metadata_holds_provenance(vec, tmp_path):
    path = vec.save(tmp_path / "v.sv")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(json.loads(raw[8:8 + n])["__metadata__"]["steerwatch"])
    assert meta["format_version"] == FORMAT_VERSION
    for key in ("concept", "model_name", "model_fingerprint", "hidden_size", "layer_convention", "method",
                "read_position", "default_layers", "residual_norm", "dataset", "validation", "library_version"):
        assert key in meta
    assert meta["layer_convention"] == "block_output"
    assert meta["residual_norm"]["2"]["mean"] == 3.75


def _write(path, tensors, meta):
    save_file(tensors, str(path), metadata=None if meta is None else {"steerwatch": json.dumps(meta)})
    return path


def _valid(vec):
    return {f"direction.{k}": v.clone() for k, v in vec.directions.items()}, vec.metadata()


def _expect(path, *words):
    with pytest.raises(VectorFileError) as exc:
        load_vector(path)
    msg = str(exc.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"
    return msg


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.sv", "does not exist", "nope.sv")


def test_truncated_file(vec, tmp_path):
    raw = vec.save(tmp_path / "v.sv").read_bytes()
    (tmp_path / "half.sv").write_bytes(raw[: len(raw) // 2])
    _expect(tmp_path / "half.sv", "truncated", "half.sv")
    # cut inside the header too
    (tmp_path / "tiny.sv").write_bytes(raw[:50])
    _expect(tmp_path / "tiny.sv", "truncated")
    (tmp_path / "five.sv").write_bytes(raw[:5])
    _expect(tmp_path / "five.sv", "truncated")


def test_random_bytes(tmp_path):
    g = torch.Generator().manual_seed(0)
    data = bytes(torch.randint(0, 256, (4096,), generator=g, dtype=torch.uint8).tolist())
    (tmp_path / "rand.sv").write_bytes(data)
    _expect(tmp_path / "rand.sv", "rand.sv")
    # a plausible header length followed by garbage
    (tmp_path / "garbage.sv").write_bytes(struct.pack("<Q", 100) + b"\xff\xfe not json at all" * 10)
    _expect(tmp_path / "garbage.sv", "corrupt header")


def test_header_that_is_json_but_not_an_object(tmp_path):
    for name, header in (("list.sv", b"[1, 2, 3]"), ("entry.sv", b'{"direction.0": 5}')):
        (tmp_path / name).write_bytes(struct.pack("<Q", len(header)) + header)
        _expect(tmp_path / name, name)


def test_safetensors_without_steerwatch_metadata(vec, tmp_path):
    tensors, _ = _valid(vec)
    _expect(_write(tmp_path / "plain.sv", tensors, None), "without steerwatch metadata")


def test_metadata_not_json(vec, tmp_path):
    tensors, _ = _valid(vec)
    save_file(tensors, str(tmp_path / "bad.sv"), metadata={"steerwatch": "{not json"})
    _expect(tmp_path / "bad.sv", "not valid JSON")


def test_nan_direction(vec, tmp_path):
    tensors, meta = _valid(vec)
    tensors["direction.2"][5] = float("nan")
    _expect(_write(tmp_path / "nan.sv", tensors, meta), "direction.2", "NaN")


def test_wrong_shape(vec, tmp_path):
    tensors, meta = _valid(vec)
    t = torch.randn(vec.hidden_size + 1)
    tensors["direction.3"] = t / t.norm()
    _expect(_write(tmp_path / "shape.sv", tensors, meta), "direction.3", f"({vec.hidden_size + 1},)",
            f"({vec.hidden_size},)")


def test_non_unit_direction(vec, tmp_path):
    tensors, meta = _valid(vec)
    tensors["direction.1"] = tensors["direction.1"] * 2
    _expect(_write(tmp_path / "long.sv", tensors, meta), "direction.1", "norm 2", "unit")


def test_unexpected_tensor_name(vec, tmp_path):
    tensors, meta = _valid(vec)
    tensors["bias"] = torch.zeros(3)
    _expect(_write(tmp_path / "extra.sv", tensors, meta), "'bias'")


@pytest.mark.parametrize("field", ["method", "hidden_size", "residual_norm", "default_layers", "model_fingerprint"])
def test_missing_required_field(vec, tmp_path, field):
    tensors, meta = _valid(vec)
    del meta[field]
    _expect(_write(tmp_path / "m.sv", tensors, meta), "lacks required field", field)


def test_default_layer_not_stored(vec, tmp_path):
    tensors, meta = _valid(vec)
    del tensors["direction.2"]
    _expect(_write(tmp_path / "d.sv", tensors, meta), "default layers [1, 2]", "[0, 1, 3]")


def test_bad_residual_norm(vec, tmp_path):
    tensors, meta = _valid(vec)
    meta["residual_norm"]["3"]["mean"] = -1.0
    _expect(_write(tmp_path / "n.sv", tensors, meta), "residual-norm", "layer 3")


def test_newer_format_and_other_convention(vec, tmp_path):
    tensors, meta = _valid(vec)
    meta["format_version"] = FORMAT_VERSION + 1
    _expect(_write(tmp_path / "f.sv", tensors, meta), "format version", "upgrade")
    tensors, meta = _valid(vec)
    meta["layer_convention"] = "hidden_states_index"
    _expect(_write(tmp_path / "c.sv", tensors, meta), "layer convention", "'hidden_states_index'")


def test_save_refuses_bad_directions(vec, tmp_path):
    vec.directions[0] = torch.full((vec.hidden_size,), float("nan"))
    with pytest.raises(VectorFileError, match="refusing to save"):
        vec.save(tmp_path / "x.sv")


def test_access_errors(vec):
    with pytest.raises(VectorFileError, match=r"no direction for layer 9; it has layers \[0, 1, 2, 3\]"):
        vec.direction(9)
    del vec.residual_norm[3]
    with pytest.raises(VectorFileError, match="no residual-norm statistics for layer 3"):
        vec.norm(3)
    assert vec.norm(2) == 3.75 and vec.auroc(1) == DOUBLE.approx(0.6) and vec.auroc(9) is None


# ---------------------------------------------------------------------------- arithmetic
def test_subtraction_is_normalised_difference(qwen):
    a = make_vector(qwen, seed=1, concept="a", default_layers=[1])
    b = make_vector(qwen, seed=2, concept="b", default_layers=[2])
    c = a - b
    assert c.layers == a.layers and c.concept == "a-b" and c.method == "arithmetic"
    for layer in a.layers:
        want = a.directions[layer] - b.directions[layer]
        FP32_STORED.assert_close(c.directions[layer], want / want.norm())
        assert float(c.directions[layer].norm()) == FP32_STORED.approx(1.0)
    s = a + b
    for layer in a.layers:
        want = a.directions[layer] + b.directions[layer]
        FP32_STORED.assert_close(s.directions[layer], want / want.norm())
    assert c.default_layers == [1] and c.model_fingerprint == a.model_fingerprint
    assert c.residual_norm == a.residual_norm


def test_negation_flips_sign(qwen):
    a = make_vector(qwen, seed=3)
    n = -a
    for layer in a.layers:
        FP32_STORED.assert_close(n.directions[layer], -a.directions[layer])
        assert a.cosine(n, layer) == FP32_STORED.approx(-1.0)


def test_arithmetic_keeps_only_common_layers(qwen):
    a = make_vector(qwen, seed=1, layers=[0, 1, 2], default_layers=[0])
    b = make_vector(qwen, seed=2, layers=[1, 2, 3], default_layers=[1])
    c = a - b
    assert c.layers == [1, 2] and c.default_layers == [1] and sorted(c.residual_norm) == [1, 2]
    with pytest.raises(VectorFileError, match="share no layer"):
        make_vector(qwen, layers=[0], default_layers=[0]) - make_vector(qwen, layers=[3], default_layers=[3])
    with pytest.raises(VectorFileError, match="zero at layer"):
        a - a


def test_arithmetic_across_models_raises(qwen, llama):
    a = make_vector(qwen, seed=1)
    b = make_vector(llama, seed=2)
    assert a.model_fingerprint != b.model_fingerprint
    for op in (lambda: a - b, lambda: a + b):
        with pytest.raises(VectorMismatchError, match="different models"):
            op()
    wide = make_vector(qwen, hidden_size=qwen.hidden_size * 2)
    with pytest.raises(VectorMismatchError, match="hidden size"):
        a + wide


def test_check_model(qwen):
    v = make_vector(qwen)
    v.check_model(qwen)  # same model: fine
    v.model_fingerprint = "f" * 16
    with pytest.raises(VectorMismatchError, match="force"):
        v.check_model(qwen)
    v.check_model(qwen, force=True)
    deep = make_vector(qwen, layers=[0, 7], default_layers=[7])
    with pytest.raises(VectorMismatchError, match="layers up to 7"):
        deep.check_model(qwen, force=True)


def _with_read(vec, seed=7):
    g = torch.Generator().manual_seed(seed)
    reads = {}
    for layer in vec.layers:
        r = torch.randn(vec.hidden_size, generator=g)
        reads[layer] = r / r.norm()
    return dataclasses.replace(vec, read_directions=reads, read_method="lda",
                               read_validation={layer: {"auroc": 0.9 - layer / 100, "paired_acc": 1.0, "cohens_d": 2.0}
                                                for layer in vec.layers})


def test_read_directions_round_trip_and_access(vec, tmp_path):
    assert vec.read_direction(2) is vec.directions[2] and vec.read_auroc(2) == vec.auroc(2)  # none: steering ones
    rv = _with_read(vec)
    back = load_vector(rv.save(tmp_path / "r.sv"))
    assert back.read_method == "lda" and back.read_validation == rv.read_validation
    for layer in vec.layers:
        assert torch.equal(back.read_directions[layer], rv.read_directions[layer])
        assert torch.equal(back.directions[layer], vec.directions[layer])
        assert torch.equal(back.read_direction(layer), rv.read_directions[layer])
        assert back.read_auroc(layer) == DOUBLE.approx(0.9 - layer / 100)
        assert back.auroc(layer) == vec.auroc(layer)  # the steering directions keep their own validation
    # arithmetic makes a new direction; the read directions of its terms do not describe it
    assert (-back).read_directions == {} and (-back).read_method is None


def test_read_directions_must_cover_the_same_layers(vec, tmp_path):
    rv = _with_read(vec)
    rv.read_directions.pop(3)
    with pytest.raises(VectorFileError,
                       match=r"read directions for layers \[0, 1, 2\] but directions for \[0, 1, 2, 3\]"):
        rv.save(tmp_path / "bad.sv")
    tensors, meta = _valid(vec)
    tensors["read.1"] = vec.directions[1].clone()
    _expect(_write(tmp_path / "partial.sv", tensors, meta), "read directions for layers [1]", "same layers")
    tensors["read.1"] = vec.directions[1] * 3
    _expect(_write(tmp_path / "nonunit.sv", tensors, meta), "read.1", "unit vectors")
    tensors.pop("read.1")
    tensors["reader.1"] = vec.directions[1].clone()
    _expect(_write(tmp_path / "name.sv", tensors, meta), "unexpected tensor 'reader.1'", "read.<layer>")


def test_best_layer_is_one_rule(qwen):
    """Vector.best_layer: the highest validation AUROC to 3 decimals, ties to the larger Cohen's d,
    then to the deeper layer; the same rule picks the steering window and the detector's layer."""
    from steerwatch.extract.build import LayerRow, choose_layers
    from steerwatch.vector import best_layer

    v = make_vector(qwen)
    v.validation = {0: {"auroc": 0.9001, "cohens_d": 1.0}, 1: {"auroc": 0.9004, "cohens_d": 2.0},
                    2: {"auroc": 0.9, "cohens_d": 2.0}, 3: {"auroc": 0.85, "cohens_d": 9.0}}
    assert v.best_layer() == 2  # 0.900 all three; d 2.0 twice; the deeper
    assert v.best_layer(among=[0, 1]) == 1 and v.best_layer(read=True) == 2  # no read directions: the same
    assert best_layer({5: {"auroc": 0.7}, 4: {"auroc": 0.7}}) == 5  # no Cohen's d: the deeper
    rows = [LayerRow(layer=k, auroc=r["auroc"], paired_acc=1.0, cohens_d=r["cohens_d"], norm=1.0)
            for k, r in v.validation.items()]
    assert choose_layers(rows, 4, k=1, band=(0.0, 1.0)) == [2]
    v.validation = {}
    assert v.best_layer() == v.default_layers[0]


def test_vector_and_detector_reprs_are_one_short_line(qwen):
    """A notebook printing a vector or detector gets one line naming it, not its numbers."""
    from steerwatch.watch.detector import Detector

    vec = make_vector(qwen, concept="honesty", default_layers=(1, 2))
    vec.validation = {1: {"auroc": 0.91, "cohens_d": 2.0}, 2: {"auroc": 0.875, "cohens_d": 1.0}}
    vec.recommended_strength = 0.02
    text = repr(vec)
    assert "\n" not in text and len(text) < 300
    assert f"'honesty' (mean_diff) for {qwen.name}, {qwen.n_layers} layers 0-{qwen.n_layers - 1}" in text
    assert "best layer 1 (val AUROC 0.910)" in text and "recommended strength +0.02" in text
    assert "default layers [1, 2]" in text and "<b>Vector</b>" in vec._repr_html_()
    det = Detector.from_vector(vec, layer=2)
    det.threshold, det.calibration = 0.123456, {"fpr_target": 0.01}
    assert repr(det) == "<Detector 'honesty': -honesty at layer 2, mean, threshold 0.1235 (FPR 0.01)>"
    assert "&lt;Detector" in det._repr_html_()
    sparse = make_vector(qwen, layers=[0, 3], concept="x")
    assert "2 layers 0,3" in repr(sparse) and "best layer" not in repr(sparse)
