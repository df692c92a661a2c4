"""Figures on the honesty recipe vector steerwatch ships for the embedded model (docs/results.md,
"The recipe vector becomes the default"): its provenance, its cosine with the built-in
(mean-difference) honesty vector per layer, and what the serving guard's distress check says of
it at +0.02 and +0.03 (the built-in vector's verdicts beside it).

    python scripts/recipe_figures.py
"""
from __future__ import annotations


def main() -> None:
    from steerwatch.evals.recipes import recipe_for, shipped_vector
    from steerwatch.extract.library import builtin_vector
    from steerwatch.models import load_model
    from steerwatch.policy.distress import builtin_distress
    from steerwatch.policy.guard import check_steering
    from steerwatch.steer import SteerSpec

    lm = load_model("default", progress=False)
    recipe = recipe_for("honesty")
    found = shipped_vector(lm, "honesty", log=print)
    if recipe is None or found is None:
        raise SystemExit("no shipped honesty vector for this model (scripts/ship_vectors.py)")
    vec, path = found
    opt = vec.extra["optimisation"]
    print(f"shipped: {path.name} · layers {vec.default_layers} · learned strength {vec.recommended_strength:.4f} "
          f"· best step {opt['best_step']} of {opt['steps_run']} · val loss {opt['initial_val_loss']:.4f} -> "
          f"{opt['best_val_loss']:.4f} · pairs {vec.dataset.get('n_train')} train / {vec.dataset.get('n_val')} val")
    built, _rows, _p = builtin_vector(lm, "honesty", progress=True)
    cos = {layer: float(vec.direction(layer) @ built.direction(layer)) for layer in vec.default_layers}
    print("cos(recipe, built-in honesty) per layer: " + ", ".join(f"{k}: {v:+.3f}" for k, v in cos.items()))
    distress, _dpath = builtin_distress(lm, progress=True)
    for name, v in (("recipe", vec), ("built-in", built)):
        for s in (0.02, 0.03):
            rows = check_steering(SteerSpec(v, strength=s), distress, subject=f"{name} {s:+.2f}")
            for r in rows:
                print(f"guard {name} {s:+.2f}: {r.level} {r.code}: {r.message}")


if __name__ == "__main__":
    main()
