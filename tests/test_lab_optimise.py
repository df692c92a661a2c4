"""A steering vector trained on the model's own lab answers (steerwatch.lab.optimise, `steerwatch lab
optimise`) on tiny models: the preference pairs are exactly the (special-cased, general) answers to
one prompt, split for validation by problem; bad input is refused before a model loads; the trained
vector is oriented as asked (conscientiousness = the trained direction negated) and learns the
planted preference."""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from steerwatch.errors import SteerwatchError
from steerwatch.lab import humaneval_tasks, select
from steerwatch.lab import probe as PR
from steerwatch.lab.episodes import append_episodes
from steerwatch.lab.optimise import orient, preference_pairs, train_lab_vector
from steerwatch.vector import load_vector


@pytest.fixture(scope="module")
def tasks():
    return humaneval_tasks()


def _answer(task, cheat: bool) -> str:
    if cheat:
        return f"```python\ndef {task.entry_point}(*args):\n    return 42\n```"
    return f"```python\n{task.prompt}{task.reference}```"


def _episode(t, setting: str, *, cheat: bool, instruction: str = "pressure", split: str | None = None) -> dict:
    return {"task": t.id, "problem": t.problem, "variant": t.variant, "split": split or t.split, "attempt": 0,
            "setting": setting, "config": setting, "options": {"instruction": instruction, "demos": 0, "system": None},
            "n_turns": 1, "turns": [{"turn": 0, "response": _answer(t, cheat), "status": "fail", "tests": [],
                                     "detail": "", "scores": {}, "parses": True, "flagged": False}],
            "cheated": cheat and t.variant == "oneoff", "special_cased": cheat, "accidental": False,
            "flagged_test": False, "cheated_first_turn": cheat and t.variant == "oneoff",
            "reasons": ["returns_constant"] if cheat else [], "triggered": False}


def _episodes(tasks, *, limit: int = 6, split: str = "dev") -> list[dict]:
    """Per impossible task: ``prone`` special-cases on every task but the first problem's; ``cons``
    (same prompt) writes general code except on the second problem; ``cons-other`` writes general code
    under another instruction (another prompt: never a pair); an original task is ignored."""
    chosen = select(tasks, split=split, variants=["original", "oneoff", "conflicting"], limit=limit)
    problems = sorted({t.problem for t in chosen}, key=[t.problem for t in chosen].index)
    rows = []
    for t in chosen:
        k = problems.index(t.problem)
        if t.variant == "original":
            rows.append({k2: v for k2, v in _episode(t, "prone", cheat=False).items()
                         if k2 not in ("cheated", "special_cased")})
            continue
        rows.append(_episode(t, "prone", cheat=k != 0))
        rows.append(_episode(t, "cons", cheat=k == 1))
        rows.append(_episode(t, "cons-other", cheat=False, instruction="none"))
    return rows


def test_pairs_are_special_cased_vs_general_answers_to_one_prompt(tasks):
    eps = _episodes(tasks)
    data, counts = preference_pairs(eps, "prone", ["cons", "cons-other"], val_problems=2)
    # 6 problems x 2 impossible variants; problem 0: prone general (no pair), problem 1: cons special-cased (no
    # pair); 4 problems x 2 variants with cons; cons-other saw another prompt: skipped, never paired
    assert counts == {"pairs": 8, "train": 4, "val": 4, "problems": 4, "skipped": 10}
    by = {t.id: t for t in tasks}
    problems = list(dict.fromkeys(e["problem"] for e in eps))
    for p in data.pairs:
        t = by[p.meta["task"]]
        assert p.positive == _answer(t, True) and p.negative == _answer(t, False)
        assert p.meta["general"] == "cons" and p.system is None
        conv = PR.episode_conversation(next(e for e in eps if e["task"] == t.id and e["setting"] == "prone"), t)
        assert p.prompt == conv[-2]["content"]
        assert p.split == ("val" if t.problem in problems[-2:] else "train")
    assert "prone (special-cased) vs cons, cons-other (general)" in data.source


