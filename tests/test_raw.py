"""Raw completion (issue 21, item 7): ``generate --raw`` feeds the text as it is and returns only the
continuation; a model without a chat template (a base model) gets it by default, with a note."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import greedy
from steerwatch.errors import SteerwatchError
from steerwatch.runtime import GenerationOptions, generate


def test_raw_feeds_the_text_as_it_is_and_returns_the_continuation(qwen):
    tok = qwen.tokenizer
    text = "The cat sat"
    (g,) = generate(qwen, [text], GenerationOptions(raw=True, max_new_tokens=5))
    assert g.prompt_ids == [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]
    ids = torch.tensor([g.prompt_ids])
    want = greedy(qwen, ids, torch.ones_like(ids), max_new_tokens=5)[0, ids.shape[1]:].tolist()
    cut = next((j + 1 for j, t in enumerate(want) if t in qwen.eos_ids), len(want))
    assert g.new_ids == want[:cut]
    assert g.text == tok.decode(g.new_ids, skip_special_tokens=True).strip()
    (chat,) = generate(qwen, [text], GenerationOptions(max_new_tokens=1))  # the plain chat format wraps it
    assert tok.decode(chat.prompt_ids, skip_special_tokens=True) == f"User: {text}\nAssistant:"


def test_raw_refuses_a_system_prompt_and_chat_messages(qwen):
    with pytest.raises(SteerwatchError, match="a system prompt needs chat prompts"):
        GenerationOptions(raw=True, system="be brief")
    with pytest.raises(SteerwatchError, match="raw completion takes text prompts, not chat messages"):
        generate(qwen, [[{"role": "user", "content": "hi"}]], GenerationOptions(raw=True, max_new_tokens=1))


def _run(monkeypatch, lm, args):
    import steerwatch.cli.generate as cli_generate
    from steerwatch.cli.main import app

    monkeypatch.setattr(cli_generate, "load", lambda spec, **kw: lm)
    return CliRunner().invoke(app, ["generate", *args])


def test_cli_defaults_to_raw_for_a_model_without_a_chat_template(qwen, tmp_path, monkeypatch):
    out = tmp_path / "o.jsonl"
    res = _run(monkeypatch, qwen, ["The cat sat", "--max-new-tokens", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "tiny-qwen2 has no chat template: each prompt is continued as raw text" in " ".join(res.output.split())
    row = json.loads(out.read_text())
    (g,) = generate(qwen, ["The cat sat"], GenerationOptions(raw=True, max_new_tokens=4))
    assert (row["mode"], row["output"]) == ("raw", g.text)
    res = _run(monkeypatch, qwen, ["The cat sat", "--max-new-tokens", "4", "--chat", "-o", str(out)])
    assert res.exit_code == 0 and "no chat template" not in res.output
    assert json.loads(out.read_text())["mode"] == "chat"


def test_cli_keeps_the_chat_for_a_chat_model_or_a_system_prompt(qwen, qwen_chat, tmp_path, monkeypatch):
    out = tmp_path / "o.jsonl"
    res = _run(monkeypatch, qwen_chat, ["hi", "--max-new-tokens", "2", "-o", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text())["mode"] == "chat"
    res = _run(monkeypatch, qwen, ["hi", "--max-new-tokens", "2", "--system", "be brief", "-o", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text())["mode"] == "chat"
    res = _run(monkeypatch, qwen_chat, ["hi", "--max-new-tokens", "2", "--raw", "-o", str(out)])
    assert res.exit_code == 0 and json.loads(out.read_text())["mode"] == "raw"


def test_cli_raw_conflicts_fail_before_the_model_loads(tmp_path, monkeypatch):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"id": "c1", "messages": [{"role": "user", "content": "hi"}]}) + "\n", encoding="utf-8")
    fail = pytest.fail
    for args, msg in [(["hi", "--raw", "--system", "s"], "--system needs a chat"),
                      (["--raw", "-f", str(f)], "item 'c1' of --prompts-file is a chat")]:
        res = _run(monkeypatch, lambda: fail("model loaded"), args)
        assert res.exit_code == 2 and msg in " ".join(res.output.split()), res.output


@pytest.mark.embedded
def test_gemma_base_continues_the_prompt_instead_of_echoing_it(tmp_path):
    from steerwatch.cli.main import app

    out = tmp_path / "o.jsonl"
    prompt = "The capital of France is"
    res = CliRunner().invoke(app, ["generate", "-m", "gemma-3-270m", prompt, "--max-new-tokens", "6", "-o", str(out)])
    assert res.exit_code == 0, res.output
    row = json.loads(out.read_text())
    assert row["mode"] == "raw"
    assert not row["output"].startswith(prompt) and "User:" not in row["output"]
