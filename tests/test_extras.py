"""A steering-only install (no ``serve`` extra): steerwatch imports, extracts, steers and watches;
``steerwatch serve`` and ``steerwatch policy`` say which extra to install. Run in a fresh
interpreter whose import system refuses the serve extra's packages, as if they were absent."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import sys

    # pydantic and PyYAML are in the extra too, but typer and huggingface_hub install them anyway
    BLOCKED = ("fastapi", "uvicorn", "sqlalchemy", "starlette")

    class Absent:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, Absent())
    import torch

    torch.set_num_threads(1)  # tiny model: per-op overhead dominates (see conftest)
    import steerwatch  # noqa: F401
    from conftest import CHAT_TEMPLATE, build_loaded
    from steerwatch import SteerSpec, build_vector, generate, load_concept
    from steerwatch.runtime import GenerationOptions, generate as run
    from steerwatch.watch.detector import Detector

    lm = build_loaded("qwen2", chat_template=CHAT_TEMPLATE)
    vec, rows = build_vector(lm, load_concept("sycophancy"), progress=False)
    plain = generate(lm, ["Is the sky green?"], max_new_tokens=6)
    pushed = generate(lm, ["Is the sky green?"], steer=[SteerSpec(vec, strength=4.0)], max_new_tokens=6)
    watched = run(lm, ["Is the sky green?"], GenerationOptions(max_new_tokens=6), watch=[Detector.from_vector(vec)])
    assert pushed != plain, (pushed, plain)
    g = watched[0]
    assert len(g.scores["sycophancy"]) == len(g.new_ids) - 1 > 0, g  # all but a final or cut-off token

    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    for args in (["serve", "--policy", "p.yaml"], ["policy", "hash-key", "k"]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "pip install 'steerwatch[serve]'" in " ".join(res.output.split()), res.output  # unwrapped
    try:
        import steerwatch.serve.app  # noqa: F401
    except ImportError as exc:
        assert "steerwatch[serve]" in str(exc), exc
    else:
        raise AssertionError("steerwatch.serve imported without its extra")
    assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    print("ok")
""")


def test_steering_only_install_works_and_serve_names_its_extra(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent), env.get("PYTHONPATH")) if p)
    res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-2000:] + res.stderr[-4000:]


def test_png_without_matplotlib_fails_before_any_work(tmp_path, monkeypatch):
    """`sweep --png` and `report --png` check matplotlib (and that the folder is not a file) before
    reading a vector or loading a model, naming the extra to install."""
    from typer.testing import CliRunner

    from steerwatch import extras
    from steerwatch.cli.main import app

    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m != "matplotlib" and real(m))
    missing_vector = tmp_path / "nope.sv"  # never read: the check comes first
    runner = CliRunner(env={"COLUMNS": "250"})
    ab = tmp_path / "ab.json"  # never read either
    for args in (["sweep", str(missing_vector), "--ab", str(ab), "--png", str(tmp_path / "plots")],
                 ["report", str(tmp_path / "rows.jsonl"), "-o", str(tmp_path / "r.html"), "--png", str(tmp_path)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "pip install 'steerwatch[plots]'" in res.output and "nope.sv" not in res.output, res.output
    monkeypatch.setattr(extras, "_installed", real)
    a_file = tmp_path / "f.png"
    a_file.write_text("x")
    res = runner.invoke(app, ["sweep", str(missing_vector), "--ab", str(ab), "--png", str(a_file)])
    assert res.exit_code == 2 and "is a file; give a folder" in res.output, res.output
