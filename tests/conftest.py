"""Shared fixtures: tiny random-weight models built from configs (no downloads) and a tiny
character-level tokenizer, wrapped as :class:`steerwatch.models.LoadedModel`."""
from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
import torch

from steerwatch.models import LoadedModel

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHARS = [c for c in string.printable if c not in "\x0b\x0c\r"]  # 97 characters incl. space, \t, \n
VOCAB = 128
HIDDEN = 32
N_LAYERS = 4
N_HEADS = 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'] }}\n{{ m['content'] }}<eos>\n{% endfor %}"
    "{% if add_generation_prompt %}<bos>assistant\n{% endif %}"
)


@pytest.fixture(autouse=True)
def _one_torch_thread(request):
    """Tiny models are dominated by per-op overhead: with several intra-op threads on a busy
    2-core machine a 4-layer forward takes ~100x longer. Use one thread for the tests that do not
    load the embedded model, and restore the setting afterwards."""
    if request.node.get_closest_marker("embedded") is not None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_tokenizer(*, chat_template: str | None = None):
    """A character-level WordLevel tokenizer over printable ASCII; prepends <bos> when asked for
    special tokens; decodes by concatenation."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    assert len(vocab) <= VOCAB
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def _config(arch: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                              num_attention_heads=N_HEADS, num_key_value_heads=2, max_position_embeddings=256,
                              **common)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                              num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS,
                              max_position_embeddings=256, **common)
    if arch == "mistral":
        return tf.MistralConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                num_attention_heads=N_HEADS, num_key_value_heads=2, head_dim=HIDDEN // N_HEADS,
                                max_position_embeddings=256, sliding_window=None, **common)
    if arch == "phi3":
        return tf.Phi3Config(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                             num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS,
                             max_position_embeddings=256, original_max_position_embeddings=256, **common)
    if arch == "gemma3_text":
        return tf.Gemma3TextConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                   num_attention_heads=N_HEADS, num_key_value_heads=1, head_dim=HIDDEN // N_HEADS,
                                   max_position_embeddings=256, sliding_window=16, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=HIDDEN, n_layer=N_LAYERS, n_head=N_HEADS, n_positions=256,
                             vocab_size=VOCAB, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=N_LAYERS,
                                num_attention_heads=N_HEADS, max_position_embeddings=256, **common)
    raise ValueError(arch)


ARCHS = ("qwen2", "llama", "gpt2", "gpt_neox", "mistral", "phi3", "gemma3_text")
STEER_ARCHS = ("qwen2", "llama", "gpt2", "gpt_neox")


def build_model(arch: str, *, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = _config(arch)
    model = AutoModelForCausalLM.from_config(cfg)
    model.to(torch.float32).eval()
    return model


def build_loaded(arch: str, *, seed: int = 0, chat_template: str | None = None) -> LoadedModel:
    return LoadedModel(model=build_model(arch, seed=seed), tokenizer=make_tokenizer(chat_template=chat_template),
                       name=f"tiny-{arch}", spec=f"tiny-{arch}")


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


_CACHE: dict[str, LoadedModel] = {}


def get_loaded(arch: str) -> LoadedModel:
    """Session-wide tiny model per architecture (treat as read-only)."""
    if arch not in _CACHE:
        _CACHE[arch] = build_loaded(arch)
    return _CACHE[arch]


@pytest.fixture(params=ARCHS)
def any_loaded(request) -> LoadedModel:
    return get_loaded(request.param)


@pytest.fixture(params=STEER_ARCHS)
def steer_loaded(request) -> LoadedModel:
    return get_loaded(request.param)


@pytest.fixture(scope="session")
def qwen() -> LoadedModel:
    return get_loaded("qwen2")


@pytest.fixture(scope="session")
def llama() -> LoadedModel:
    return get_loaded("llama")


@pytest.fixture(scope="session")
def gpt2() -> LoadedModel:
    return get_loaded("gpt2")


@pytest.fixture(scope="session")
def neox() -> LoadedModel:
    return get_loaded("gpt_neox")


@pytest.fixture(scope="session")
def qwen_chat() -> LoadedModel:
    """Same weights as ``qwen`` but a tokenizer with a chat template."""
    base = get_loaded("qwen2")
    return LoadedModel(model=base.model, tokenizer=make_tokenizer(chat_template=CHAT_TEMPLATE),
                       name=base.name, spec=base.spec)


def make_vector(loaded: LoadedModel, *, seed: int = 0, layers=None, default_layers=(1,), norm_mean: float = 2.0,
                concept: str = "test", fingerprint: str | None = None, hidden_size: int | None = None):
    """A synthetic Vector for ``loaded``: random unit directions per layer, residual-norm mean
    ``norm_mean`` (or a per-layer dict) at every layer."""
    from steerwatch.vector import Vector

    hidden = hidden_size or loaded.hidden_size
    layers = list(range(loaded.n_layers)) if layers is None else list(layers)
    g = torch.Generator().manual_seed(seed)
    dirs = {}
    for layer in layers:
        v = torch.randn(hidden, generator=g)
        dirs[layer] = v / v.norm()
    norms = {layer: {"mean": float(norm_mean[layer] if isinstance(norm_mean, dict) else norm_mean),
                     "std": 1.0, "n_tokens": 10} for layer in layers}
    return Vector(directions=dirs, concept=concept, model_name=loaded.name,
                  model_fingerprint=fingerprint if fingerprint is not None else loaded.fingerprint,
                  hidden_size=hidden, method="mean_diff", read_position="completion_mean",
                  default_layers=list(default_layers), residual_norm=norms, n_model_layers=loaded.n_layers)


@pytest.fixture
def vector_factory():
    return make_vector


class BlockCapture:
    """Forward hooks storing a clone of every output of every decoder block, per forward call:
    ``outs[block][call]`` is a (batch, seq, d) tensor. Hooks run in registration order, so a
    capture registered *before* steering sees the raw block output and one registered *after*
    sees the steered output."""

    def __init__(self, blocks) -> None:
        from steerwatch.layers import block_output

        self.outs: list[list[torch.Tensor]] = [[] for _ in blocks]
        self._handles = []
        for i, block in enumerate(blocks):
            def hook(_m, _inp, out, i=i):
                self.outs[i].append(block_output(out).detach().clone())
            self._handles.append(block.register_forward_hook(hook))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> BlockCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def blocks_of(loaded: LoadedModel):
    from steerwatch.layers import decoder_blocks

    return decoder_blocks(loaded.model, layers_path=loaded.layers_path)


def forward_blocks(loaded: LoadedModel, input_ids: torch.Tensor, attention_mask=None) -> list[torch.Tensor]:
    """Block outputs (one (batch, seq, d) tensor per block) of one plain forward pass."""
    with BlockCapture(blocks_of(loaded)) as cap, torch.no_grad():
        loaded.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return [o[0] for o in cap.outs]


def random_ids(batch: int, seq: int, *, seed: int = 0) -> torch.Tensor:
    """Token ids of ordinary characters (never the special tokens 0..3)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(len(SPECIALS), len(SPECIALS) + len(CHARS), (batch, seq), generator=g)


