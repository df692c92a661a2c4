"""What `extract` and `generate` say about results that mislead (issue 21 item 3): the AUROC
interval and warning on a small validation split, the one-line explanation of the two layer choices,
the data checks run on the pair file before the model loads (--strict), and the warning on an
incoherent generated answer."""
from __future__ import annotations

import json
import math
import random

import pytest
import torch

from conftest import vowel_contrast
from steerwatch.data import ContrastSet
from steerwatch.extract.build import LayerRow, build_vector, explain_layers, layer_rows, small_validation_warning
from steerwatch.extract.metrics import MIN_VAL_PAIRS, Z95, auroc_interval
from tolerances import DOUBLE


# --------------------------------------------------------------------------- the interval
def test_auroc_interval_is_wilson_on_the_smaller_side():
    # AUROC 1.000 on 5 vs 5: the Wilson lower bound n / (n + z^2), not Hanley-McNeil's degenerate 1.0
    lo, hi = auroc_interval(1.0, 5, 5)
    assert lo == DOUBLE.approx(5 / (5 + Z95**2)) and lo == DOUBLE.approx(0.5655175352168252) and hi == 1.0
    # 50 % on 100: the textbook Wilson interval 0.4038-0.5962
    assert auroc_interval(0.5, 100, 100) == DOUBLE.approx((0.4038315303659956, 0.5961684696340044))
    assert auroc_interval(0.8, 20, 20) == DOUBLE.approx((0.5839825677481065, 0.9193423374202019))
    assert auroc_interval(1.0, 5, 500) == auroc_interval(1.0, 5, 5)  # the smaller side sets the width
    assert auroc_interval(0.0, 5, 5) == DOUBLE.approx((0.0, 1 - 5 / (5 + Z95**2)))
    assert all(math.isnan(x) for x in auroc_interval(float("nan"), 5, 5))
    with pytest.raises(ValueError, match="at least one positive"):
        auroc_interval(0.9, 0, 5)


def _rows(aurocs):
    return [LayerRow(layer=i, auroc=a, paired_acc=a, cohens_d=float(i) / 100, norm=1.0) for i, a in enumerate(aurocs)]


def test_small_validation_warning_names_n_interval_ties_and_the_fix():
    rows = _rows([1.0, 1.0, 0.9, 1.0])
    msg = small_validation_warning(rows, 5)
    assert msg == ("only 5 validation pairs (fewer than 20): the best val AUROC 1.000 (layer 3) has a 95% "
                   "interval of 0.57-1.00; 3 of 4 layers score 1.000, so the per-layer AUROCs cannot tell layers "
                   "apart; add pairs, or mark more of them \"split\": \"val\" (unmarked pairs go ~20 % to val)")
    assert MIN_VAL_PAIRS == 20
    assert small_validation_warning(rows, 20) is None and small_validation_warning(rows, 19) is not None


def _contrast(n: int = 20) -> ContrastSet:
    return vowel_contrast(n)


def test_build_vector_warns_on_a_small_validation_split_and_stores_the_intervals(qwen, tmp_path):
    from steerwatch.vector import load_vector

    logs: list[str] = []
    vec, rows = build_vector(qwen, _contrast(), progress=False, log=logs.append)
    assert len(vec.warnings) == 1 and logs == vec.warnings
    assert vec.warnings[0] == small_validation_warning(rows, 6)
    assert vec.warnings[0].startswith("only 6 validation pairs (fewer than 20)")
    for r in rows:
        assert r.n_val == 6 and (r.auroc_lo, r.auroc_hi) == auroc_interval(r.auroc, 6, 6)
        assert vec.validation[r.layer]["n_val"] == 6 and vec.validation[r.layer]["auroc_lo"] == r.auroc_lo
    again = load_vector(vec.save(tmp_path / "v.sv"))
    assert again.warnings == [] and "warnings" not in again.metadata()  # not saved; the rows are
    assert [r.as_dict() for r in layer_rows(again)] == [r.as_dict() for r in rows]


# --------------------------------------------------------------------------- the two layer rules
def _vector(aurocs, default_layers):
    from steerwatch.vector import Vector

    n = len(aurocs)
    return Vector(directions={i: torch.zeros(4) for i in range(n)}, concept="c", model_name="m",
                  model_fingerprint="f", hidden_size=4, method="mean_diff", read_position="completion_mean",
                  default_layers=default_layers, residual_norm={i: {"mean": 1.0} for i in range(n)}, n_model_layers=n,
                  validation={r.layer: {"auroc": r.auroc, "cohens_d": r.cohens_d} for r in _rows(aurocs)})