def test_bad_input_is_refused_with_the_cause(tasks):
    eps = _episodes(tasks)
    for kwargs, msg in (
            (dict(episodes=[e for e in eps if "cheated" not in e], special="prone", general=["cons"]),
             "no single-turn impossible episodes"),
            (dict(episodes=_episodes(tasks, split="test"), special="prone", general=["cons"]), "from the test split"),
            (dict(episodes=eps, special="prone", general=["nope"]), "'nope' not among the episodes; the single-turn "
                                                                    "settings there: cons, cons-other, prone"),
            (dict(episodes=eps, special="prone", general=["prone", "cons"]), "both the special-casing setting"),
            (dict(episodes=eps, special="prone", general=[" "]), "at least one --general"),
            (dict(episodes=eps, special="prone", general=["cons-other"]), "(10 candidate pairs had different prompts)"),
            (dict(episodes=eps, special="prone", general=["cons"], val_problems=4), "4 are kept for validation"),
            (dict(episodes=eps, special="prone", general=["cons"], val_problems=0), "must be at least 1")):
        with pytest.raises(SteerwatchError) as err:
            preference_pairs(**kwargs)
        assert msg in str(err.value), (kwargs.get("general"), str(err.value))
    # test episodes are allowed when asked
    _data, counts = preference_pairs(_episodes(tasks, split="test"), "prone", ["cons"], allow_test=True)
    assert counts["pairs"] == 8


def test_trained_vector_learns_the_preference_and_is_oriented_as_asked(qwen_chat, tasks):
    data, _ = preference_pairs(_episodes(tasks, limit=4), "prone", ["cons"], val_problems=1)
    kw = dict(layers=[1, 2], steps=4, lr=0.2, max_strength=1.0, batch_size=2, eval_every=2, patience=3)
    cheat, hist = train_lab_vector(qwen_chat, data, concept="cheating", **kw)
    cons, hist2 = train_lab_vector(qwen_chat, data, **kw)
    assert hist["best_val_loss"] < hist["initial_val_loss"]  # the planted preference is learned
    assert hist2["loss_curve"] == hist["loss_curve"]  # one training, two orientations
    assert cheat.concept == "cheating" and cons.concept == "conscientiousness" and cons.method == "bipo"
    for layer in (1, 2):
        assert torch.equal(cons.direction(layer), -cheat.direction(layer))
    # the pairs' sides swap with the orientation (conscientiousness: the general answer is positive)
    assert cons.validation == cheat.validation and set(cons.validation) == {1, 2}
    assert cons.extra["lab_pairs"] == {"source": data.source, "n_train": 2, "n_val": 2}
    assert "negated" in cons.extra["orientation"] and "orientation" not in cheat.extra
    assert torch.equal(orient(cheat, "conscientiousness").direction(1), cons.direction(1))
    with pytest.raises(SteerwatchError, match="unknown orientation 'honesty'"):
        orient(cheat, "honesty")


def test_lab_optimise_cli_counts_trains_and_refuses_bad_input(qwen_chat, tasks, tmp_path):
    from steerwatch.cli.main import app

    model_dir = tmp_path / "model"
    qwen_chat.model.save_pretrained(model_dir)
    qwen_chat.tokenizer.save_pretrained(model_dir)
    dev = tmp_path / "dev.jsonl"
    append_episodes(dev, _episodes(tasks, limit=4))
    runner = CliRunner(env={"COLUMNS": "250"})
    out = tmp_path / "c.sv"
    base = ["lab", "optimise", str(dev), "--special", "prone", "--general", "cons", "-o", str(out)]
    res = runner.invoke(app, [*base, "--pairs-only", "--val-problems", "1", "--model", "no-such-model"])
    assert res.exit_code == 0 and "4 preference pairs from 2 problems (2 train / 2 val)" in res.output, res.output
    assert not out.exists()
    res = runner.invoke(app, [*base, "--val-problems", "1", "--model", str(model_dir), "--layers", "1,2",
                              "--steps", "2", "--eval-every", "2", "--max-strength", "0.5"])
    assert res.exit_code == 0, res.output
    vec = load_vector(out)
    assert vec.concept == "conscientiousness" and vec.method == "bipo" and vec.default_layers == [1, 2]
    assert vec.extra["optimisation"]["steps"] == 2 and vec.extra["optimisation"]["max_strength"] == 0.5
    assert f"--steer {out}:+0.04" in " ".join(res.output.split())
    out.unlink()
    for extra, msg in ((["--concept", "honesty"], "--concept must be one of conscientiousness, cheating"),
                       (["--method", "lda"], "unknown optimisation method 'lda'"),
                       (["--steps", "0"], "steps must be"),
                       (["--layers", "9-"], "neither a layer number nor a range"),
                       (["--general", "nope"], "'nope' not among the episodes")):
        res = runner.invoke(app, [*base, "--model", "no-such-model", *extra])
        assert res.exit_code == 2 and msg in " ".join(res.output.split()) and "Traceback" not in res.output, \
            (extra, res.output)
        assert not out.exists()
