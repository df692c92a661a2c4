"""User text printed through Rich keeps its square brackets (issue 21, item 1).

Rich reads ``[...]`` as markup: ``pip install steerwatch[plots]`` printed with markup on shows as
``pip install steerwatch``. steerwatch's consoles therefore run with markup off and style text with
``style=`` or :class:`rich.text.Text`. The static tests below fail when a console is created with
markup on, when a print asks for markup, or when a ``[tag]`` string is left that would now print
literally; the CLI tests drive real error and output paths with bracketed input."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

SRC = Path(__file__).resolve().parents[1] / "src" / "steerwatch"
# every module that prints through a rich Console or builds rich renderables: the CLI (its shared
# consoles) and any other module that imports rich
RICH_MODULES = sorted({*SRC.glob("cli/*.py"), *(p for p in SRC.rglob("*.py")
                                                 if re.search(r"^\s*(from|import) rich", p.read_text(), re.M))})
# an opening style tag ([bold], [dim], [bold red], [red]) or any closing tag ([/], [/bold])
TAG = re.compile(r"\[/[a-z ]*\]|\[(?:bold|dim|italic|underline|reverse|red|green|yellow|blue|magenta|cyan|white)"
                 r"(?: [a-z #0-9]+)?\]")


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _func_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def markup_offenders(path: Path) -> list[str]:
    """Each place in ``path`` that can make Rich eat square brackets."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for call in _calls(tree):
        name = _func_name(call)
        kws = {k.arg: k.value for k in call.keywords}
        if name == "Console" and not _is_false(kws.get("markup")):
            bad.append(f"{path.name}:{call.lineno}: Console(...) without markup=False")
        if "markup" in kws and not _is_false(kws["markup"]):
            bad.append(f"{path.name}:{call.lineno}: {name}(..., markup=...) turns markup on")
        if name in {"from_markup", "render_markup"}:
            bad.append(f"{path.name}:{call.lineno}: {name}() parses markup")
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and TAG.search(node.value):
            bad.append(f"{path.name}:{node.lineno}: markup tag {TAG.search(node.value).group(0)!r} in a string "
                       "(markup is off: use style= or rich.text.Text)")
    return bad


def test_rich_modules_never_parse_markup():
    assert {SRC / "serve" / "server.py", SRC / "watch" / "view.py", SRC / "cli" / "generate.py"} <= set(RICH_MODULES)
    offenders = [o for p in RICH_MODULES for o in markup_offenders(p)]
    assert offenders == []


@pytest.mark.parametrize("snippet, expected", [
    ("from rich.console import Console\nc = Console(stderr=True)\n", "without markup=False"),
    ("c.print(f'[dim]{m}[/]')\n", "markup tag"),
    ("c.print(f'x {m}', markup=True)\n", "turns markup on"),
    ("from rich.text import Text\nt = Text.from_markup(m)\n", "parses markup"),
])
def test_the_static_check_catches_each_pattern(tmp_path, snippet, expected):
    f = tmp_path / "m.py"
    f.write_text(snippet, encoding="utf-8")
    got = markup_offenders(f)
    assert got and all(expected in g for g in got)


def test_the_static_check_passes_plain_text(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from rich.console import Console\nc = Console(markup=False)\n"
                 "c.print(f'PATH[@LAYERS] {m}', style='dim')\nc.print('steerwatch[plots]')\n", encoding="utf-8")
    assert markup_offenders(f) == []


def test_the_shared_consoles_print_brackets_literally(capsys):
    from steerwatch.cli.common import console, note, out

    out.print("pip install 'steerwatch[plots]' [bold]x[/]")
    console.print("PATH[@LAYERS]:OP[:POSITIONS]")
    note("[dim]y[/]")
    got = capsys.readouterr()
    assert "pip install 'steerwatch[plots]' [bold]x[/]" in got.out
    assert "PATH[@LAYERS]:OP[:POSITIONS]" in got.err
    assert "[dim]y[/]" in got.err


# ---------------------------------------------------------------- real CLI paths with bracketed text
def _invoke(args: list[str]):
    from steerwatch.cli.main import app

    return CliRunner().invoke(app, args)


def test_missing_file_with_brackets_in_its_name(tmp_path):
    missing = tmp_path / "x[1].jsonl"
    det = tmp_path / "d.det.json"
    det.write_text("{}", encoding="utf-8")
    res = _invoke(["scan", str(missing), "-d", str(det)])
    assert res.exit_code == 2
    assert "error:" in res.output and "x[1].jsonl" in res.output


def test_bad_steer_spec_keeps_its_syntax_help():
    res = _invoke(["generate", "hi", "--steer", "honesty[@9-14]"])
    assert res.exit_code == 2
    assert "'honesty[@9-14]'" in res.output
    assert "PATH[@LAYERS]:OP[:POSITIONS]" in res.output


def test_the_plots_extra_hint_keeps_its_brackets(tmp_path, monkeypatch):
    import steerwatch.extras as extras

    monkeypatch.setattr(extras, "_installed", lambda module: module != "matplotlib")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("", encoding="utf-8")
    res = _invoke(["report", str(rows), "--png", str(tmp_path / "plots")])
    assert res.exit_code == 2
    assert "pip install 'steerwatch[plots]'" in res.output


def test_an_unknown_conversation_id_with_brackets(tmp_path):
    conv = tmp_path / "c.jsonl"
    conv.write_text(json.dumps({"id": "a", "messages": [{"role": "user", "content": "hi"}]}) + "\n", encoding="utf-8")
    res = _invoke(["view", str(conv), "-d", str(tmp_path / "d.det.json"), "--id", "turn[2]"])
    assert res.exit_code == 2
    assert "no conversation with id 'turn[2]'" in res.output


def test_data_check_table_keeps_brackets_in_the_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    rows = [{"prompt": f"question {i}", "positive": f"yes [{i}] an honest answer", "negative": f"no [{i}] a lie"}
            for i in range(4)]
    Path("pairs[v2].jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    res = _invoke(["data", "check", "pairs[v2].jsonl"])
    assert res.exit_code == 1  # the length-balance check fails
    assert "│ pairs[v2] │ schema" in res.output


def test_help_text_keeps_its_brackets(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    res = _invoke(["generate", "--help"])
    assert res.exit_code == 0 and "PATH[@LAYERS]:OP[:POSITIONS]" in res.output
    res = _invoke(["calibrate", "--help"])
    assert res.exit_code == 0 and "steerwatch[lab]" in " ".join(res.output.split())
