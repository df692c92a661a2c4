"""Extraction: pure tensor maths from (positive, negative) activations to a unit direction.

Every method takes ``pos`` and ``neg`` of shape (n, d) (row i of each is pair i) and returns a unit
direction (d,) oriented so that positives project higher than negatives on average.
"""
from __future__ import annotations

from .methods import METHODS, check_method, extract_direction

__all__ = ["METHODS", "check_method", "extract_direction"]
