"""Domain errors. Each message says what was wrong and how to fix it."""
from __future__ import annotations


class SteerwatchError(Exception):
    """Base class for every error steerwatch raises on purpose."""


class ModelLoadError(SteerwatchError):
    """A model spec could not be resolved or loaded."""


class LayerResolutionError(SteerwatchError):
    """Decoder blocks could not be located, or a layer index is out of range."""


class DataFormatError(SteerwatchError):
    """A data file is malformed. The message names the file, line and field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.path, self.line, self.field = path, line, field


class VectorFileError(SteerwatchError):
    """A vector file is missing, truncated, corrupt or inconsistent."""


class VectorMismatchError(SteerwatchError):
    """A vector was built on another model (fingerprint or hidden size differ)."""


class SteerSpecError(SteerwatchError):
    """A steering specification is invalid."""


class ExtractionError(SteerwatchError):
    """Extraction cannot proceed with the given data or options."""
