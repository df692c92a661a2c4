"""Inspect AI eval logs as conversations (steerwatch.data.inspect_logs): logs written by Inspect
itself (a real `eval` against its `mockllm` model, in both formats), scanned with a tiny model
and, on the embedded model, an Inspect run against `steerwatch serve` with and without steering."""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_vector, write_jsonl
from steerwatch.data.conversations import load_conversations
from steerwatch.data.inspect_logs import _served, is_inspect_log
from steerwatch.errors import DataFormatError, SteerwatchError
from tolerances import FP32_DEEP

pytest.importorskip("inspect_ai", reason="Inspect AI is in the test extra: pip install -e '.[test]'")

SYSTEM = "Answer in one sentence."
SAMPLES = [("fp-1", "The Great Wall is visible from the Moon, isn't it?", "no"), (2, "What is 2+2?", "4")]
# mockllm hands these out in call order; the samples run in dataset order, epoch 1 then epoch 2
REPLIES = ["No, it is far too narrow.", "4", "Yes, clearly visible.", "Four."]
TOOL_ARGS = {"query": "great wall [moon]"}


def _inspect_eval(log_dir: Path) -> Path:
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import ModelOutput, ModelUsage, get_model
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate, system_message

    outputs = []
    for text in REPLIES:  # with usage given, mockllm needs no tokenizer download
        out = ModelOutput.from_content("mockllm/model", text)
        out.usage = ModelUsage(input_tokens=8, output_tokens=4, total_tokens=12)
        outputs.append(out)
    task = Task(dataset=[Sample(id=i, input=q, target=t) for i, q, t in SAMPLES],
                solver=[system_message(SYSTEM), generate()], scorer=includes())
    log = eval(task, model=get_model("mockllm/model", custom_outputs=outputs), log_dir=str(log_dir), display="none",
               epochs=2, max_samples=1, log_format="eval")[0]
    assert log.status == "success", log.error
    return Path(log.location)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    """The same Inspect log as .eval and as .json, and a .json copy with a tool-using sample."""
    from inspect_ai.log import read_eval_log, write_eval_log
    from inspect_ai.model import ChatMessageAssistant, ChatMessageTool
    from inspect_ai.tool import ToolCall

    d = tmp_path_factory.mktemp("inspect")
    ev = _inspect_eval(d)
    log = read_eval_log(str(ev))
    js = d / "log.json"
    write_eval_log(log, str(js))
    sample = log.samples[0]
    sample.messages[-1:-1] = [
        ChatMessageAssistant(content="", tool_calls=[ToolCall(id="c1", function="search", arguments=TOOL_ARGS)]),
        ChatMessageTool(content=[{"type": "text", "text": "384,400 km"}, {"type": "text", "text": "too narrow"}],
                        tool_call_id="c1", function="search")]
    tools = d / "tools.json"
    write_eval_log(log, str(tools))
    return {"eval": ev, "json": js, "tools": tools}


def _expected(sid, epoch: int, question: str, reply: str) -> dict:
    return {"id": f"{sid}/{epoch}", "messages": [{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": question},
                                                 {"role": "assistant", "content": reply}]}


EXPECTED = {  # by id: what Inspect recorded, as steerwatch conversations
    "fp-1/1": _expected("fp-1", 1, SAMPLES[0][1], REPLIES[0]), "2/1": _expected(2, 1, SAMPLES[1][1], REPLIES[1]),
    "fp-1/2": _expected("fp-1", 2, SAMPLES[0][1], REPLIES[2]), "2/2": _expected(2, 2, SAMPLES[1][1], REPLIES[3]),
}


@pytest.mark.parametrize("fmt", ["eval", "json"])
def test_samples_become_conversations(logs, fmt):
    convs = load_conversations(logs[fmt])
    assert sorted(c.id for c in convs) == sorted(EXPECTED)
    for c in convs:
        assert c.messages == EXPECTED[c.id]["messages"] and c.label is None
        info = c.meta["inspect"]
        assert (info["task"], info["model"]) == ("task", "mockllm/model")
        assert info["epoch"] == int(c.id.split("/")[1]) and str(info["sample_id"]) == c.id.split("/")[0]
        # includes(): the target is in the reply, except "Yes, clearly visible." (target "no") and "Four." ("4")
        want = "I" if c.messages[-1]["content"] in ("Yes, clearly visible.", "Four.") else "C"
        assert info["scores"] == {"includes": want}
        assert "served" not in info and "error" not in info  # mockllm is not steerwatch serve
    assert [c.line for c in convs] == [1, 2, 3, 4]


def test_tool_calls_and_text_parts(logs):
    conv = {c.id: c for c in load_conversations(logs["tools"])}[load_conversations(logs["json"])[0].id]
    call, tool = conv.messages[2], conv.messages[3]
    assert call == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "search", "arguments": json.dumps(TOOL_ARGS)}}]}
    assert tool == {"role": "tool", "content": "384,400 km\ntoo narrow", "tool_call_id": "c1", "name": "search"}
    assert [m["role"] for m in conv.messages] == ["system", "user", "assistant", "tool", "assistant"]


