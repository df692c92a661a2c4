"""Build (or adopt) the vectors steerwatch ships for the embedded model: each concept's recommended
steering vector (:mod:`steerwatch.evals.recipes`), written to ``src/steerwatch/data/shipped/`` with
an entry in its ``manifest.json`` (weights fingerprint, layers, the on-policy items' SHA-256, the
recipe's settings and the command that builds the same vector).

Build by the recipe here (about 23 min on 2 CPU cores for honesty)::

    python scripts/ship_vectors.py honesty

Or adopt a vector already built by the recipe's command line (checked: method, settings, model,
layers)::

    steerwatch extract honesty --onpolicy --method fewshot --layers 9-14 --max-strength 0.05 --steps 40 \\
        --eval-every 5 --patience 3 --lr 0.01 -o honesty-fewshot.sv
    python scripts/ship_vectors.py honesty --vector honesty-fewshot.sv

A lab recipe (conscientiousness) trains on the model's own lab answers, so it is always adopted: the
vector written by the recipe's ``steerwatch lab optimise`` command (docs/lab.md), stamped with the
dose chosen on dev; the manifest records the SHA-256 of its preference pairs instead of items::

    python scripts/ship_vectors.py conscientiousness --vector out/lab/conscientiousness-bipo.sv
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "steerwatch" / "data" / "shipped"


def main() -> None:
    from steerwatch.evals.recipes import _items_sha256, build_by_recipe, recipe_for, recipe_layers, stamp_recipe
    from steerwatch.models import load_model
    from steerwatch.vector import load_vector

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("concept")
    ap.add_argument("--vector", help="adopt this vector file (built by the recipe's command) instead of building")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    recipe = recipe_for(args.concept)
    if recipe is None:
        raise SystemExit(f"{args.concept!r} has no recipe (steerwatch.evals.recipes.RECIPES)")
    lm = load_model(args.model, progress=True)
    layers = recipe_layers(lm, args.concept, progress=True, log=print)
    t0 = time.time()
    if args.vector:
        vec = load_vector(args.vector)
        vec.check_model(lm)
        why = recipe.matches(vec)
        if why:
            raise SystemExit(f"{args.vector} was not built by the {args.concept} recipe: {why}")
        if vec.default_layers != layers:
            raise SystemExit(f"{args.vector} is at layers {vec.default_layers}; the recipe's are {layers}")
        seconds = None
        if recipe.lab:
            if vec.concept != args.concept:
                raise SystemExit(f"{args.vector} is a {vec.concept} vector; write it with --concept {args.concept}")
            vec = stamp_recipe(vec, recipe)
    elif recipe.lab:
        raise SystemExit(f"the {args.concept} recipe trains on lab answers: give --vector (built by "
                         f"{recipe.command(args.concept + '.sv', layers)})")
    else:
        vec = build_by_recipe(lm, recipe, layers=layers, progress=True, log=print).vector
        seconds = round(time.time() - t0, 1)
    SHIPPED.mkdir(parents=True, exist_ok=True)
    name = f"{args.concept}-{recipe.method}-{lm.fingerprint}.sv"
    vec.save(SHIPPED / name)
    manifest_path = SHIPPED / "manifest.json"
    rows = json.loads(manifest_path.read_text()) if manifest_path.is_file() else []
    rows = [r for r in rows if not (r["concept"] == args.concept and r["model_fingerprint"] == lm.fingerprint)]
    rows.append({"file": name, "concept": args.concept, "model_name": lm.name, "model_fingerprint": lm.fingerprint,
                 "layers": layers, "items_sha256": None if recipe.lab else _items_sha256(args.concept),
                 **({"pairs_sha256": vec.dataset.get("sha256"), "pairs": vec.dataset.get("source")}
                    if recipe.lab else {}),
                 "recipe": recipe.settings(), "strength": recipe.strength,
                 "learned_strength": vec.extra.get("optimisation", {}).get("strength", vec.recommended_strength),
                 "command": recipe.command(f"{args.concept}.sv", layers), "build_seconds": seconds,
                 "shipped": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    manifest_path.write_text(json.dumps(sorted(rows, key=lambda r: (r["concept"], r["model_fingerprint"])),
                                        indent=1) + "\n")
    print(f"shipped {SHIPPED / name} (layers {layers}, learned strength {rows[-1]['learned_strength']:.4f})")


if __name__ == "__main__":
    main()
