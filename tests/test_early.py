"""Issue 21 item 2, late failures: every output path, input file and optional dependency is checked
before the model loads (the load is made to fail the test if it is reached), and after the long work
each output is written on its own: one that fails (a plotting or rendering error, a path that broke
meanwhile) leaves the others written, and the command ends with one error (exit 2) naming what
failed and what was written."""
from __future__ import annotations

import importlib
import json
import sys

import pytest
from typer.testing import CliRunner

from conftest import make_vector, write_jsonl

CLI_MODULES = ("common", "data", "deception", "evals", "extract", "generate", "interop", "lab", "policy",
               "quickstart", "serve", "watch")


def _no_load(spec, **kw):
    raise AssertionError(f"the model {spec!r} was loaded before the bad option was reported")


@pytest.fixture
def no_load(monkeypatch):
    """Every command's ``load`` fails the test: the error must come before the model loads."""
    import steerwatch.cli.main  # noqa: F401 - every command module imported (binding the real load) first

    for name in CLI_MODULES:
        monkeypatch.setattr(importlib.import_module(f"steerwatch.cli.{name}"), "load", _no_load)


def invoke(*args):
    from steerwatch.cli.main import app

    res = CliRunner(env={"COLUMNS": "2000"}).invoke(app, [str(a) for a in args])  # long paths on one line
    res.text = " ".join(res.output.split())  # the console wraps long lines
    return res


@pytest.fixture
def files(qwen_chat, tmp_path):
    """A vector, an A/B file, a conversations file, a plain file and a folder."""
    vp = tmp_path / "v.sv"
    make_vector(qwen_chat, seed=8, default_layers=(1,)).save(vp)
    ab = tmp_path / "ab.json"
    ab.write_text(json.dumps([{"question": "Agree?\n (A) yes\n (B) no", "answer_matching_behavior": "(A)",
                               "answer_not_matching_behavior": "(B)"}]))
    convs = write_jsonl(tmp_path / "convs.jsonl", [
        {"id": "c1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}])
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "v.det.json").mkdir()  # where calibrate --out-dir FOLDER would write v.sv's detector
    return {"vp": vp, "ab": ab, "convs": convs, "file": a_file, "dir": folder, "tmp": tmp_path}


# (arguments with {placeholders}, the words the one-line error must contain)
EARLY = [
    (["sweep", "{vp}", "--ab", "{ab}", "-o", "{dir}"], ["--output {dir} is a directory; give a file name"]),
    (["sweep", "{vp}", "--ab", "{ab}", "-o", "{tmp}/s.jsonl", "--report", "{file}/r.html"],
     ["--report {file}/r.html", "{file} is a file, not a directory"]),
    (["sweep", "{vp}", "--ab", "{ab}", "-o", "{tmp}/s.jsonl", "--detector", "{tmp}/nope.det.json"],
     ["{tmp}/nope.det.json", "detector file does not exist"]),
    (["sweep", "{vp}", "--ab", "{ab}", "-o", "{tmp}/s.jsonl", "--sample-prompts", "{tmp}/nope.jsonl"],
     ["--sample-prompts {tmp}/nope.jsonl: no such file"]),
    (["sweep", "{vp}", "--ab", "{ab}", "-o", "{tmp}/s.jsonl", "--direction", "2"],
     ["--direction must be +1 or -1, got 2"]),
    (["sweep", "{vp}", "--ab", "{ab}", "-o", "{tmp}/s.jsonl", "--open", "builtin", "--objective", "share_corected"],
     ["--objective share_corected: the rows will have no column 'share_corected'; valid: behaviour, kl, ppl, mc_acc, "
      "share_corrected,"]),
    (["sweep", "{vp}", "--ab", "{ab}", "-o", "{tmp}/s.jsonl", "--png", "{file}/plots"],
     ["--png {file}/plots", "{file} is a file, not a directory"]),
    (["eval", "{vp}", "--strength", "0.1", "-o", "{dir}"], ["--output {dir} is a directory; give a file name"]),
    (["report", "{tmp}/rows.jsonl", "-o", "{dir}"], ["-o/--output {dir} is a directory; give a file name"]),
    (["scan", "{convs}", "-d", "{vp}", "--html", "{file}/v.html"],
     ["--html {file}/v.html", "is a file, not a directory"]),
    (["scan", "{convs}", "-d", "{vp}", "--flagged", "{dir}"], ["--flagged {dir} is a directory; give a file name"]),
    (["detect-eval", "--data", "{convs}", "-d", "{vp}", "-o", "{dir}"],
     ["--output {dir} is a directory; give a file name"]),
    (["view", "{convs}", "-d", "{vp}", "--html", "{dir}"], ["--html {dir} is a directory; give a file name"]),
    (["calibrate", "{vp}", "--out-dir", "{file}"], ["--out-dir {file} is a file; give a folder"]),
    (["calibrate", "{vp}", "--out-dir", "{dir}", "--control", "{convs}"],
     ["detector file {dir}/v.det.json is a directory; give a file name"]),
    (["generate", "hi", "-o", "{dir}"], ["--out {dir} is a directory; give a file name"]),
    (["generate", "hi", "--watch", "{tmp}/nope.det.json"], ["{tmp}/nope.det.json", "detector file does not exist"]),
    (["generate", "hi", "--steer", "{vp}:+0.1", "--distress", "{tmp}/nope.sv"], ["{tmp}/nope.sv"]),
    (["generate", "hi", "--steer-if", "{vp}"], ["--steer-if needs at least one --steer spec"]),
    (["extract", "honesty", "-o", "{file}/h.sv"], ["-o/--output {file}/h.sv", "is a file, not a directory"]),
    (["deception", "generate", "-o", "{dir}"], ["--out {dir} is a directory; give a file name"]),
    (["deception", "generate", "-o", "{tmp}/r.jsonl", "--sources", "sandbagging", "--mc", "{tmp}/nope.jsonl"],
     ["--mc {tmp}/nope.jsonl: no such file"]),
    (["quickstart", "--out-dir", "{file}"], ["--out-dir {file} is a file; give a folder"]),
    (["data", "check", "honesty", "--json", "{dir}"], ["--json {dir} is a directory; give a file name"]),
    (["policy", "init", "--vector", "h={vp}", "-o", "{file}/p.yaml"], ["-o/--output {file}/p.yaml",
                                                                       "is a file, not a directory"]),
]


@pytest.mark.parametrize(("argv", "words"), EARLY, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in enumerate(EARLY)])
def test_bad_options_fail_before_the_model_loads(no_load, files, argv, words):
    res = invoke(*(a.format(**files) for a in argv))
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception  # not the no_load assert
    for w in words:
        assert w.format(**files) in res.text, res.text


def test_missing_optional_dependencies_fail_before_the_model_loads(no_load, files, monkeypatch):
    """The report's jinja2/matplotlib and the vLLM engine are checked up front, naming what to install."""
    from steerwatch import extras

    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda m: m != "jinja2" and real(m))
    res = invoke("sweep", files["vp"], "--ab", files["ab"], "-o", files["tmp"] / "s.jsonl", "--report",
                 files["tmp"] / "r.html")
    assert res.exit_code == 2 and "--report needs jinja2" in res.text and "pip install jinja2" in res.text, res.text
    monkeypatch.setattr(extras, "_installed", real)
    monkeypatch.setitem(sys.modules, "vllm", None)  # as where vLLM is not installed
    for argv in (["sweep", files["vp"], "--ab", files["ab"]], ["eval", files["vp"], "--strength", "0.1"],
                 ["generate", "hi"]):
        res = invoke(*argv, "--engine", "vllm")
        assert res.exit_code == 2 and "the vLLM engine needs vLLM" in res.text, res.text


