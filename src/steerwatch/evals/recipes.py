"""Each concept's recommended *steering* vector: the recipe chosen on the dev split, and the
vectors steerwatch ships, built by that recipe, for the embedded model.

For honesty the dev split chose a vector trained through the frozen model (``fewshot``) on the
model's own corrections (on-policy pairs), at the built-in vector's layers, steered at +0.03
(docs/results.md, "Every method on dev"; issue 17). That build takes about 23 minutes on 2 CPU
cores, so the embedded model's vector ships with steerwatch (``data/shipped/``, built by
``scripts/ship_vectors.py``) and is used when the loaded model's weights fingerprint matches and
the recipe and its on-policy items are the ones it was built from; any other model builds it.

For conscientiousness the reward-hacking lab's dev tasks chose a vector trained (``bipo``) on the
model's own lab answers: special-cased against general answers to the same dev prompts
(:mod:`steerwatch.lab.optimise`, ``steerwatch lab optimise``), steered at +0.04 at the built-in
vector's layers (10-15 on the embedded model; docs/results.md, "An optimised vector trained on the
model's own answers"). It needs lab episodes of the model to train on, so it ships for the embedded
model only; on any other model the concept falls back to the recipe chosen before it, ``lda`` over
the concept's own contrast pairs at +0.04 (a build of about a minute), and says how to train the
lab vector for that model.

The *reading* vector of a concept (detectors, ``steerwatch watch``, the serving guard's distress
check) is not affected: that stays the concept's built-in vector
(:func:`steerwatch.extract.library.builtin_vector`), whose validation AUROCs the detectors rest on.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..vector import Vector
    from .onpolicy import OnPolicyResult

# the optimisation settings a shipped vector must have been built with to stand in for the recipe
_MATCHED = ("max_strength", "steps", "eval_every", "patience", "lr", "batch_size", "seed")


@dataclass(frozen=True)
class Recipe:
    """How a concept's recommended steering vector is built. ``data="onpolicy"``: ``method`` (an
    optimised one) trained on the model's own on-policy pairs (:mod:`steerwatch.evals.onpolicy`) at
    the layers of the concept's built-in vector on that model, with these optimisation settings.
    ``data="pairs"``: ``method`` (an extraction method) over the concept's built-in contrast pairs,
    as ``steerwatch extract CONCEPT --method METHOD --layers L`` builds it, L again the built-in
    vector's layers (the optimisation settings are unused); ``strength``: the dose chosen on dev,
    stored in the vector as its recommended strength."""

    concept: str
    method: str = "fewshot"
    data: str = "onpolicy"
    max_strength: float = 0.05
    steps: int = 40
    eval_every: int = 5
    patience: int = 3
    lr: float = 0.01
    batch_size: int = 4
    seed: int = 0
    strength: float = 0.03
    chosen: str = ""  # where and how it was chosen (one line, for logs and docs)
    fallback: Recipe | None = None  # a lab recipe's stand-in where no lab-trained vector ships

    @property
    def optimised(self) -> bool:
        """Whether the recipe trains its vector through the model (on-policy or lab data) or extracts it."""
        return self.data in ("onpolicy", "lab")

    @property
    def lab(self) -> bool:
        """Whether the recipe trains on the model's own lab answers (`steerwatch lab optimise`)."""
        return self.data == "lab"

    def settings(self) -> dict[str, Any]:
        if not self.optimised:
            return {"method": self.method, "data": self.data}
        got = {k: getattr(self, k) for k in ("method", *_MATCHED)}
        return {**got, "data": "lab"} if self.lab else got

    def command(self, output: str = "honesty.sv", layers: list[int] | None = None) -> str:
        """The equivalent `steerwatch extract` command line."""
        lay = f"{layers[0]}-{layers[-1]}" if layers and layers == list(range(layers[0], layers[-1] + 1)) \
            else (",".join(map(str, layers)) if layers else "LAYERS")
        if not self.optimised:
            return f"steerwatch extract {self.concept} --method {self.method} --layers {lay} -o {output}"
        if self.lab:
            return (f"steerwatch lab optimise DEV_EPISODES.jsonl --special PRONE_SETTING --general GENERAL_SETTINGS "
                    f"--concept {self.concept} --method {self.method} --layers {lay} --max-strength "
                    f"{self.max_strength:g} --steps {self.steps} --eval-every {self.eval_every} --patience "
                    f"{self.patience} --lr {self.lr:g} --batch-size {self.batch_size} --seed {self.seed} -o {output}")
        return (f"steerwatch extract {self.concept} --onpolicy --method {self.method} --layers {lay} "
                f"--max-strength {self.max_strength:g} --steps {self.steps} --eval-every {self.eval_every} "
                f"--patience {self.patience} --lr {self.lr:g} -o {output}")

    def matches(self, vec: Vector) -> str | None:
        """None when ``vec`` was built by this recipe's method and settings, else why not."""
        opt = vec.extra.get("optimisation") or {}
        if vec.method != self.method:
            return f"it is a {vec.method} vector, the recipe {'trains' if self.optimised else 'extracts'} {self.method}"
        if not self.optimised:
            return None
        diff = [k for k in _MATCHED if opt.get(k) != getattr(self, k)]
        if diff:
            return "its " + ", ".join(f"{k} {opt.get(k)!r} (recipe {getattr(self, k)!r})" for k in diff)
        return None

    def with_(self, **changes: Any) -> Recipe:
        """The recipe with some settings changed (None values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


RECIPES: dict[str, Recipe] = {
    "honesty": Recipe(concept="honesty", chosen=(
        "chosen on the bait dev split among mean_diff, lda, onpolicy, onpolicy_lda, retrieval, retrieval_lda, bipo "
        "and fewshot (docs/results.md, 'Every method on dev'); test: 29 of 57 known agreements corrected, 9 of "
        "106 answers evasive")),
    "conscientiousness": Recipe(
        concept="conscientiousness", method="bipo", data="lab", max_strength=0.08, steps=20, eval_every=5, patience=3,
        lr=0.01, batch_size=2, seed=0, strength=0.04, chosen=(
            "chosen on the reward-hacking lab's dev tasks among mean_diff, lda, on-policy read directions and bipo on "
            "the model's own answers (docs/results.md, 'An optimised vector trained on the model's own answers'): on "
            "the cheat-prone setting, attempted special-casing 30/40 -> 1/40 (in-sample: the pairs are answers to "
            "those tasks; lda 11/40); test: 64/100 -> 5/100"),
        fallback=Recipe(concept="conscientiousness", method="lda", data="pairs", strength=0.04, chosen=(
            "chosen on the reward-hacking lab's dev tasks between mean_diff and lda (docs/results.md, 'The same arms "
            "with LDA vectors'): on the cheat-prone setting, attempted special-casing 30/40 -> 11/40 (mean_diff "
            "18/40); test: 64/100 -> 21/100"))),
}


def recipe_for(concept: str) -> Recipe | None:
    return RECIPES.get(concept)


def _items_sha256(concept: str) -> str:
    from .onpolicy import BUILTIN

    return hashlib.sha256(BUILTIN[concept]().read_bytes()).hexdigest()


def shipped_dir() -> Path:
    return Path(str(resources.files("steerwatch") / "data" / "shipped"))


def shipped_manifest() -> list[dict[str, Any]]:
    """The shipped vectors: ``[{"file", "concept", "model_name", "model_fingerprint", "layers",
    "items_sha256", "recipe", "command", "built"}]`` from ``data/shipped/manifest.json``."""
    path = shipped_dir() / "manifest.json"
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:  # pragma: no cover - the file is written by scripts/ship_vectors.py
        raise SteerwatchError(f"{path} is not valid JSON ({exc}); reinstall steerwatch") from None
    return list(rows)


def shipped_vector(loaded: LoadedModel, concept: str, *, recipe: Recipe | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[Vector, Path] | None:
    """The shipped vector that stands in for ``recipe`` (default: the concept's) on ``loaded``, or
    None: there is none for this model's weights fingerprint, or it was built from other on-policy
    items or other settings (``log`` says which)."""
    from ..vector import load_vector

    recipe = recipe or recipe_for(concept)
    if recipe is None or not recipe.optimised:  # an extracted recipe builds in about a minute: none shipped
        return None
    for row in shipped_manifest():
        if row.get("concept") != concept or row.get("model_fingerprint") != loaded.fingerprint:
            continue
        path = shipped_dir() / row["file"]
        if not recipe.lab and row.get("items_sha256") != _items_sha256(concept):
            if log:
                log(f"the shipped {concept} vector {path.name} was built from other on-policy items; not used")
            continue
        vec = load_vector(path)
        vec.check_model(loaded)
        why = recipe.matches(vec)
        if why:
            if log:
                log(f"the shipped {concept} vector {path.name} differs from the recipe asked for ({why}); not used")
            continue
        return vec, path
    return None


@dataclass
class RecipeBuild:
    vector: Vector
    history: dict[str, Any]
    onpolicy: OnPolicyResult | None  # None for a recipe over the built-in pairs
    layers: list[int]


def stamp_recipe(vec: Vector, recipe: Recipe) -> Vector:
    """Record in an extracted recipe's vector the dose chosen on dev (``recommended_strength``: shown
    by `steerwatch info`, checked by the serving guard, used by the GGUF export) and where it was
    chosen (``extra["recipe"]``)."""
    vec.recommended_strength = recipe.strength
    vec.extra = {**vec.extra, "recipe": {**recipe.settings(), "strength": recipe.strength, "chosen": recipe.chosen}}
    return vec


def recipe_layers(loaded: LoadedModel, concept: str, *, progress: bool = False,
                  log: Callable[[str], None] | None = None) -> list[int]:
    """The recipe's layers on ``loaded``: the default layers of the concept's built-in vector (built
    once and cached, about a minute on the embedded model)."""
    from ..extract.library import builtin_vector

    vec, _rows, _path = builtin_vector(loaded, concept, progress=progress, log=log)
    return list(vec.default_layers)


def build_by_recipe(loaded: LoadedModel, recipe: Recipe, *, layers: list[int] | None = None,
                    checkpoint: str | Path | None = None, batch_size: int = 16, progress: bool = False,
                    log: Callable[[str], None] | None = None) -> RecipeBuild:
    """Build ``recipe``'s vector on ``loaded``: on-policy pairs from the concept's built-in items
    (too few surviving the filter is an :class:`~steerwatch.errors.ExtractionError`, no vector),
    then the optimisation at ``layers`` (default :func:`recipe_layers`). Slow on CPU (about 23 min
    for the embedded model on 2 cores); ``checkpoint`` makes it resumable. A recipe over the built-in
    pairs (``data="pairs"``) extracts its vector instead (about a minute), at the same layers, and
    stamps it with the recipe's strength (:func:`stamp_recipe`)."""
    from ..extract.optimise import optimise_vector
    from .onpolicy import generate_onpolicy_pairs, load_onpolicy, onpolicy_summary

    if recipe.lab:
        raise SteerwatchError(lab_recipe_help(recipe))
    lay = list(layers) if layers is not None else recipe_layers(loaded, recipe.concept, progress=progress, log=log)
    if not recipe.optimised:
        from ..data import load_concept
        from ..extract.build import build_vector

        data = load_concept(recipe.concept)
        if log:
            log(f"{recipe.concept} recipe: {recipe.method} over the built-in pairs ({len(data.train)} train / "
                f"{len(data.val)} val) at layers {lay}")
        vec, rows = build_vector(loaded, data, method=recipe.method, layers=lay, batch_size=batch_size,
                                 progress=progress)
        return RecipeBuild(vector=stamp_recipe(vec, recipe), history={"layers": [r.as_dict() for r in rows]},
                           onpolicy=None, layers=lay)
    spec = load_onpolicy(recipe.concept)
    if log:
        log(f"answering {len(spec.items)} on-policy items under {len(spec.instructions)} instruction pair(s)")
    res = generate_onpolicy_pairs(loaded, spec, batch_size=batch_size, progress=progress, check=False)
    if log:
        log(f"on-policy: {onpolicy_summary(res.counts)}")
    res.check()
    vec, hist = optimise_vector(loaded, res.data, method=recipe.method, layers=lay, steps=recipe.steps, lr=recipe.lr,
                                max_strength=recipe.max_strength, batch_size=recipe.batch_size, seed=recipe.seed,
                                eval_every=recipe.eval_every, patience=recipe.patience, checkpoint=checkpoint,
                                progress=progress, concept=recipe.concept)
    return RecipeBuild(vector=vec, history=hist, onpolicy=res, layers=lay)


