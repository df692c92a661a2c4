"""``device=`` / ``--device`` and ``--dtype`` wherever a model loads (issue 21, ecosystem: devices).
Run on CPU: CUDA and MPS availability is patched, so the same assertions hold on a GPU machine."""
from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from steerwatch.errors import ModelLoadError
from steerwatch.models import check_dtype, load_model, resolve_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, no_gpu):
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("AUTO") == "cuda"


def test_cpu_is_always_available(no_gpu):
    assert resolve_device("cpu") == "cpu"


def test_cuda_without_a_gpu_says_so_and_suggests_cpu(no_gpu):
    with pytest.raises(ModelLoadError, match=r"device 'cuda': CUDA is not available on this machine .* use device "
                                             r"'cpu' \(--device cpu\)"):
        resolve_device("cuda")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_mps_without_apple_silicon_says_so(no_gpu):
    with pytest.raises(ModelLoadError, match=r"device 'mps': Apple MPS is not available .* \(--device cpu\)"):
        resolve_device("mps")


def test_cuda_index_past_the_devices(one_gpu):
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ModelLoadError, match=r"has 1 CUDA device\(s\), numbered from 0; use cuda:0 .. cuda:0"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("bad", ["tpu", "gpu", "cuda:x", "cuda:"])
def test_unknown_devices_name_the_valid_ones(bad):
    with pytest.raises(ModelLoadError, match=r"unknown device .*; valid: auto, cpu, cuda, cuda:N, mps"):
        resolve_device(bad)


def test_unknown_dtype_names_the_valid_ones():
    check_dtype(None)
    check_dtype("bfloat16")
    with pytest.raises(ModelLoadError, match=r"unknown dtype 'fp8'; valid: float32, bfloat16, float16"):
        check_dtype("fp8")


def test_load_model_honours_device_and_dtype(qwen_chat, tmp_path, no_gpu):
    qwen_chat.model.save_pretrained(str(tmp_path / "m"))
    qwen_chat.tokenizer.save_pretrained(str(tmp_path / "m"))
    lm = load_model(str(tmp_path / "m"), device="auto", dtype="bfloat16", progress=False)
    assert lm.device == torch.device("cpu")
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_model(str(tmp_path / "m"), device="cuda", progress=False)


def _commands() -> dict[str, Any]:
    from steerwatch.cli.main import app

    found: dict[str, Any] = {}

    def walk(cmd: Any, path: str) -> None:
        if hasattr(cmd, "commands"):  # a group
            for name, sub in cmd.commands.items():
                walk(sub, f"{path} {name}".strip())
        else:
            found[path] = cmd

    walk(typer.main.get_command(app), "")
    return found


def test_every_command_that_loads_a_model_takes_device_and_dtype():
    loading = {}
    for path, cmd in _commands().items():
        fn = inspect.unwrap(cmd.callback)
        src = inspect.getsource(fn)
        if "load(" in src.replace("json.load(", "").replace("yaml.safe_load(", ""):
            loading[path] = {opt for p in cmd.params for opt in p.opts}
    assert {"generate", "scan", "view", "calibrate", "extract", "sweep", "serve", "data check",
            "policy check", "quickstart"} <= set(loading)
    missing = {path: sorted({"--device", "--dtype"} - opts) for path, opts in loading.items()
               if not {"--device", "--dtype"} <= opts}
    assert missing == {}


def test_cli_device_error_comes_before_the_model_loads(monkeypatch, no_gpu):
    import steerwatch.models as models
    from steerwatch.cli.main import app

    monkeypatch.setattr(models, "load_model", lambda *a, **kw: pytest.fail("model loaded"))
    res = CliRunner().invoke(app, ["generate", "hi", "--device", "cuda"])
    assert res.exit_code == 2
    text = " ".join(res.output.split())
    assert "error: device 'cuda': CUDA is not available" in text and "(--device cpu)" in text
    res = CliRunner().invoke(app, ["generate", "hi", "--dtype", "fp8"])
    assert res.exit_code == 2 and "unknown dtype 'fp8'" in res.output
