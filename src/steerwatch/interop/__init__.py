"""Interoperability with other steering tools' file formats.

``gguf_cvec``: llama.cpp control vectors (the GGUF files ``--control-vector`` reads), both ways.
"""
from __future__ import annotations

from .gguf_cvec import ControlVectorFile, export_control_vector, import_control_vector, read_control_vector

__all__ = ["ControlVectorFile", "export_control_vector", "import_control_vector", "read_control_vector"]
