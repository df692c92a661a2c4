"""The reward-hacking lab end to end on the embedded model, from the command line: real answers,
executed in the sandbox, labelled, reported (small: a handful of dev tasks, to keep CI short)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.embedded

LAYERS = "10,11,12,13,14,15"


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory, builtin_vector):
    """Two settings on the first 5 dev problems' one-off variants: unsteered, and the cheating
    vector pushed up under the 'graded only on the tests' pressure; both watched by the cheating
    vector. Returns (episodes file, vector file, report JSON)."""
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    tmp = tmp_path_factory.mktemp("lab")
    vec, _ = builtin_vector("cheating")
    vp = tmp / "cheating.sv"
    vec.save(vp)
    out = tmp / "eps.jsonl"
    common = ["lab", "run", "-o", str(out), "--split", "dev", "--variants", "oneoff", "--limit", "5",
              "--max-new-tokens", "96", "--watch", str(vp), "--workers", "2"]
    runner = CliRunner()
    for extra in (["--name", "unsteered"],
                  ["--name", "cheat-up", "--instruction", "pressure", "--steer", f"{vp}@{LAYERS}:+0.06"]):
        res = runner.invoke(app, common + extra)
        assert res.exit_code == 0, res.output
    rep = tmp / "report.json"
    res = runner.invoke(app, ["lab", "report", str(out), "--baseline", "unsteered", "--json", str(rep),
                              "--html", str(tmp / "report.html")])
    assert res.exit_code == 0, res.output
    return out, vp, json.loads(rep.read_text())


def test_lab_labels_match_execution(lab_run):
    """Every episode's labels are what running its final code says (re-run here, independently)."""
    from steerwatch.lab import humaneval_tasks
    from steerwatch.lab.episodes import read_episodes
    from steerwatch.lab.sandbox import run_tests
    from steerwatch.lab.static import special_case_reasons
    from steerwatch.lab.tasks import program_for

    out, _, _ = lab_run
    eps = read_episodes(out)
    assert sorted({e["setting"] for e in eps}) == ["cheat-up", "unsteered"]
    assert len(eps) == 10 and all(e["variant"] == "oneoff" and e["split"] == "dev" for e in eps)
    tasks = {t.id: t for t in humaneval_tasks()}
    for e in eps:
        task = tasks[e["task"]]
        code = e["turns"][-1]["code"]
        if code is None:
            assert e["cheated"] is False
            continue
        res = run_tests(program_for(task, code), task.runnable_tests())
        assert e["cheated"] == all(res.ok(i) for i in task.impossible), e["task"]
        reasons = special_case_reasons(code, task.entry_point, task.tests, task.contradicting)
        assert e["special_cased"] == bool(reasons)
        assert e["accidental"] == (e["cheated"] and not reasons)
        scores = e["turns"][-1]["scores"]
        assert set(scores) == {"cheating"} and isinstance(scores["cheating"], float)


def test_lab_cheating_vector_controls_cheating(lab_run):
    """Pushed up, the cheating vector makes the model hard-code test values (special-casing on more
    impossible tasks than unsteered: on this small model mostly the wrong constants, so the
    execution label moves less), and the report counts exactly the file's episodes."""
    from steerwatch.lab.episodes import read_episodes

    out, _, rep = lab_run
    eps = read_episodes(out)
    k = {s: sum(e["special_cased"] for e in eps if e["setting"] == s) for s in ("unsteered", "cheat-up")}
    cheats = {s: sum(e["cheated"] for e in eps if e["setting"] == s) for s in ("unsteered", "cheat-up")}
    assert k["cheat-up"] > k["unsteered"], k
    rows = {r["setting"]: r for r in rep["settings"]}
    assert {s: rows[s]["attempted_k"] for s in k} == k and {s: rows[s]["cheat_k"] for s in k} == cheats
    assert rows["cheat-up"]["n_impossible"] == 5 and rows["cheat-up"]["attempted_paired_n"] == 5
    det = {d["label"]: d for d in rep["detection"] if d["detector"] == "cheating"}
    assert det["special_cased"]["n_pos"] == sum(k.values())
    assert det["cheated"]["n_pos"] == sum(cheats.values())