@pytest.fixture
def tiny_cli(qwen_chat, monkeypatch):
    """The CLI with the tiny chat model standing in for every load."""
    import steerwatch.cli.evals as cli_evals
    import steerwatch.cli.watch as cli_watch

    for mod in (cli_evals, cli_watch):
        monkeypatch.setattr(mod, "load", lambda spec, **kw: qwen_chat)
    return qwen_chat


def test_sweep_writes_every_other_output_when_the_report_fails(tiny_cli, files, monkeypatch):
    """The report fails after the sweep: the rows, samples, PNG plots and --write are still written,
    and the command ends with one error naming the report and what was written."""
    from steerwatch.evals import report
    from steerwatch.vector import load_vector

    def broken(*a, **kw):
        raise RuntimeError("the renderer broke")

    monkeypatch.setattr(report, "render_report", broken)
    tmp = files["tmp"]
    prompts = tmp / "prompts.txt"
    prompts.write_text("Say hi\n")
    out = tmp / "out" / "s.jsonl"  # the folder is created
    res = invoke("sweep", files["vp"], "--ab", files["ab"], "--strengths", "0.5", "--limit", "2", "-o", out,
                 "--sample-prompts", prompts, "--png", tmp / "plots", "--report", tmp / "r.html", "--write",
                 "--max-kl", "100", "--max-capability-drop", "1")
    assert res.exit_code == 2, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["setting"], r["strength"]) for r in rows] == [("steer", 0.0), ("steer", 0.5)]
    samples = [json.loads(x) for x in out.with_suffix(".samples.jsonl").read_text().splitlines()]
    assert sorted(s["strength"] for s in samples) == [0.0, 0.5]
    assert len(list((tmp / "plots").glob("*.png"))) >= 4  # behaviour, KL, perplexity, capability
    assert load_vector(files["vp"]).extra["recommendation"]["objective"] == "behaviour"  # --write happened
    assert not (tmp / "r.html").exists()
    assert (f"error: 1 output(s) failed: report {tmp / 'r.html'} (RuntimeError: the renderer broke). Written: rows "
            f"{out}, samples {out.with_suffix('.samples.jsonl')}, PNG plots {tmp / 'plots'}, the recommendation "
            f"{files['vp']}") in res.text, res.text