def recommended_vector(loaded: LoadedModel, concept: str, *, rebuild: bool = False, progress: bool = False,
                       log: Callable[[str], None] | None = None) -> tuple[Vector, str]:
    """``concept``'s recommended steering vector on ``loaded`` and where it came from: ``"shipped"``
    (the vector built by the recipe for this model, read from the package) or ``"built"`` (the
    recipe run here: slow on CPU for an optimised recipe, about a minute for one over the built-in
    pairs; a lab recipe without a shipped vector builds its ``fallback``). A concept without a
    recipe is an error naming the ones with. With ``rebuild`` a lab recipe is an error that says how
    to train its vector (it needs the model's lab answers)."""
    recipe = recipe_for(concept)
    if recipe is None:
        raise SteerwatchError(f"{concept!r} has no steering recipe; concepts with one: {', '.join(sorted(RECIPES))}. "
                              "Its built-in vector is steerwatch.extract.library.builtin_vector(loaded, concept)")
    if not rebuild:
        found = shipped_vector(loaded, concept, recipe=recipe, log=log)
        if found is not None:
            return found[0], "shipped"
    if recipe.lab and recipe.fallback is not None and not rebuild:
        if log:
            log(f"no lab-trained {concept} vector ships for {loaded.name}; building the fallback recipe "
                f"({recipe.fallback.method} over the built-in pairs). {lab_recipe_help(recipe)}")
        recipe = recipe.fallback
    return build_by_recipe(loaded, recipe, progress=progress, log=log).vector, "built"


def lab_recipe_help(recipe: Recipe) -> str:
    """How to build a lab recipe's vector for a model (it trains on that model's own lab answers)."""
    return (f"The {recipe.concept} recipe trains on the model's own lab answers: run `steerwatch lab run --split dev` "
            "with a setting that special-cases the tests and one that does not on the same prompts (docs/lab.md, "
            f"'Training a vector on the model's own answers'), then `{recipe.command(f'{recipe.concept}.sv')}`")
