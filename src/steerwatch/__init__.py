"""steerwatch: steer and watch language models through their activations.

The public Python API is re-exported here lazily so that ``import steerwatch`` stays cheap
(torch is only imported when a model-facing function is first used).
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "load_model": "steerwatch.models",
    "LoadedModel": "steerwatch.models",
    "Vector": "steerwatch.vector",
    "load_vector": "steerwatch.vector",
    "SteerSpec": "steerwatch.steer",
    "steering": "steerwatch.steer",
    "attach": "steerwatch.steer",
    "parse_steer_spec": "steerwatch.steer",
    "build_vector": "steerwatch.extract.build",
    "load_pairs": "steerwatch.data",
    "load_concept": "steerwatch.data",
    "load_caa": "steerwatch.data",
    "load_persona": "steerwatch.data",
    "generate": "steerwatch.generation",
    "SteerwatchError": "steerwatch.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steerwatch' has no attribute {name!r}")
