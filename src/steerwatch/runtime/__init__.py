"""The runtime: generation with steering, watching and conditional steering in one path
(:func:`generate` -> :class:`Generation`), its options, and the engine interface the server,
evals and lab build on."""
from __future__ import annotations

from .conditional import Conditional
from .engine import ENGINES, Engine, HFEngine, make_engine
from .options import GenerationOptions
from .session import Generation, generate, generate_text

__all__ = ["ENGINES", "Conditional", "Engine", "Generation", "GenerationOptions", "HFEngine", "generate",
           "generate_text", "make_engine"]
