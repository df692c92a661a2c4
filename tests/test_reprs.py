"""Short reprs for the objects a notebook user gets back (issue 21, item 7: ``repr(Vector)`` was
319,180 characters). Each object here carries a payload whose default dataclass repr runs to
thousands of characters; its repr stays one line under REPR_MAX and names what matters."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_vector

REPR_MAX = 200


def _objects(qwen):
    from steerwatch.data import load_concept
    from steerwatch.data.conversations import Conversation
    from steerwatch.evals.bait import load_bait
    from steerwatch.evals.deception_detect import DeceptionEval, LiarClassifier, ProbeFit
    from steerwatch.evals.onpolicy import OnPolicyResult, OnPolicySpec, builtin_onpolicy_items
    from steerwatch.evals.sweep import SweepData
    from steerwatch.interop.gguf_cvec import ControlVectorFile
    from steerwatch.policy.guard import GuardReport
    from steerwatch.quickstart import QuickstartResult
    from steerwatch.runtime.session import Generation
    from steerwatch.watch.detector import Detector
    from steerwatch.watch.render import RenderedConversation
    from steerwatch.watch.score import score_conversations

    vec = make_vector(qwen, concept="honesty")
    det = Detector(vector=vec, layer=1, threshold=0.25)
    long = [{"role": "user", "content": "x" * 3000}, {"role": "assistant", "content": "y " * 1500}]
    (scored,) = score_conversations(qwen, [long], [det])
    honesty = load_concept("honesty")
    fit = ProbeFit(vector=vec, detector=det, sources=["roleplay", "insider"], method="lda", context="full",
                   validation={i: {"auroc": 0.9, "d": 1.0} for i in range(400)})
    return {
        "LoadedModel": (qwen, ["'tiny-qwen2'", "4 layers, d_model 32", "cpu float32", "no chat template"]),
        "Generation": (Generation(text="a" * 500, prompt_ids=list(range(2000)), new_ids=list(range(1000)),
                                  scores={"honesty": [0.5] * 1000}, response={"honesty": 0.5}, flags=["honesty"],
                                  triggered_at=3),
                       ["1000 tokens", "honesty +0.500", "flagged: honesty", "fired at token 3"]),
        "ScoredConversation": (scored, [f"{len(scored.token_ids)} tokens, 2 messages",
                                        f"honesty {scored.response_score('honesty'):+.3f}"]),
        "RenderedConversation": (RenderedConversation(ids=list(range(5000)), msg_index=[0] * 5000, roles=["user"],
                                                      truncated=True), ["5000 tokens, 1 messages, truncated"]),
        "ContrastSet": (honesty, ["'honesty': 110 pairs (88 train / 22 val)"]),
        "Conversation": (Conversation(id="c7", messages=long * 3, label=1),
                         ["'c7' label 1: 6 messages (user, assistant, user, assistant, …), 18000 chars"]),
        "QuickstartResult": (QuickstartResult(vectors={"honesty": vec}, layer_rows={"honesty": [{}] * 50},
                                              bait_rows=[{"answer": "z" * 100}] * 300, summary=[{}] * 5),
                             ["vectors honesty", "300 bait answers", "5 settings"]),
        "OnPolicyResult": (OnPolicyResult(data=honesty, rows=[{"a": "b" * 100}] * 60,
                                          counts={"kept": {"train": 40, "val": 10}},
                                          spec=OnPolicySpec(name="x", items=load_bait(builtin_onpolicy_items())[:2])),
                           ["60 answered item pairs, kept 40 train / 10 val (110 pairs)"]),
        "ProbeFit": (fit, ["'honesty': lda, context full, layer 1, threshold 0.25, sources roleplay, insider"]),
        "LiarClassifier": (LiarClassifier(weights=[0.1] * 500, bias=0.2, mean=[0.0] * 500, std=[1.0] * 500),
                           ["500 features, bias +0.200"]),
        "DeceptionEval": (DeceptionEval(report={"rows": [{"x": 1}] * 500}, probes={"honesty": fit},
                                        scores={"honesty": [0.1] * 1000}), ["1 probes (honesty), 1 score columns"]),
        "ControlVectorFile": (ControlVectorFile(path=Path("/tmp/x.gguf"), pushes={i: torch.zeros(896)
                                                                                 for i in range(1, 24)},
                                                n_embd=896, architecture="qwen2", model_hint=None, layer_count=24,
                                                sha256="0" * 64),
                              ["'x.gguf': 23 directions (layers 1-23), n_embd 896, architecture qwen2"]),
        "GuardReport": (GuardReport(rows=[], distress_source="builtin"),
                        ["accepted: 0 error(s), 0 warning(s), 0 row(s); distress from builtin"]),
        "SweepData": (SweepData(ab_items=[{"q": "w" * 100}] * 200, neutral_prompts=["p"] * 50),
                      ["200 A/B items (given), 50 neutral prompts"]),
    }


@pytest.fixture(scope="module")
def objects(qwen):
    return _objects(qwen)


@pytest.mark.parametrize("name", ["LoadedModel", "Generation", "ScoredConversation", "RenderedConversation",
                                  "ContrastSet", "Conversation", "QuickstartResult", "OnPolicyResult", "ProbeFit",
                                  "LiarClassifier", "DeceptionEval", "ControlVectorFile", "GuardReport", "SweepData"])
def test_result_objects_have_short_reprs(objects, name):
    obj, parts = objects[name]
    text = repr(obj)
    assert type(obj).__name__ == name and "__repr__" in type(obj).__dict__
    assert text.startswith((f"<{name} ", f"<{name}:")) and text.endswith(">") and "\n" not in text
    assert len(text) <= REPR_MAX, text
    for part in parts:
        assert part in text, text


def test_generation_html_escapes_and_shows_scores():
    from steerwatch.runtime.session import Generation

    g = Generation(text="<b>[1]</b>", prompt_ids=[1], new_ids=[2, 3], response={"honesty": -0.125},
                   flags=["honesty"])
    page = g._repr_html_()
    assert "&lt;b&gt;[1]&lt;/b&gt;" in page and "<b>" not in page
    assert "<td>honesty</td><td>-0.125</td><td>FLAGGED</td>" in page