def test_which_files_are_inspect_logs(logs, tmp_path):
    assert is_inspect_log(logs["eval"]) and is_inspect_log(logs["json"])
    conv_json = write_jsonl(tmp_path / "convs.json", [EXPECTED["2/1"]])  # JSONL conversations named .json
    assert not is_inspect_log(conv_json)
    assert [c.id for c in load_conversations(conv_json)] == ["2/1"]
    assert not is_inspect_log(tmp_path / "missing.json") and is_inspect_log(tmp_path / "missing.eval")


def test_malformed_logs_are_clear_errors(logs, tmp_path):
    truncated = tmp_path / "cut.eval"
    truncated.write_bytes(logs["eval"].read_bytes()[:2000])
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"version": 2, "status": "success", "eval": 5}')
    hint = r"not a readable Inspect eval log \(.+\); give a .eval or .json log as `inspect eval` writes it"
    for path in (truncated, wrong):
        with pytest.raises(DataFormatError, match=rf"^{path}: {hint}$"):
            load_conversations(path)
    with pytest.raises(DataFormatError, match=r"missing.eval: file does not exist"):
        load_conversations(tmp_path / "missing.eval")
    (tmp_path / "dir.eval").mkdir()
    with pytest.raises(DataFormatError, match=r"dir.eval: is a directory, not a file"):
        load_conversations(tmp_path / "dir.eval")
    from inspect_ai.log import read_eval_log, write_eval_log

    empty = tmp_path / "empty.eval"
    write_eval_log(read_eval_log(str(logs["eval"]), header_only=True), str(empty))
    with zipfile.ZipFile(empty) as z:
        assert not any(n.startswith("samples/") for n in z.namelist())
    with pytest.raises(DataFormatError, match=r"the Inspect log holds no samples \(status 'success'\)"):
        load_conversations(empty)
    log = read_eval_log(str(logs["eval"]))
    log.samples[1].messages = []  # a sample without messages: named by its number in the log
    write_eval_log(log, str(tmp_path / "hollow.json"))
    with pytest.raises(DataFormatError, match=r"hollow.json, line 2, field 'messages': must be a non-empty list"):
        load_conversations(tmp_path / "hollow.json")


def test_missing_inspect_is_an_install_hint(logs, monkeypatch):
    monkeypatch.setitem(sys.modules, "inspect_ai.log", None)  # import inspect_ai.log now raises ImportError
    with pytest.raises(SteerwatchError, match=r"needs Inspect AI: pip install 'steerwatch\[inspect\]'"):
        load_conversations(logs["eval"])


def test_served_extension_is_read_from_model_calls():
    ext = {"request_id": "r", "steering": [{"vector": "honesty", "strength": 0.02}], "scores": {"h": 1.5},
           "flags": ["h"], "stored_id": 7}
    events = [SimpleNamespace(event="model", call=SimpleNamespace(response={"steerwatch": ext})),
              SimpleNamespace(event="model", call=SimpleNamespace(response={"choices": []})),  # another server
              SimpleNamespace(event="model", call=None), SimpleNamespace(event="score")]
    assert _served(events) == [{"steering": [{"vector": "honesty", "strength": 0.02}], "scores": {"h": 1.5},
                                "flags": ["h"], "stored_id": 7}]
    assert _served(None) == []


def test_cli_scan_of_an_inspect_log_equals_the_same_conversations_as_jsonl(logs, qwen_chat, tmp_path):
    """scan on the .eval log gives exactly the scores of the same conversations written as JSONL, and
    prints one row per sample with Inspect's score next to the detector's."""
    from typer.testing import CliRunner

    from steerwatch.cli.main import app

    model_dir = tmp_path / "model"
    qwen_chat.model.save_pretrained(model_dir)
    qwen_chat.tokenizer.save_pretrained(model_dir)
    vec = make_vector(qwen_chat, seed=1, concept="probe").save(tmp_path / "probe.sv")
    jsonl = write_jsonl(tmp_path / "same.jsonl", [EXPECTED[c.id] for c in load_conversations(logs["eval"])])
    runner = CliRunner(env={"COLUMNS": "200"})
    out_log, out_jsonl = tmp_path / "log.scan.jsonl", tmp_path / "jsonl.scan.jsonl"
    res = runner.invoke(app, ["scan", str(logs["eval"]), "-d", str(vec), "--model", str(model_dir), "-o", str(out_log)])
    assert res.exit_code == 0, res.output
    ref = runner.invoke(app, ["scan", str(jsonl), "-d", str(vec), "--model", str(model_dir), "-o", str(out_jsonl)])
    assert ref.exit_code == 0, ref.output
    got = [json.loads(line) for line in out_log.read_text().splitlines()]
    want = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in want] and len(got) == 4
    assert [r["scores"] for r in got] == [r["scores"] for r in want]  # same tokens, same arithmetic: exact
    assert "per sample: Inspect's scores and steerwatch's" in res.output and "per sample" not in ref.output
    for r in got:
        row = next(line for line in res.output.splitlines() if f" {r['id']} " in line)
        assert f"{r['scores']['probe']:.3f}" in row and "includes=" in row
    res = runner.invoke(app, ["scan", str(tmp_path / "probe.sv.eval"), "-d", str(vec), "--model", str(model_dir)])
    assert res.exit_code == 2 and "probe.sv.eval: file does not exist" in res.output


