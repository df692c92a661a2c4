"""Figures on the honesty recipe vector steerwatch ships for the embedded model (docs/results.md,
"The recipe vector becomes the default"): its provenance, its cosine with the built-in
(mean-difference) honesty vector per layer, and what the serving guard's distress check says of
it at +0.02 and +0.03 (the built-in vector's verdicts beside it). With ``conscientiousness``: the
same for its shipped lab-trained vector (beside the fallback recipe, lda over the built-in pairs,
built here, about a minute) at +0.02 and +0.04.

    python scripts/recipe_figures.py
    python scripts/recipe_figures.py conscientiousness --lab-vector out/lab/conscientiousness-bipo.sv \
        --lab-vector out/lab/onpolicy-bipo.sv --lab-vector out/lab/conscientiousness-bipo-seed1.sv
"""
from __future__ import annotations

import argparse


def conscientiousness(lm, lab_vector: str | None = None) -> None:
    """The shipped lab-trained vector (its provenance, cosines with the fallback LDA recipe and the
    built-in vector) and the guard's verdicts on the three at +0.02 and +0.04; ``lab_vector``: files
    to compare the shipped directions with (largest difference from each and from its negation,
    cosine per layer, whether its loss curve and validation rows are the shipped vector's)."""
    from steerwatch.evals.recipes import build_by_recipe, recipe_for, shipped_vector
    from steerwatch.extract.library import builtin_vector
    from steerwatch.policy.distress import builtin_distress
    from steerwatch.policy.guard import check_steering
    from steerwatch.steer import SteerSpec

    recipe = recipe_for("conscientiousness")
    assert recipe is not None and recipe.fallback is not None
    found = shipped_vector(lm, "conscientiousness", log=print)
    if found is None:
        raise SystemExit("no shipped conscientiousness vector for this model (scripts/ship_vectors.py)")
    vec, path = found
    opt = vec.extra["optimisation"]
    print(f"shipped: {path.name} · {vec.method} · layers {vec.default_layers} · recommended strength "
          f"{vec.recommended_strength:+.2f} · learned {opt['strength']:.4f} · best step {opt['best_step']} of "
          f"{opt['steps_run']} · val loss {opt['initial_val_loss']:.4f} -> {opt['best_val_loss']:.4f} · pairs "
          f"{vec.dataset.get('n_train')} train / {vec.dataset.get('n_val')} val")
    lda = build_by_recipe(lm, recipe.fallback, progress=True, log=print).vector
    built, _rows, _p = builtin_vector(lm, "conscientiousness", progress=True)
    for name, other in (("fallback lda", lda), ("built-in", built)):
        cos = {layer: float(vec.direction(layer) @ other.direction(layer)) for layer in vec.default_layers}
        print(f"cos(shipped, {name}) per layer: " + ", ".join(f"{k}: {v:+.3f}" for k, v in cos.items()))
    for path in lab_vector or []:  # e.g. the lab optimise output, the script-trained file, another seed
        from steerwatch.vector import load_vector

        lab = load_vector(path)
        lays = vec.default_layers
        diff = max(float((vec.direction(layer) - lab.direction(layer)).abs().max()) for layer in lays)
        neg = max(float((vec.direction(layer) + lab.direction(layer)).abs().max()) for layer in lays)
        cos = ", ".join(f"{layer}: {vec.cosine(lab, layer):+.3f}" for layer in lays)
        o = lab.extra.get("optimisation", {})
        same = o.get("loss_curve") == opt["loss_curve"] and lab.validation == vec.validation
        print(f"{path} ({lab.concept}): largest |shipped - it| {diff:.1e}, |shipped + it| {neg:.1e}; cos per layer "
              f"{cos}; same loss curve and validation rows: {same}")
    distress, _dpath = builtin_distress(lm, progress=True)
    for name, v in (("shipped", vec), ("fallback lda", lda), ("built-in", built)):
        for s in (0.02, 0.04):
            for r in check_steering(SteerSpec(v, strength=s), distress, subject=f"{name} {s:+.2f}"):
                print(f"guard {name} {s:+.2f}: {r.level} {r.code}: {r.message}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("concept", nargs="?", default="honesty", choices=("honesty", "conscientiousness"))
    ap.add_argument("--lab-vector", action="append", help="conscientiousness: also compare with this vector file "
                                                           "(repeatable; e.g. out/lab/conscientiousness-bipo.sv from "
                                                           "steerwatch lab optimise)")
    args = ap.parse_args()
    from steerwatch.evals.recipes import recipe_for, shipped_vector
    from steerwatch.extract.library import builtin_vector
    from steerwatch.models import load_model
    from steerwatch.policy.distress import builtin_distress
    from steerwatch.policy.guard import check_steering
    from steerwatch.steer import SteerSpec

    lm = load_model("default", progress=False)
    if args.concept == "conscientiousness":
        return conscientiousness(lm, args.lab_vector)
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