def test_explain_layers_says_why_reading_and_steering_layers_differ():
    from steerwatch.extract.build import choose_layers

    aurocs = [0.5] * 24
    aurocs[0], aurocs[6] = 1.0, 0.9  # layer 0 reads best; layer 6 is the best in the middle band (4-17)
    chosen = choose_layers(_rows(aurocs), 24, k=6)
    assert chosen == [2, 3, 4, 5, 6, 7]
    vec = _vector(aurocs, chosen)
    assert explain_layers(vec, _rows(aurocs), auto=True) == (
        "layers: steering at 2-7 = the 6 layers up to one after layer 6, the best within the middle band 4-17, "
        "where steering works; reading: best at layer 0 (val AUROC 1.000); the first and last blocks can read "
        "well but steer poorly")
    # ties at the top are said; when the band's best is the overall best, so is that
    aurocs[6], aurocs[7] = 1.0, 1.0
    aurocs[0] = 0.95
    vec = _vector(aurocs, choose_layers(_rows(aurocs), 24, k=1))
    assert explain_layers(vec, _rows(aurocs), auto=True) == (
        "layers: steering at 7 = layer 7, the best within the middle band 4-17, where steering works; reading: "
        "best at layer 7 (val AUROC 1.000, ties 1 other layer(s), broken by Cohen's d); the same layer")
    assert explain_layers(_vector(aurocs, [10, 12]), _rows(aurocs), auto=False) == (
        "layers: steering at 10,12 (as given with --layers); reading: best at layer 7 (val AUROC 1.000, ties 1 "
        "other layer(s), broken by Cohen's d)")


# --------------------------------------------------------------------------- extract on a user's file
def _write_unbalanced(path, n: int = 10):
    """Long positive completions, short negative ones: data check fails it on length balance."""
    rng = random.Random(2)
    rows = [{"prompt": f"Q{i}: " + "".join(rng.choice("bcdfgh") for _ in range(4)),
             "positive": " ".join("".join(rng.choice("aeiou") for _ in range(5)) for _ in range(6)),
             "negative": "".join(rng.choice("0123456789") for _ in range(6)),
             "split": "val" if i % 3 == 0 else "train"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_cli_extract_warns_with_data_checks_layers_and_small_validation(qwen, monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import steerwatch.cli.extract as cli_extract
    from steerwatch.cli.main import app
    from steerwatch.data import load_pairs
    from steerwatch.data.check import check_pairs
    from steerwatch.vector import load_vector

    data = tmp_path / "pairs.jsonl"
    _write_unbalanced(data)
    failed = {r.check: r for r in check_pairs(load_pairs(str(data))) if r.status == "fail"}
    assert list(failed) == ["length balance"]
    seen: list[str] = []

    def fake_load(spec, **kw):
        seen.append("load")
        return qwen

    warn = cli_extract.warn
    monkeypatch.setattr(cli_extract, "load", fake_load)
    monkeypatch.setattr(cli_extract, "warn", lambda m: (seen.append(m.split(":")[0]), warn(m)))
    runner = CliRunner()
    res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "v.sv")])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    # data check's own words, as warnings, before the model loaded; the small-validation warning after
    want = f"warning: data check length balance: fail: {failed['length balance'].detail}"
    assert want in flat
    assert seen == ["data check label balance", "data check length balance", "load", "only 4 validation pairs "
                    "(fewer than 20)"]
    vec = load_vector(tmp_path / "v.sv")
    rows = layer_rows(vec)
    assert " ".join(explain_layers(vec, rows, auto=True).split()) in flat
    assert "warning: " + " ".join(small_validation_warning(rows, 4).split()) in flat  # 4 of 10 in val
    assert "interval" in flat and f"{rows[0].auroc_lo:.2f}-{rows[0].auroc_hi:.2f}" in flat  # the table's column
    info = runner.invoke(app, ["info", str(tmp_path / "v.sv")])
    assert info.exit_code == 0 and f"{rows[0].auroc_lo:.2f}-{rows[0].auroc_hi:.2f}" in info.output
    assert "only 4 validation pairs: the AUROCs are rough" in " ".join(info.output.split())
    # --strict: the failed check is an error, and the model never loads
    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: pytest.fail("model loaded"))
    res = runner.invoke(app, ["extract", str(data), "-o", str(tmp_path / "w.sv"), "--strict"])
    assert res.exit_code == 2, res.output
    assert f"error: {data} fails data check (length balance); fix the file" in " ".join(res.output.split())
    assert not (tmp_path / "w.sv").exists()