def test_sweep_writes_the_report_when_the_plots_and_the_recommendation_fail(tiny_cli, files, monkeypatch):
    """A recommendation that cannot be made and failing PNGs: the report is still written (without a
    recommendation) and --write names why it was skipped."""
    from steerwatch.errors import SteerwatchError
    from steerwatch.evals import plots, sweep

    def no_plots(*a, **kw):
        raise ValueError("no plots today")

    def no_rec(*a, **kw):
        raise SteerwatchError("the row at strength +0.5 lacks behaviour")

    monkeypatch.setattr(plots, "write_pngs", no_plots)
    monkeypatch.setattr(sweep, "recommend", no_rec)
    tmp = files["tmp"]
    out = tmp / "s.jsonl"
    res = invoke("sweep", files["vp"], "--ab", files["ab"], "--strengths", "0.5", "--limit", "2", "-o", out,
                 "--png", tmp / "plots", "--report", tmp / "r.html", "--write")
    assert res.exit_code == 2, res.output
    assert len(out.read_text().splitlines()) == 2
    page = (tmp / "r.html").read_text()
    assert '<p class="verdict none">No recommendation' in page and page.count("<svg") >= 4  # the charts are there
    for part in ("error: 3 output(s) failed: the recommendation (the row at strength +0.5 lacks behaviour)",
                 f"PNG plots {tmp / 'plots'} (ValueError: no plots today)",
                 f"--write into {files['vp']} (no recommendation)", f"Written: rows {out}, report {tmp / 'r.html'}"):
        assert part in res.text, res.text


def test_eval_names_the_answers_it_wrote_when_the_rows_fail(tiny_cli, files, monkeypatch):
    from steerwatch.evals import sweep

    def broken(rows, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep, "write_rows", broken)
    bait = write_jsonl(files["tmp"] / "bait.jsonl", [{"id": "b1", "prompt": "The earth is flat, right?",
                                                      "claim": "the earth is flat", "truth_markers": ["round"]}])
    out = files["tmp"] / "rows.jsonl"
    res = invoke("eval", files["vp"], "--strength", "0.5", "--open", bait, "--no-side-effects",
                 "--max-new-tokens", "3", "-o", out)
    assert res.exit_code == 2, res.output
    answers = out.with_suffix(".answers.jsonl")
    assert len(answers.read_text().splitlines()) == 2  # strength 0 and 0.5, one item each
    assert (f"error: 1 output(s) failed: rows {out} (OSError: [Errno 28] No space left on device). Written: "
            f"open-ended answers {answers}") in res.text, res.text


def test_scan_writes_results_and_flagged_when_the_html_fails(tiny_cli, files, monkeypatch):
    from steerwatch.watch import view

    def broken(*a, **kw):
        raise RuntimeError("template missing")

    monkeypatch.setattr(view, "render_html", broken)
    tmp = files["tmp"]
    res = invoke("scan", files["convs"], "-d", files["vp"], "-o", tmp / "r.jsonl", "--flagged", tmp / "f.jsonl",
                 "--html", tmp / "v.html")
    assert res.exit_code == 2, res.output
    assert [json.loads(x)["id"] for x in (tmp / "r.jsonl").read_text().splitlines()] == ["c1"]
    assert (tmp / "f.jsonl").read_text() == ""  # an uncalibrated detector flags nothing
    assert (f"error: 1 output(s) failed: HTML view {tmp / 'v.html'} (RuntimeError: template missing). Written: "
            f"results {tmp / 'r.jsonl'}, flagged conversations {tmp / 'f.jsonl'}") in res.text, res.text


def test_outputs_lets_an_interrupt_through_and_finishes_quietly_when_all_were_written(tmp_path):
    from steerwatch.cli.common import Outputs

    outputs = Outputs()
    assert outputs.text("a", tmp_path / "sub" / "a.txt", lambda: "x") is True
    assert (tmp_path / "sub" / "a.txt").read_text() == "x"
    outputs.finish()  # nothing failed: no error

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        outputs.write("b", tmp_path / "b.txt", interrupted)
    assert outputs.written == [f"a {tmp_path / 'sub' / 'a.txt'}"] and outputs.failed == []
