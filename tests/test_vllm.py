"""The vLLM engine. Here, in the main environment (no vLLM): the engine's clear errors. The equality
tests against the Hugging Face engine run in the vLLM environment (tests_vllm/, started below with
the vectors this session built), since vLLM pins its own torch and transformers."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from steerwatch.errors import SteerwatchError
from steerwatch.runtime import make_engine
from steerwatch.runtime.vllm_engine import VLLMUnavailable, plan_ops
from steerwatch.steer import SteerSpec
from tolerances import FP32_ROUTE

ROOT = Path(__file__).resolve().parents[1]


def test_vllm_missing_is_a_clear_error(qwen, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, as where it is not installed
    with pytest.raises(VLLMUnavailable, match="pip install vllm"):
        make_engine(qwen, "vllm")
    with pytest.raises(SteerwatchError, match="unknown engine 'tgi'; valid: hf, vllm"):
        make_engine(qwen, "tgi")


@pytest.mark.parametrize("argv", [["generate", "hi"], ["eval", "missing.sv", "--strength", "0.1"],
                                  ["sweep", "missing.sv", "--ab", "missing.json"],
                                  ["serve", "--policy", "missing.yaml"]])
def test_cli_rejects_an_unknown_engine_before_loading_anything(argv):
    from steerwatch.cli.main import app

    res = CliRunner().invoke(app, [*argv, "--engine", "tgi"])
    assert res.exit_code == 2
    assert "unknown --engine 'tgi'; valid: hf, vllm" in res.output


def test_plan_ops_compile_the_hf_units(qwen):
    """The worker's operations carry the same pushes as the HF hooks: strength x layer norm x unit."""
    from conftest import make_vector

    vec = make_vector(qwen, seed=1, default_layers=(1, 2))
    ops = plan_ops([SteerSpec(vec, op="ablate", layers=(2,)), SteerSpec(vec, strength=0.5, positions="generated"),
                    SteerSpec(vec, strength=0.0), SteerSpec(vec, op="clamp", strength=0.25, layers=(1,))], 4)
    assert [(o["layer"], o["kind"], o["pos"]) for o in ops] == [
        (2, "proj", "all"), (1, "add", "generated"), (2, "add", "generated"), (1, "proj", "all")]
    u1 = vec.direction(1)
    assert ops[1]["vec"] == FP32_ROUTE.approx((0.5 * vec.norm(1) * u1).tolist())
    assert ops[3]["target"] == FP32_ROUTE.approx(0.25 * vec.norm(1)) and ops[0]["target"] == 0.0
    with pytest.raises(SteerwatchError, match="layer"):
        plan_ops([SteerSpec(vec, strength=0.1, layers=(1,))], 1)


@pytest.mark.embedded
def test_vllm_engine_equals_the_hf_engine_on_the_embedded_model(builtin_vector, tmp_path):
    """tests_vllm/ in the vLLM environment: greedy tokens and detector scores of the two engines
    (unsteered, steered, eight settings in one batch vs each alone), conditional steering (token and
    prompt mode), streaming and stopping, bad input, and the server on the vLLM engine."""
    py = os.environ.get("STEERWATCH_VLLM_PYTHON")
    if not py:
        pytest.fail("set STEERWATCH_VLLM_PYTHON to the python of the vLLM environment (scripts/vllm_venv.sh builds "
                    "it; .ci/run does so and sets it)")
    for concept in ("honesty", "cheating", "distress"):
        builtin_vector(concept)[0].save(tmp_path / f"{concept}.sv")
    env = {**os.environ, "STEERWATCH_VLLM_TEST_VECTORS": str(tmp_path), "VLLM_CPU_KVCACHE_SPACE": "1"}
    res = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests_vllm"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    tail = res.stdout[-8000:] + "\n" + res.stderr[-4000:]
    assert res.returncode == 0, tail
    summary = res.stdout.strip().splitlines()[-1]
    assert re.search(r"\b8 passed\b", summary) and "skipped" not in summary and "failed" not in summary, tail