def left_pad(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s):] = torch.tensor(s)
        att[r, width - len(s):] = 1
    return ids, att


def greedy(loaded: LoadedModel, ids: torch.Tensor, att: torch.Tensor, *, max_new_tokens: int = 8, **kw):
    with torch.no_grad():
        return loaded.model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                                     do_sample=False, temperature=None, top_p=None, top_k=None,
                                     pad_token_id=loaded.tokenizer.pad_token_id, **kw)


def trim_eos(ids: list[int], eos: int) -> list[int]:
    """Generated ids up to and including the first EOS (a batch keeps padding after it)."""
    return ids[: ids.index(eos) + 1] if eos in ids else ids


# ---------------------------------------------------------------- the public data sets (../shared/data)
def shared_file(relpath: str) -> Path:
    """A file of the public data sets: under $STEERWATCH_SHARED_DATA, else under ``../shared/data``
    beside this repository. A missing file fails the test (it never skips: a test that vanishes on
    another checkout is not a test); .ci/run points the variable at the data when CI's clone lives
    elsewhere."""
    env = os.environ.get("STEERWATCH_SHARED_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    path = root / relpath
    if not path.is_file():
        pytest.fail(f"public data file {path} not found; set STEERWATCH_SHARED_DATA to the folder that holds "
                    "CAA/, persona_vectors/ and representation-engineering/ (../shared/data on this machine)")
    return path


# ---------------------------------------------------------------- the embedded model (tests marked embedded)
@pytest.fixture(scope="session")
def embedded_qwen():
    from steerwatch.models import load_model

    return load_model("default", progress=False)


@pytest.fixture(scope="session")
def vector_cache(tmp_path_factory) -> Path:
    """The cache root the built-in vectors of this test session live under: a fresh folder per
    session (built once per CI run, never stale), or $STEERWATCH_TEST_CACHE to keep them between
    runs of a developer loop (keyed by data, methods, steerwatch version and model fingerprint;
    clear it after changing the extraction code)."""
    env = os.environ.get("STEERWATCH_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("steerwatch-cache")


@pytest.fixture(scope="session")
def builtin_vector(embedded_qwen, vector_cache):
    """``builtin_vector(concept) -> (vector, per-layer rows)``: a built-in concept's vector on the
    embedded model, built once per session through the product's own cache
    (:func:`steerwatch.extract.library.builtin_vector`). Treat the vectors as read-only."""
    from steerwatch.extract.library import builtin_vector as build

    memo: dict[str, tuple] = {}

    def get(concept: str):
        if concept not in memo:
            vec, rows, _ = build(embedded_qwen, concept, cache_root=vector_cache)
            memo[concept] = (vec, rows)
        return memo[concept]

    return get


@pytest.fixture(scope="session")
def embedded_honesty(builtin_vector):
    """(vector, per-layer rows) of the built-in honesty concept on the embedded model."""
    return builtin_vector("honesty")


def write_jsonl(path, rows):
    """Write rows (dicts, or raw strings for malformed lines) as a JSONL file; returns the path."""
    import json

    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def vowel_contrast(n: int = 20):
    """Positive completions made of vowels, negative ones of digits (a tiny random model separates
    them); pairs 7-9 of every 10 are validation pairs."""
    import random

    from steerwatch.data import ContrastPair, ContrastSet

    rng = random.Random(1)
    pairs = []
    for i in range(n):
        prompt = f"Q{i}: " + "".join(rng.choice("bcdfgh") for _ in range(rng.randint(2, 8)))
        pos = "".join(rng.choice("aeiou") for _ in range(rng.randint(3, 9)))
        neg = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 9)))
        pairs.append(ContrastPair(positive=pos, negative=neg, prompt=prompt, split="val" if i % 10 >= 7 else "train"))
    return ContrastSet(name="vowels", pairs=pairs, source="test")
