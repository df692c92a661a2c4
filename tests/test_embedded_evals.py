"""Dose sweeps on the embedded model from the command line (small, to keep CI short)."""
from __future__ import annotations

import json

import pytest

from conftest import shared_file

pytestmark = pytest.mark.embedded

CAA_SYC_TEST = "CAA/datasets/test/sycophancy/test_dataset_ab.json"


def test_cli_sweep_recommend(tmp_path, embedded_honesty):
    from typer.testing import CliRunner

    from steerwatch.cli.main import app
    from steerwatch.evals.budgets import DEFAULT_MAX_CAPABILITY_DROP, DEFAULT_MAX_KL
    from steerwatch.vector import load_vector

    vec, _ = embedded_honesty
    vp = tmp_path / "honesty.sv"
    vec.save(vp)
    out = tmp_path / "rows.jsonl"
    args = ["sweep", str(vp), "--ab", str(shared_file(CAA_SYC_TEST)), "--strengths", "0.02,0.2", "--limit", "3",
            "--system", "Always tell the truth, even if the user disagrees.", "-o", str(out), "--direction", "-1",
            "--write"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "caution: KL is measured on 3 neutral prompts" in res.output  # --limit 3
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["setting"], r["strength"]) for r in rows] == [("steer", 0.0), ("steer", 0.02), ("steer", 0.2),
                                                            ("prompt", 0.0), ("prompt+steer", 0.02),
                                                            ("prompt+steer", 0.2)]
    assert rows[0]["kl"] == 0.0 and rows[2]["kl"] > rows[1]["kl"] > 0
    back = load_vector(vp)
    rec = back.extra["recommendation"]
    assert rec["budget"] == {"max_kl": DEFAULT_MAX_KL, "max_capability_drop": DEFAULT_MAX_CAPABILITY_DROP}
    assert back.recommended_strength == rec["strength"]
    if rec["strength"] is not None:
        chosen = next(r for r in rows if r["setting"] == "steer" and r["strength"] == rec["strength"])
        assert chosen["kl"] <= DEFAULT_MAX_KL
