"""The distress direction the policy guard checks steering against: the built-in ``distress``
concept (steerwatch's emotional-valence set; positive side = the assistant voicing negative
affect, see data/concepts/distress.md) built on the served model exactly as
``steerwatch extract distress`` builds it, once, and cached under
``<cache>/vectors/<model fingerprint>/distress-<dataset sha256[:12]>.sv`` (cache:
``$STEERWATCH_CACHE`` or ``~/.cache/steerwatch``, as for models); or a vector file named in the
policy (``guard.distress_vector``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .policy import PolicyError, PolicyFile

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..vector import Vector

CONCEPT = "distress"


def distress_cache_path(loaded: "LoadedModel", *, cache_root: Path | None = None) -> Path:
    """``<cache>/vectors/<model fingerprint>/distress-<dataset sha256[:12]>.sv`` (cache: $STEERWATCH_CACHE
    or ~/.cache/steerwatch, as for models)."""
    from ..data import load_concept
    from ..models import cache_dir

    sha = load_concept(CONCEPT).sha256
    root = Path(cache_root) if cache_root is not None else cache_dir()
    return root / "vectors" / loaded.fingerprint / f"{CONCEPT}-{sha[:12]}.sv"


def builtin_distress(loaded: "LoadedModel", *, cache_root: Path | None = None, progress: bool = False,
                     log: Callable[[str], None] | None = None) -> "tuple[Vector, Path]":
    """The built-in distress vector on ``loaded``, built as ``steerwatch extract distress`` builds it
    (mean_diff, read auto, layers auto) and cached; later calls load the cached file."""
    from ..data import load_concept
    from ..errors import SteerwatchError
    from ..extract.build import build_vector
    from ..vector import load_vector

    path = distress_cache_path(loaded, cache_root=cache_root)
    if path.is_file():
        try:
            vec = load_vector(path)
            vec.check_model(loaded)
            return vec, path
        except SteerwatchError as exc:  # a corrupt or foreign cache entry is rebuilt, not trusted
            if log:
                log(f"rebuilding the cached distress vector ({exc})")
    if log:
        log(f"building the built-in distress vector on {loaded.name} (once; cached at {path})")
    vec, _ = build_vector(loaded, load_concept(CONCEPT), progress=progress)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")  # concurrent builders never see half a file
    vec.save(tmp)
    tmp.replace(path)
    return vec, path


def policy_distress(pf: PolicyFile, loaded: "LoadedModel", *, progress: bool = False,
                    log: Callable[[str], None] | None = None) -> "tuple[Vector, str]":
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
