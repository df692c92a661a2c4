"""The distress direction the policy guard checks steering against: the built-in ``distress``
concept (steerwatch's emotional-valence set; positive side = the assistant voicing negative
affect, see data/concepts/distress.md) built on the served model exactly as
``steerwatch extract distress`` builds it, once, and cached under
``<cache>/vectors/<model fingerprint>/distress-<key>.sv`` (see
:func:`steerwatch.extract.library.builtin_vector`); or a vector file named in the policy
(``guard.distress_vector``)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .schema import PolicyError, PolicyFile

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..vector import Vector

CONCEPT = "distress"


def distress_cache_path(loaded: LoadedModel, *, cache_root: Path | None = None) -> Path:
    """Where the built-in distress vector for ``loaded`` is cached (see
    :func:`steerwatch.extract.library.builtin_cache_path`)."""
    from ..extract.library import builtin_cache_path

    return builtin_cache_path(loaded, CONCEPT, cache_root=cache_root)


def builtin_distress(loaded: LoadedModel, *, cache_root: Path | None = None, progress: bool = False,
                     log: Callable[[str], None] | None = None) -> tuple[Vector, Path]:
    """The built-in distress vector on ``loaded``, built as ``steerwatch extract distress`` builds it
    (mean_diff, read auto, layers auto) and cached; later calls load the cached file."""
    from ..extract.library import builtin_vector

    vec, _, path = builtin_vector(loaded, CONCEPT, cache_root=cache_root, progress=progress, log=log)
    return vec, path


def policy_distress(pf: PolicyFile, loaded: LoadedModel, *, progress: bool = False,
                    log: Callable[[str], None] | None = None) -> tuple[Vector, str]:
    """The distress vector a policy is checked against, and where it came from:
    ``guard.distress_vector`` (relative to the policy file) or the built-in one."""
    from ..errors import SteerwatchError
    from ..vector import load_vector

    rel = pf.policy.guard.distress_vector
    if rel is None:
        vec, path = builtin_distress(loaded, progress=progress, log=log)
        return vec, f"built-in distress (cached at {path})"
    p = pf.resolve(rel)
    try:
        vec = load_vector(p)
        vec.check_model(loaded)
    except SteerwatchError as exc:
        raise PolicyError(f"guard.distress_vector: {exc}") from None
    return vec, str(p)
