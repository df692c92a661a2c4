"""A concept's steering recipe and the vectors steerwatch ships for it (steerwatch.evals.recipes):
a shipped vector stands in for the recipe only on the model, items and settings it was built
from; `steerwatch extract honesty` and the quickstart use it, and say where it came from."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import steerwatch.cli.extract as cli_extract
import steerwatch.evals.recipes as recipes
from conftest import make_vector, vowel_contrast
from steerwatch.cli.main import app
from steerwatch.errors import SteerwatchError
from steerwatch.evals.recipes import RECIPES, recipe_for, recommended_vector, shipped_vector
from steerwatch.vector import load_vector
from tolerances import FP32_BATCH, changed


def _recipe_vector(loaded, recipe, **settings):
    vec = make_vector(loaded, layers=[1, 2], default_layers=[1, 2], concept=recipe.concept)
    vec.method = recipe.method
    vec.extra = {"optimisation": {**recipe.settings(), **settings}}
    vec.recommended_strength = 0.04
    return vec


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """``ship(loaded, vec, **row)``: put ``vec`` into a shipped folder of its own, as
    scripts/ship_vectors.py writes it (fingerprint and the current items' SHA-256 unless given)."""
    folder = tmp_path / "shipped"
    folder.mkdir()
    monkeypatch.setattr(recipes, "shipped_dir", lambda: folder)
    rows = []

    def ship(loaded, vec, **row):
        name = f"v{len(rows)}.sv"
        vec.save(folder / name)
        rows.append({"file": name, "concept": vec.concept, "model_fingerprint": loaded.fingerprint,
                     **({} if "items_sha256" in row else {"items_sha256": recipes._items_sha256(vec.concept)}), **row})
        (folder / "manifest.json").write_text(json.dumps(rows))
        return folder / name
    return ship


def test_recipe_matches_names_each_setting_that_differs(qwen):
    r = recipe_for("honesty")
    assert r is RECIPES["honesty"] and recipe_for("cheating") is None
    assert r.matches(_recipe_vector(qwen, r)) is None
    why = r.matches(_recipe_vector(qwen, r, steps=r.steps + 10, lr=0.5))
    assert why is not None and f"steps {r.steps + 10}" in why and "lr 0.5" in why and "max_strength" not in why
    assert "it is a mean_diff vector" in r.matches(make_vector(qwen, concept="honesty"))
    assert r.with_(steps=7, lr=None).steps == 7 and r.with_(steps=7, lr=None).lr == r.lr
    assert r.command("h.sv", [9, 10, 11, 12, 13, 14]).startswith(
        "steerwatch extract honesty --onpolicy --method fewshot --layers 9-14 --max-strength 0.05 --steps 40 ")


def test_shipped_vector_only_for_its_model_items_and_settings(qwen, llama, shipped):
    r = RECIPES["honesty"]
    assert shipped_vector(qwen, "honesty") is None  # nothing shipped
    path = shipped(qwen, _recipe_vector(qwen, r))
    vec, where = shipped_vector(qwen, "honesty")
    assert where == path and torch.equal(vec.direction(1), load_vector(path).direction(1))
    assert shipped_vector(llama, "honesty") is None  # another model's weights
    logs: list[str] = []
    assert shipped_vector(qwen, "honesty", recipe=r.with_(steps=r.steps + 1), log=logs.append) is None
    assert "steps 40 (recipe 41)" in logs[-1]
    assert shipped_vector(qwen, "sycophancy") is None  # no recipe


def test_shipped_vector_of_other_items_is_not_used(qwen, shipped):
    shipped(qwen, _recipe_vector(qwen, RECIPES["honesty"]), items_sha256="0" * 64)
    logs: list[str] = []
    assert shipped_vector(qwen, "honesty", log=logs.append) is None
    assert "built from other on-policy items" in logs[-1]


def test_recommended_vector_uses_the_shipped_one_and_refuses_concepts_without_a_recipe(qwen, shipped):
    shipped(qwen, _recipe_vector(qwen, RECIPES["honesty"]))
    vec, source = recommended_vector(qwen, "honesty")
    assert source == "shipped" and vec.method == "fewshot"
    with pytest.raises(SteerwatchError,
                       match="'cheating' has no steering recipe; concepts with one: conscientiousness, honesty"):
        recommended_vector(qwen, "cheating")


def test_cli_extract_honesty_writes_the_shipped_vector_without_training(qwen, shipped, tmp_path, monkeypatch):
    import steerwatch.extract.optimise as optimise

    path = shipped(qwen, _recipe_vector(qwen, RECIPES["honesty"]))
    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: qwen)
    monkeypatch.setattr(optimise, "optimise_vector", lambda *a, **k: pytest.fail("trained"))
    runner = CliRunner()
    res = runner.invoke(app, ["extract", "honesty", "-o", str(tmp_path / "h.sv")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "the vector steerwatch ships for this model" in text and "--rebuild runs that here" in text
    assert "--layers 1-2" in text and "steer at +0.03" in text
    got, want = load_vector(tmp_path / "h.sv"), load_vector(path)
    assert got.method == "fewshot" and got.default_layers == [1, 2]
    assert all(torch.equal(got.direction(layer), want.direction(layer)) for layer in (1, 2))


def test_the_conscientiousness_recipe_trains_on_lab_answers_and_falls_back_to_lda():
    r = RECIPES["conscientiousness"]
    assert r.lab and r.optimised and not RECIPES["honesty"].lab and r.strength == 0.04
    assert r.settings() == {"method": "bipo", "max_strength": 0.08, "steps": 20, "eval_every": 5, "patience": 3,
                            "lr": 0.01, "batch_size": 2, "seed": 0, "data": "lab"}
    assert r.command("c.sv", [10, 11, 12]) == (
        "steerwatch lab optimise DEV_EPISODES.jsonl --special PRONE_SETTING --general GENERAL_SETTINGS --concept "
        "conscientiousness --method bipo --layers 10-12 --max-strength 0.08 --steps 20 --eval-every 5 --patience 3 "
        "--lr 0.01 --batch-size 2 --seed 0 -o c.sv")
    fb = r.fallback
    assert fb is not None and not fb.optimised and fb.settings() == {"method": "lda", "data": "pairs"}
    assert fb.strength == 0.04
    assert fb.command("c.sv", [10, 11, 12]) == \
        "steerwatch extract conscientiousness --method lda --layers 10-12 -o c.sv"


def _lab_vector(loaded, recipe, **settings):
    vec = _recipe_vector(loaded, recipe, **settings)
    vec.dataset = {"name": "lab-special-casing", "sha256": "ab" * 32}
    return vec


def test_recommended_conscientiousness_vector_is_the_shipped_lab_one_else_the_fallback(qwen, shipped, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setenv("STEERWATCH_CACHE", str(tmp_path / "cache"))  # the built-in vector's layers: built here
    from steerwatch.data import load_concept
    from steerwatch.extract.build import build_vector

    r = RECIPES["conscientiousness"]
    fb = r.fallback
    assert fb is not None
    logs: list[str] = []
    vec, source = recommended_vector(qwen, "conscientiousness", log=logs.append)  # nothing shipped: the fallback
    assert source == "built" and vec.method == "lda" and vec.recommended_strength == 0.04
    assert "no lab-trained conscientiousness vector ships" in logs[0] and "steerwatch lab optimise" in logs[0]
    assert vec.extra["recipe"] == {"method": "lda", "data": "pairs", "strength": 0.04, "chosen": fb.chosen}
    assert fb.matches(vec) is None and "it is a mean_diff vector, the recipe extracts lda" in fb.matches(
        make_vector(qwen, concept="conscientiousness"))
    mean_diff, _ = build_vector(qwen, load_concept("conscientiousness"), progress=False)
    assert vec.default_layers == recipes.recipe_layers(qwen, "conscientiousness") == mean_diff.default_layers
    plain, _ = build_vector(qwen, load_concept("conscientiousness"), method="lda", layers=mean_diff.default_layers,
                            progress=False)
    for layer in vec.default_layers:
        assert FP32_BATCH.allclose(vec.direction(layer), plain.direction(layer))  # batch 16 vs 8
        assert changed(vec.direction(layer), mean_diff.direction(layer))
    with pytest.raises(SteerwatchError, match="trains on the model's own lab answers: run `steerwatch lab run"):
        recommended_vector(qwen, "conscientiousness", rebuild=True)
    # a lab vector trained with other settings does not stand in for the recipe; one with the recipe's does
    shipped(qwen, _lab_vector(qwen, r, steps=5), items_sha256=None)
    assert shipped_vector(qwen, "conscientiousness", log=logs.append) is None and "steps 5 (recipe 20)" in logs[-1]
    path = shipped(qwen, _lab_vector(qwen, r), items_sha256=None)
    found = shipped_vector(qwen, "conscientiousness")
    assert found is not None and found[1] == path
    vec, source = recommended_vector(qwen, "conscientiousness")
    assert source == "shipped" and vec.method == "bipo"
    assert torch.equal(vec.direction(1), load_vector(path).direction(1))


def test_cli_extract_conscientiousness_defaults_to_its_recipe(qwen, shipped, tmp_path, monkeypatch):
    monkeypatch.setenv("STEERWATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: qwen)
    runner = CliRunner()
    res = runner.invoke(app, ["extract", "conscientiousness", "-o", str(tmp_path / "c.sv")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "no lab-trained conscientiousness vector ships for" in text and "steerwatch lab optimise" in text
    assert "the default is its steering recipe, lda over the built-in pairs at the built-in vector's layers" in text
    assert "steer at +0.04 (chosen on dev, stored as the vector's recommended strength)" in text
    assert "(the recipe: the built-in vector's)" in text
    vec = load_vector(tmp_path / "c.sv")
    assert vec.method == "lda" and vec.recommended_strength == 0.04 and vec.extra["recipe"]["strength"] == 0.04
    assert vec.default_layers == recipes.recipe_layers(qwen, "conscientiousness")
    res = runner.invoke(app, ["extract", "conscientiousness", "--layers", "1,2", "-o", str(tmp_path / "c2.sv")])
    assert res.exit_code == 0 and "not stored: --layers" in " ".join(res.output.split()), res.output
    vec2 = load_vector(tmp_path / "c2.sv")
    assert vec2.method == "lda" and vec2.recommended_strength is None and "recipe" not in vec2.extra
    res = runner.invoke(app, ["extract", "conscientiousness", "--method", "mean_diff", "-o", str(tmp_path / "m.sv")])
    assert res.exit_code == 0 and "steering recipe" not in res.output, res.output
    assert load_vector(tmp_path / "m.sv").method == "mean_diff"
    # the shipped lab vector, when there is one for the model: written as is, stamped with the dev-chosen dose
    path = shipped(qwen, _lab_vector(qwen, RECIPES["conscientiousness"]), items_sha256=None)
    res = runner.invoke(app, ["extract", "conscientiousness", "-o", str(tmp_path / "s.sv")])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "the vector steerwatch ships for this model, trained on its own lab answers" in text
    assert "steerwatch lab optimise DEV_EPISODES.jsonl" in text and "steer at +0.04" in text
    got, want = load_vector(tmp_path / "s.sv"), load_vector(path)
    assert got.method == "bipo" and got.recommended_strength == 0.04 and got.extra["recipe"]["data"] == "lab"
    assert all(torch.equal(got.direction(layer), want.direction(layer)) for layer in got.default_layers)
    for args in (["--rebuild"], ["--onpolicy"]):
        res = runner.invoke(app, ["extract", "conscientiousness", *args, "-o", str(tmp_path / "r.sv")])
        assert res.exit_code == 2 and "steerwatch lab optimise" in " ".join(res.output.split()), (args, res.output)
        assert not (tmp_path / "r.sv").exists()


def test_cli_extract_recipe_options_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    vowel_file = tmp_path / "pairs.jsonl"
    vowel_file.write_text("".join(json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative,
                                             "split": p.split}) + "\n" for p in vowel_contrast().pairs))
    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: pytest.fail("model loaded"))
    runner = CliRunner()
    for args, want in (
            (["honesty", "--read-method", "lda"], "for read directions pass --method mean_diff --read-method lda"),
            (["honesty", "--steps", "0"], "steps must be an integer >= 1"),
            ([str(vowel_file), "--rebuild"], "has no recipe to rebuild"),
            (["honesty", "--method", "lda", "--rebuild"], "--rebuild goes with a concept's default recipe"),
            (["honesty", "--layers", "9-"], "neither a layer number nor a range like 9-14")):
        res = runner.invoke(app, ["extract", *args, "-o", str(tmp_path / "v.sv")])
        assert res.exit_code == 2 and want in " ".join(res.output.split()), (args, res.output)
        assert not (tmp_path / "v.sv").exists()


def test_quickstart_steers_with_the_shipped_honesty_vector(qwen_chat, shipped, tmp_path):
    from steerwatch.quickstart import run_quickstart

    shipped(qwen_chat, _recipe_vector(qwen_chat, RECIPES["honesty"]))
    res = run_quickstart(qwen_chat, out_dir=tmp_path, strengths=(0.0, 0.5), split="dev", max_new_tokens=2,
                         progress=False)
    assert res.honesty_source == "shipped" and res.vectors["honesty"].method == "fewshot"
    assert load_vector(tmp_path / "honesty.sv").method == "fewshot"
    assert res.vectors["sycophancy"].method != "fewshot"
    plain = run_quickstart(qwen_chat, strengths=(0.0, 0.5), split="dev", max_new_tokens=2, progress=False,
                           honesty="builtin")
    assert plain.honesty_source == "built-in" and plain.vectors["honesty"].method != "fewshot"
    # the steering differs, so (on this tiny model) at least the steered answers' text does
    steered = [r["answer"] for r in res.bait_rows if r["setting"] == "+0.50"]
    assert steered != [r["answer"] for r in plain.bait_rows if r["setting"] == "+0.50"]
    with pytest.raises(SteerwatchError, match="honesty must be 'recommended' or 'builtin'"):
        run_quickstart(qwen_chat, strengths=(0.0,), honesty="best", progress=False)


def test_the_shipped_manifest_matches_its_files_items_and_recipe():
    """Every shipped vector exists, was built from today's on-policy items and with today's recipe
    settings, at the layers the manifest names: editing the items or the recipe without rebuilding
    (scripts/ship_vectors.py) fails here, not silently at a user's `extract`."""
    rows = recipes.shipped_manifest()
    assert rows, "no shipped vectors (src/steerwatch/data/shipped/manifest.json)"
    for row in rows:
        recipe = recipe_for(row["concept"])
        assert recipe is not None
        vec = load_vector(recipes.shipped_dir() / row["file"])
        assert vec.model_fingerprint == row["model_fingerprint"] and vec.concept == row["concept"]
        assert vec.default_layers == row["layers"]
        if recipe.lab:  # trained on lab answers: the manifest names the pairs the vector records
            assert row["items_sha256"] is None and row["pairs_sha256"] == vec.dataset["sha256"]
            assert vec.recommended_strength == recipe.strength and vec.extra["recipe"]["data"] == "lab"
        else:
            assert row["items_sha256"] == recipes._items_sha256(row["concept"]), "on-policy items changed: re-ship"
        assert recipe.matches(vec) is None and row["recipe"] == recipe.settings()
        assert row["command"] == recipe.command(f"{row['concept']}.sv", row["layers"])
