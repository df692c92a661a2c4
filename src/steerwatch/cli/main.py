"""The ``steerwatch`` command (console entry point ``steerwatch.cli.main:app``). Sub-commands live
one group per file and import torch lazily, so ``steerwatch --help`` is instant; importing them
here registers them on the app. No command module imports another."""
from __future__ import annotations

from . import concepts, data, deception, evals, extract, generate, interop, lab, policy, quickstart, serve, watch  # noqa: F401
from .app import app

__all__ = ["app"]