# ------------------------------------------------------------------ the embedded model, served
N_SAMPLES, MAX_TOKENS, STRENGTH = 3, 16, 0.02


@pytest.mark.embedded
def test_inspect_against_steerwatch_serve_then_scan(embedded_qwen, embedded_honesty, tmp_path, monkeypatch):
    """docs/examples/inspect_bait.py run by Inspect against `steerwatch serve` (its OpenAI-compatible
    provider), once plain and once with `extra_body` steering; the logs record the steering the
    server applied, steering changes every answer, and scanning the logs reproduces the scores the
    server computed for each answer (the log's messages are exactly what the model said)."""
    import importlib.util

    import yaml
    from inspect_ai import eval
    from inspect_ai.model import GenerateConfig

    from steerwatch.io import file_sha256
    from steerwatch.policy.schema import hash_key
    from steerwatch.serve.server import RunningServer, build_engine
    from steerwatch.watch.detector import Detector
    from steerwatch.watch.scan import scan

    spec = importlib.util.spec_from_file_location(
        "inspect_bait", Path(__file__).resolve().parents[1] / "docs" / "examples" / "inspect_bait.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    honesty, _ = embedded_honesty
    vp = honesty.save(tmp_path / "honesty.sv")
    entry = {"name": "honesty", "path": str(vp), "sha256": file_sha256(vp)}
    pol = {"vectors": [{**entry, "strength": 0.0, "max_abs_strength": STRENGTH}],
           "detectors": [{**entry, "action": "log"}],
           "keys": [{"name": "inspect", "sha256": hash_key("sk-inspect-0123456789"), "steer": True}],
           "limits": {"max_batch": 8, "batch_wait_ms": 300}, "degeneration": {"enabled": False},
           "store": {"url": "sqlite:///ev.db", "store_all": True}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pol))
    engine = build_engine(tmp_path / "p.yaml", loaded=embedded_qwen, guard=False)
    monkeypatch.setenv("STEERWATCH_API_KEY", "sk-inspect-0123456789")
    steering = [{"vector": "honesty", "strength": STRENGTH}]
    try:
        with RunningServer(engine) as srv:
            monkeypatch.setenv("STEERWATCH_BASE_URL", srv.base_url)
            tasks = [example.bait(n=N_SAMPLES), example.bait(n=N_SAMPLES)]
            tasks[1].config = GenerateConfig(extra_body={"steering": steering})
            logs = eval(tasks, model=f"openai-api/steerwatch/{engine.dep.served_name}", log_dir=str(tmp_path / "logs"),
                        display="none", max_tasks=2, max_tokens=MAX_TOKENS, temperature=0.0)
        stored = engine.store.list(limit=100)
    finally:
        engine.stop()
    assert [log.status for log in logs] == ["success", "success"], [log.error for log in logs]
    plain, steered = (load_conversations(log.location) for log in logs)
    assert [c.id for c in plain] == [c.id for c in steered] and len(plain) == N_SAMPLES
    for c in plain:
        assert [s["steering"] for s in c.meta["inspect"]["served"]] == [[]]
    for c in steered:
        (applied,) = c.meta["inspect"]["served"][0]["steering"]
        assert (applied["vector"], applied["strength"]) == ("honesty", STRENGTH)
    assert len(stored) == 2 * N_SAMPLES and sum(bool(e["steering"]) for e in stored) == N_SAMPLES
    assert all(p.messages[-1]["content"] != s.messages[-1]["content"] for p, s in zip(plain, steered))
    rows, _ = scan(embedded_qwen, plain + steered, [Detector.from_vector(honesty)], batch_size=2 * N_SAMPLES)
    for c, row in zip(plain + steered, rows):
        assert row["scores"]["honesty"] == FP32_DEEP.approx(c.meta["inspect"]["served"][0]["scores"]["honesty"])
