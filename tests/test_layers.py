"""steerwatch.layers: where decoder blocks live and the layer convention (layer i = output of
decoder block i = hidden_states[i + 1])."""
from __future__ import annotations

import pytest
import torch

from conftest import ARCHS, N_LAYERS, BlockCapture, build_model, get_loaded, random_ids
from steerwatch.errors import LayerResolutionError
from steerwatch.layers import ARCHITECTURES, check_layers, decoder_blocks, hidden_states_index, n_layers
from steerwatch.models import LoadedModel
from tolerances import FP32_ROUTE, changed

# the final norm each architecture applies after its last block (test-side knowledge, used to
# show exactly why hidden_states[-1] is not the raw output of the last block)
FINAL_NORM = {
    "qwen2": "model.norm", "llama": "model.norm", "mistral": "model.norm", "phi3": "model.norm",
    "gemma3_text": "model.norm", "gpt2": "transformer.ln_f", "gpt_neox": "gpt_neox.final_layer_norm",
}


def _get(root, path):
    for part in path.split("."):
        root = getattr(root, part)
    return root


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_blocks_resolve(arch):
    loaded = get_loaded(arch)
    blocks = decoder_blocks(loaded.model)
    assert isinstance(blocks, torch.nn.ModuleList)
    assert len(blocks) == loaded.model.config.num_hidden_layers == N_LAYERS
    assert n_layers(loaded.model) == N_LAYERS == loaded.n_layers
    # the path in the table is the one used
    assert blocks is _get(loaded.model, ARCHITECTURES[loaded.model.config.model_type])


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_convention_matches_hidden_states(arch):
    loaded = get_loaded(arch)
    blocks = decoder_blocks(loaded.model)
    ids = random_ids(2, 9, seed=1)
    with BlockCapture(blocks) as cap, torch.no_grad():
        out = loaded.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    hs = out.hidden_states
    assert len(hs) == N_LAYERS + 1  # embeddings + one per block
    for i in range(N_LAYERS - 1):
        assert torch.equal(cap.outs[i][0], hs[hidden_states_index(i)]), f"block {i} != hidden_states[{i + 1}]"
    # Last layer: Hugging Face applies the final norm to the last hidden_states entry for these
    # architectures, so it is NOT the raw output of the last block (which is what steerwatch layer
    # n-1 means). Show both halves: it differs from the raw output and equals norm(raw output).
    last = cap.outs[N_LAYERS - 1][0]
    assert changed(last, hs[N_LAYERS])
    with torch.no_grad():
        normed = _get(loaded.model, FINAL_NORM[arch])(last)
    FP32_ROUTE.assert_close(normed, hs[N_LAYERS])


def test_hidden_states_index():
    assert [hidden_states_index(i) for i in range(4)] == [1, 2, 3, 4]


@pytest.fixture
def mystery_model():
    model = build_model("qwen2")  # a private copy: its config is changed
    model.config.model_type = "mystery"
    return model


def test_unknown_architecture_raises_with_override_hint(mystery_model):
    with pytest.raises(LayerResolutionError) as exc:
        decoder_blocks(mystery_model)
    msg = str(exc.value)
    assert "layers_path" in msg and "'mystery'" in msg


def test_override_path_works(mystery_model):
    blocks = decoder_blocks(mystery_model, layers_path="model.layers")
    assert blocks is mystery_model.model.layers and len(blocks) == N_LAYERS
    loaded = LoadedModel(model=mystery_model, tokenizer=get_loaded("qwen2").tokenizer, name="m", spec="m",
                         layers_path="model.layers")
    assert loaded.n_layers == N_LAYERS
    # steering and recording find the blocks through the LoadedModel's override
    from conftest import forward_blocks, make_vector
    from steerwatch.steer import SteerSpec, steering

    vec = make_vector(loaded, norm_mean=2.0)
    ids = random_ids(1, 5)
    base = forward_blocks(loaded, ids)
    with steering(loaded, [SteerSpec(vec, strength=0.5, layers=(2,))]):
        steered = forward_blocks(loaded, ids)
    assert torch.equal(steered[1], base[1])
    assert torch.equal(steered[2], base[2] + (0.5 * 2.0) * vec.direction(2))


@pytest.mark.parametrize("path", ["model.blocks", "transformer.h", "model.layers.nope"])
def test_wrong_override_path_raises(path):
    model = get_loaded("qwen2").model
    with pytest.raises(LayerResolutionError) as exc:
        decoder_blocks(model, layers_path=path)
    assert repr(path) in str(exc.value)


def test_override_path_to_non_modulelist_raises():
    model = get_loaded("qwen2").model
    with pytest.raises(LayerResolutionError, match="not a non-empty ModuleList"):
        decoder_blocks(model, layers_path="model.norm")


def test_check_layers_maps_negatives_and_keeps_order():
    assert check_layers([0, -1, 2, -3], 4) == [0, 3, 2, 1]
    assert check_layers((), 4) == []


@pytest.mark.parametrize("layers, named", [([1, 1], "1, 1"), ([1, -3], "1, -3"), ([3, 0, -1], "3, -1")])
def test_check_layers_refuses_a_block_named_twice(layers, named):
    """Naming one block twice would apply the same steering twice there (issue 19: a guard bypass)."""
    with pytest.raises(LayerResolutionError, match=f"named more than once \\({named}\\)"):
        check_layers(layers, 4)


@pytest.mark.parametrize("bad", [4, 17, -5])
def test_check_layers_out_of_range(bad):
    with pytest.raises(LayerResolutionError) as exc:
        check_layers([1, bad], 4)
    msg = str(exc.value)
    assert f"layer {bad}" in msg and "0..3" in msg and "-4..-1" in msg
