"""The ONLY place that knows where decoder blocks live and how layer indices map onto
``hidden_states``.

Convention (used everywhere in steerwatch): layer ``i`` is the *output of decoder block i*,
counting from 0. In Hugging Face terms that is ``hidden_states[i + 1]``, because
``hidden_states[0]`` is the embedding output. Beware: for most architectures the *last*
element of ``hidden_states`` has the final norm applied, so ``hidden_states[n_layers]`` is not
the raw output of the last block; steerwatch never reads ``hidden_states`` and hooks the block
outputs directly, so layer ``n_layers - 1`` is always the raw residual stream.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .errors import LayerResolutionError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    import torch.nn as nn

LAYER_CONVENTION = "block_output"  # layer i == output of decoder block i == hidden_states[i + 1]

# model_type -> dotted path (from the CausalLM object) to the ModuleList of decoder blocks
ARCHITECTURES: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "qwen2_moe": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "gemma3": "model.language_model.layers",
    "phi3": "model.layers",
    "phi": "model.layers",
    "olmo": "model.layers",
    "olmo2": "model.layers",
    "granite": "model.layers",
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "falcon": "transformer.h",
    "bloom": "transformer.h",
    "opt": "model.decoder.layers",
}


def _walk(root: object, path: str) -> object:
    obj = root
    for part in path.split("."):
        if not hasattr(obj, part):
            raise AttributeError(part)
        obj = getattr(obj, part)
    return obj


def decoder_blocks(model: Any, *, layers_path: str | None = None) -> nn.ModuleList:
    """Return the ModuleList of decoder blocks of a Hugging Face causal LM.

    ``layers_path`` overrides the built-in table (e.g. ``"model.layers"``) for architectures it
    does not know.
    """
    import torch.nn as nn

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    path = layers_path or ARCHITECTURES.get(str(model_type))
    if path is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise LayerResolutionError(
            f"steerwatch does not know where the decoder blocks of architecture {model_type!r} live. "
            f"Pass the override layers_path='<dotted path to the ModuleList of blocks>' "
            f"(CLI: --layers-path), e.g. layers_path='model.layers'. Known architectures: {known}."
        )
    try:
        blocks = _walk(model, path)
    except AttributeError as exc:
        raise LayerResolutionError(
            f"layers path {path!r} does not exist on this {type(model).__name__} "
            f"(no attribute {exc.args[0]!r}); pass the correct dotted path with layers_path=..."
        ) from None
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise LayerResolutionError(
            f"layers path {path!r} on {type(model).__name__} is a {type(blocks).__name__}, not a "
            f"non-empty ModuleList of decoder blocks; pass the correct path with layers_path=..."
        )
    return blocks


def n_layers(model: Any, *, layers_path: str | None = None) -> int:
    return len(decoder_blocks(model, layers_path=layers_path))


_SPAN = re.compile(r"^(\d+)-(\d+)$")


def parse_layer_list(text: str) -> list[int]:
    """``"10,12"``, ``"9-14"`` (both ends included), ``"8-10,14"`` or ``"-1"`` -> layer indices, in the
    order given. Raises :class:`ValueError` on anything else (callers word the error for their option)."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        m = _SPAN.match(part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise ValueError(f"layer range {part!r} runs backwards; write {hi}-{lo}")
            out.extend(range(lo, hi + 1))
        elif re.fullmatch(r"-?\d+", part):
            out.append(int(part))
        else:
            raise ValueError(f"{part!r} is neither a layer number nor a range like 9-14")
    if not out:
        raise ValueError("no layers given")
    return out


def normalize_layer(layer: int, total: int) -> int:
    """THE negative-index rule: ``-1`` is the last of ``total`` blocks. Out of range is an error."""
    idx = int(layer)
    if idx < 0:
        idx += total
    if not 0 <= idx < total:
        raise LayerResolutionError(
            f"layer {layer} is out of range: this model has {total} decoder blocks, "
            f"valid layers are 0..{total - 1} (or -{total}..-1)"
        )
    return idx


def check_layers(layers: list[int] | tuple[int, ...], total: int) -> list[int]:
    """Validate layer indices (block-output convention) and normalise negative ones
    (:func:`normalize_layer`). A block named twice (``[1, 1]``, or ``[1, -3]`` on a 4-block model)
    is an error: it would apply the same steering twice at one block."""
    out: list[int] = []
    for layer in layers:
        idx = normalize_layer(layer, total)
        if idx in out:
            named = [x for x in layers if normalize_layer(x, total) == idx]
            raise LayerResolutionError(
                f"layer {idx} is named more than once ({', '.join(str(x) for x in named)}); give each "
                "decoder block at most once"
            )
        out.append(idx)
    return out


def hidden_states_index(layer: int) -> int:
    """Index into Hugging Face ``output_hidden_states`` for steerwatch layer ``layer``."""
    return layer + 1


def block_output(output: object) -> torch.Tensor:
    """The residual-stream tensor of a decoder block's forward output (tensor or tuple)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise LayerResolutionError(
        f"unexpected decoder block output of type {type(output).__name__}; "
        "steerwatch expects a tensor or a tuple whose first item is the hidden state"
    )


def replace_block_output(output: object, hidden: torch.Tensor) -> object:
    import torch

    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    raise LayerResolutionError(f"cannot replace decoder block output of type {type(output).__name__}")