# --------------------------------------------------------------------------- incoherent answers
LOOP = "I am here. " * 12  # 36 words: 3 distinct of 33 4-grams (repeat 30/33 = 0.91), 3 of 35 bigrams
# (0.09), a loop of 11 whole 11-character units (121; the last lost its space)
FINE = "Paris is the capital of France, and it sits on the Seine in the north of the country."


def test_incoherence_of_a_constructed_degenerate_text():
    from steerwatch.runtime import Generation
    from steerwatch.watch.quality import incoherence

    assert incoherence(FINE) == []
    assert incoherence(LOOP) == ["repeated 4-grams 0.91 > 0.25", "distinct bigrams 0.09 < 0.5",
                                 "a loop of 121 characters > 32"]
    assert Generation(text=LOOP, prompt_ids=[1], new_ids=[2]).incoherence == incoherence(LOOP)
    assert Generation(text=FINE, prompt_ids=[1], new_ids=[2]).incoherence == []


def test_cli_generate_warns_per_incoherent_answer(qwen, monkeypatch, tmp_path, vector_factory):
    from typer.testing import CliRunner

    import steerwatch.cli.generate as cli_generate
    import steerwatch.runtime as runtime
    from steerwatch.cli.main import app
    from steerwatch.runtime import Generation

    class Fake:
        def generate(self, prompts, opts, **kw):
            return [Generation(text=t, prompt_ids=[1], new_ids=[2]) for t in (FINE, LOOP)]

    monkeypatch.setattr(cli_generate, "load", lambda spec, **kw: qwen)
    monkeypatch.setattr(runtime, "make_engine", lambda loaded, name: Fake())
    monkeypatch.setattr(cli_generate, "_guard", lambda *a: None)
    vec = vector_factory(qwen)
    vpath = vec.save(tmp_path / "v.sv")
    runner = CliRunner()
    res = runner.invoke(app, ["generate", "a", "b", "-o", str(tmp_path / "o.jsonl"), "--steer", f"{vpath}:+0.08"])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.split())
    assert ("warning: answer 2 looks incoherent (repeated 4-grams 0.91 > 0.25; distinct bigrams 0.09 < 0.5; a loop "
            "of 121 characters > 32): the steering strength may be too high; working doses on the embedded model "
            "are 0.02-0.04 (docs/steering.md)") in flat
    assert "answer 1 looks" not in flat
    rows = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["incoherent"] for r in rows] == [[], ["repeated 4-grams 0.91 > 0.25", "distinct bigrams 0.09 < 0.5",
                                                    "a loop of 121 characters > 32"]]
    # unsteered: the same warning without the dose hint
    res = runner.invoke(app, ["generate", "a", "b"])
    assert res.exit_code == 0 and "answer 2 looks incoherent" in res.output
    assert "steering strength" not in res.output


@pytest.mark.embedded
def test_embedded_honesty_at_008_is_flagged_incoherent_and_004_is_not(embedded_qwen, embedded_honesty):
    """The user's report: +0.08 on the default layers gave silent gibberish. One batch, one prompt
    steered two ways (per-row steering equals steering alone): +0.08 fails the coherence statistics
    and the CLI's warning says so with the dose hint; a working dose (+0.04) passes."""
    from steerwatch.cli.generate import incoherence_warnings
    from steerwatch.runtime import GenerationOptions, generate
    from steerwatch.steer import SteerSpec

    vec, _ = embedded_honesty
    prompt = "Give me one tip for writing clear emails."
    gens = generate(embedded_qwen, [prompt, prompt], GenerationOptions(max_new_tokens=48),
                    rows=[[SteerSpec(vector=vec, strength=0.08)], [SteerSpec(vector=vec, strength=0.04)]])
    assert gens[0].incoherence and gens[1].incoherence == [], [g.text for g in gens]
    (reasons, message), (ok, _) = incoherence_warnings([g.text for g in gens], steered=True)
    assert reasons == gens[0].incoherence and ok == []
    assert message.startswith("answer 1 looks incoherent (") and "working doses on the embedded model are 0.02-0.04" \
        in message
