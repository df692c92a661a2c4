"""steerwatch.record's prefix cache: what contrast pairs share (the prompt) and what a batch shares (the
chat template's opening) runs once, and the features and norm statistics equal the plain passes'."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import ARCHS, get_loaded
from steerwatch import batch as batch_mod
from steerwatch.chat import encode_example
from steerwatch.record import NormStats, _group_batches, record, tokens_run
from tolerances import FP32_BATCH, FP32_CANCEL, FP32_ROUTE

TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<assistant> {% endif %}")


def _pairs(tok, *, n_prompts: int = 7, seed: int = 0, max_words: int = 9):
    """Prompts with one to three completions each (a contrast pair has two), some with a system
    prompt, and one example without a prompt (always a plain pass)."""
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog"]
    out = []
    for k in range(n_prompts):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, max_words)))
        system = "be nice" if k % 3 == 0 else None
        for _ in range(rng.choice([1, 2, 3])):
            comp = " ".join(rng.choice(["yes", "no", "maybe", "so"]) for _ in range(rng.randint(1, 6)))
            out.append(encode_example(tok, prompt=prompt, completion=comp, system=system))
    out.append(encode_example(tok, prompt=None, completion="the cat sat"))
    return out


class TokenCounter:
    """Counts the real (unpadded) new tokens the model runs, over every forward call."""

    def __init__(self, model):
        self.tokens = 0
        self.calls = 0

        def pre(_mod, _args, kwargs):
            ids, att = kwargs["input_ids"], kwargs["attention_mask"]
            width = ids.shape[1]
            if att.dim() == 4:  # a tree mask (batch, 1, query, key): a real query reads its own key, padding not
                own = att[:, 0, torch.arange(width), att.shape[-1] - width + torch.arange(width)]
                self.tokens += int((own if own.dtype == torch.bool else own == 0).sum())
            else:
                self.tokens += int(att[:, -width:].sum())
            self.calls += 1

        self.handle = model.register_forward_pre_hook(pre, with_kwargs=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _compare(loaded, examples, layers, batch_size):
    for read in ("completion_mean", "last_prompt", "last_token"):
        nc, npl = NormStats(), NormStats()
        fc = record(loaded, examples, layers=layers, read=read, batch_size=batch_size, norms=nc)
        fp = record(loaded, examples, layers=layers, read=read, batch_size=batch_size, norms=npl,
                    prefix_cache=False)
        scale = fp.abs().max()  # rounding is relative to the residual's scale, not to a coordinate near 0
        FP32_BATCH.assert_close(fc / scale, fp / scale)
        sc, sp = nc.summary(), npl.summary()
        for layer in layers:
            assert sc[layer]["n_tokens"] == sp[layer]["n_tokens"] == sum(len(e.ids) - 1 for e in examples)
            assert sc[layer]["mean"] == FP32_ROUTE.approx(sp[layer]["mean"])
            assert sc[layer]["std"] == FP32_CANCEL.approx(sp[layer]["std"])


@pytest.mark.parametrize("tree", [True, False], ids=["tree-mask", "two-pass"])
@pytest.mark.parametrize("arch", ARCHS)
def test_cached_recording_equals_plain_passes(arch, tree, monkeypatch):
    loaded = get_loaded(arch)
    if not tree:
        monkeypatch.setattr(batch_mod, "tree_mask_kind", lambda lm: None)
    else:
        assert batch_mod.tree_mask_kind(loaded) in ("bool", "additive")
    examples = _pairs(loaded.tokenizer, max_words=4 if arch == "gemma3_text" else 9)
    _compare(loaded, examples, [0, 2, 3], batch_size=4)


def _shared_tokens(examples):
    """Tokens one batch holding every example runs with the cache: the opening all prompts share
    (leaving each prompt one token of its own), each distinct prompt's rest, every completion;
    examples without a completion run whole."""
    withc = [e for e in examples if e.has_completion]
    prompts = {tuple(e.ids[:e.last_prompt + 1]) for e in withc}
    first = next(iter(prompts))
    common = 0
    while all(len(p) > common + 1 and p[common] == first[common] for p in prompts):
        common += 1
    rest = sum(len(p) - common for p in prompts)
    comps = sum(len(e.ids) - e.last_prompt - 1 for e in withc)
    return common + rest + comps + sum(len(e.ids) for e in examples if not e.has_completion)


@pytest.mark.parametrize("tree", [True, False], ids=["tree-mask", "two-pass"])
def test_shared_prompts_and_openings_run_once(tree, monkeypatch):
    """One pass per batch under a tree mask (a prompt rest and all its completions in one row); a
    model whose attention takes no custom mask runs two (the prompt rests, then the completions)."""
    if not tree:
        monkeypatch.setattr(batch_mod, "tree_mask_kind", lambda lm: None)
    per_batch = 1 if tree else 2
    loaded = get_loaded("qwen2")
    tok = loaded.tokenizer
    old = tok.chat_template
    tok.chat_template = TEMPLATE  # an opening every prompt shares ("<user> ")
    try:
        examples = _pairs(tok)
        assert examples[0].ids[:2] == examples[-2].ids[:2]
        with TokenCounter(loaded.model) as cached:
            fc = record(loaded, examples, layers=[1, 3], read="completion_mean", batch_size=64)
        with TokenCounter(loaded.model) as plain:
            fp = record(loaded, examples, layers=[1, 3], read="completion_mean", batch_size=64, prefix_cache=False)
    finally:
        tok.chat_template = old
    FP32_BATCH.assert_close(fc, fp)
    assert plain.tokens == sum(len(e.ids) for e in examples)
    assert plain.calls == 1
    assert cached.tokens == _shared_tokens(examples) == tokens_run(examples, batch_size=64) < plain.tokens
    assert tokens_run(examples, batch_size=64, prefix_cache=False) == plain.tokens
    assert cached.calls == 2 + per_batch  # the opening, the batch, the prompt-less example alone
    # in batches of 4 the opening still runs once for the whole set, then the passes of each batch
    tok.chat_template = TEMPLATE
    try:
        with TokenCounter(loaded.model) as small:
            fs = record(loaded, examples, layers=[1, 3], read="completion_mean", batch_size=4)
    finally:
        tok.chat_template = old
    FP32_BATCH.assert_close(fs, fp)
    n_batches = sum(1 for _ in _group_batches(examples, [i for i, e in enumerate(examples) if e.has_completion], 4))
    assert n_batches > 2
    assert small.calls == 1 + per_batch * n_batches + 1
    assert small.tokens == tokens_run(examples, batch_size=4) == cached.tokens  # the same tokens, more passes


def test_last_prompt_without_norms_skips_the_completions():
    loaded = get_loaded("llama")
    examples = [e for e in _pairs(loaded.tokenizer) if e.has_completion]
    with TokenCounter(loaded.model) as counter:
        f = record(loaded, examples, layers=[2], read="last_prompt", batch_size=64)
    assert counter.tokens == _shared_tokens(examples) - sum(len(e.ids) - e.last_prompt - 1 for e in examples)
    FP32_BATCH.assert_close(f, record(loaded, examples, layers=[2], read="last_prompt", batch_size=64,
                                      prefix_cache=False))


def test_a_batch_longer_than_the_sliding_window_runs_plain():
    loaded = get_loaded("gemma3_text")  # sliding window of 16 tokens
    assert batch_mod.sliding_window(loaded) == 16
    tok = loaded.tokenizer
    long = _pairs(tok, n_prompts=3)
    old = tok.chat_template
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # a few tokens per prompt
    try:
        short = [encode_example(tok, prompt=p, completion=c) for p, c in
                 [("ab", "x"), ("ab", "yz"), ("ac", "x"), ("ac", "zz")]]
    finally:
        tok.chat_template = old
    assert max(len(e.ids) for e in long) > 16 >= max(len(e.ids) for e in short)
    for examples, runs_plain in ((long, True), (short, False)):
        with TokenCounter(loaded.model) as counter:
            record(loaded, examples, layers=[3], read="completion_mean", batch_size=64)
        assert (counter.tokens == sum(len(e.ids) for e in examples)) is runs_plain
        _compare(loaded, examples, [1, 3], batch_size=64)


def test_no_cache_support_falls_back_to_plain_passes(monkeypatch):
    loaded = get_loaded("gpt2")
    examples = _pairs(loaded.tokenizer)
    monkeypatch.setattr(batch_mod, "new_cache", lambda lm: None)
    with TokenCounter(loaded.model) as counter:
        f = record(loaded, examples, layers=[0, 3], read="last_token", batch_size=64)
    assert counter.tokens == sum(len(e.ids) for e in examples)
    monkeypatch.undo()
    FP32_BATCH.assert_close(f, record(loaded, examples, layers=[0, 3], read="last_token", batch_size=64))


def test_a_prompt_group_larger_than_the_batch_is_split():
    loaded = get_loaded("qwen2")
    tok = loaded.tokenizer
    examples = [encode_example(tok, prompt="the cat sat", completion=c) for c in
                ["yes", "no no", "maybe so", "so", "yes no yes", "no"]]
    _compare(loaded, examples, [0, 3], batch_size=4)
    assert torch.isfinite(record(loaded, examples, layers=[3], read="completion_mean", batch_size=1)).all()


def test_cli_extract_with_and_without_the_prefix_cache(qwen, monkeypatch, tmp_path):
    import json

    from typer.testing import CliRunner

    import steerwatch.cli.extract as cli_extract
    from steerwatch.cli.main import app
    from steerwatch.vector import load_vector

    rng = random.Random(3)
    rows = [{"prompt": "Q: " + " ".join(rng.choice(["cat", "dog", "mat"]) for _ in range(3)),
             "positive": " ".join(rng.choice(["aei", "ou"]) for _ in range(4)),
             "negative": " ".join(rng.choice(["123", "45"]) for _ in range(4)),
             "split": "val" if i % 3 == 0 else "train"} for i in range(12)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(cli_extract, "load", lambda spec, **kw: qwen)
    with TokenCounter(qwen.model) as counter:
        runs = {}
        for flag in ("--prefix-cache", "--no-prefix-cache"):
            before = counter.tokens
            res = CliRunner().invoke(app, ["extract", str(data), "-o", str(tmp_path / f"{flag}.sv"), flag])
            assert res.exit_code == 0, res.output
            runs[flag] = counter.tokens - before
    assert runs["--prefix-cache"] < runs["--no-prefix-cache"]
    a, b = load_vector(tmp_path / "--prefix-cache.sv"), load_vector(tmp_path / "--no-prefix-cache.sv")
    for layer, d in b.directions.items():
        FP32_CANCEL.assert_close(a.directions[layer], d)
    for layer, stats in b.residual_norm.items():
        assert a.residual_norm[layer]["n_tokens"] == stats["n_tokens"]
        assert a.residual_norm[layer]["mean"] == FP32_ROUTE.approx(stats["mean"])


def test_an_example_whose_completion_is_empty_runs_whole():
    from steerwatch.chat import Encoded

    loaded = get_loaded("qwen2")
    examples = _pairs(loaded.tokenizer)[:4]
    bare = Encoded(ids=examples[0].ids[:examples[0].last_prompt + 1], last_prompt=examples[0].last_prompt,
                   span=(examples[0].last_prompt, examples[0].last_prompt + 1), has_completion=True)
    with TokenCounter(loaded.model) as counter:
        f = record(loaded, [*examples, bare], layers=[3], read="last_token", batch_size=64)
    assert counter.tokens == tokens_run([*examples, bare], batch_size=64) > tokens_run(examples, batch_size=64)
    FP32_BATCH.assert_close(f[:-1], record(loaded, examples, layers=[3], read="last_token", batch_size=64))
    FP32_BATCH.assert_close(f[-1:], record(loaded, [bare], layers=[3], read="last_token", prefix_cache=False))


def test_tree_mask_under_eager_attention_is_additive_and_equal(monkeypatch):
    """Eager attention adds its mask to the scores: the tree mask goes in as 0 / the dtype's minimum."""
    loaded = get_loaded("qwen2")
    monkeypatch.setattr(loaded.model.config, "_attn_implementation", "eager")
    assert batch_mod.tree_mask_kind(loaded) == "additive"
    _compare(loaded, _pairs(loaded.tokenizer), [0, 3], batch_size=4)
