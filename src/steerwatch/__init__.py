"""steerwatch: steer and watch language models through their activations.

The public Python API is re-exported here lazily so that ``import steerwatch`` stays cheap
(torch is only imported when a model-facing function is first used).
"""
from __future__ import annotations

__version__ = "0.1.0"

# name -> module (same name there), or (module, name there). ``generate`` is the text-only
# convenience; steerwatch.runtime.generate returns Generation objects with scores and flags.
_LAZY: dict[str, str | tuple[str, str]] = {
    "load_model": "steerwatch.models",
    "LoadedModel": "steerwatch.models",
    "Vector": "steerwatch.vector",
    "load_vector": "steerwatch.vector",
    "SteerSpec": "steerwatch.steer",
    "steering": "steerwatch.steer",
    "attach": "steerwatch.steer",
    "parse_steer_spec": "steerwatch.steer",
    "build_vector": "steerwatch.extract.build",
    "recommended_vector": "steerwatch.evals.recipes",
    "load_pairs": "steerwatch.data",
    "load_concept": "steerwatch.data",
    "load_caa": "steerwatch.data",
    "load_persona": "steerwatch.data",
    "generate": ("steerwatch.runtime", "generate_text"),
    "Generation": "steerwatch.runtime",
    "GenerationOptions": "steerwatch.runtime",
    "SteerwatchError": "steerwatch.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        target = _LAZY[name]
        module, attr = target if isinstance(target, tuple) else (target, name)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'steerwatch' has no attribute {name!r}")
