"""Shared by the benchmark scripts (run as `python bench/NAME.py`, so this module is importable)."""
from __future__ import annotations


def random_vector(lm, i: int, layer: int, generator):
    """A random unit direction at one layer, as a Vector for ``lm`` (a hook's cost does not depend
    on the direction)."""
    import torch

    from steerwatch.vector import Vector

    d = torch.randn(lm.hidden_size, generator=generator)
    return Vector(directions={layer: d / d.norm()}, concept=f"rand{i}", model_name=lm.name,
                  model_fingerprint=lm.fingerprint, hidden_size=lm.hidden_size, method="random",
                  read_position="completion_mean", default_layers=[layer],
                  residual_norm={layer: {"mean": 50.0, "std": 1.0, "n_tokens": 1}}, n_model_layers=lm.n_layers)
