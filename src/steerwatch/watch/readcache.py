"""A disk cache of benign reads: the residual stream at one layer over a whole control set, so that
calibrating another detector that reads the same layer of the same model on the same conversations
costs one matrix product instead of a forward pass over every conversation.

What is stored: per (read set, layer) one float32 ``.npy`` array of shape ``(total tokens, d_model)``,
the block-``layer`` outputs of every token of every conversation, in the caller's order, each
conversation's rows right after the previous one's. A detector's token scores are linear in it
(``sign * h . u``), so any new read direction at that layer is scored exactly from it; aggregates
that are not linear (``max``, ``last``, the running-window trigger) still see every token's score.

What keys a read (anything that changes the numbers): the cache format, the model's weights
fingerprint and name, its parameter dtype and device type, the torch and transformers versions, the
layer, and the sha256 of the token ids the model reads (the control conversations as rendered by
this tokenizer and chat template, after truncation). Batch size is not in the key: batches change
float32 results only in the last bits (tests.tolerances.FP32_BATCH), and a cold and a warm cache
score from the same stored array, so their thresholds are equal.

Size: 4 bytes x d_model per token per layer. The 400 built-in benign conversations are 121,963
tokens on Qwen2.5-Coder-0.5B (d_model 896): 437 MB per cached layer. Location:
``<cache dir>/reads/`` (``$STEERWATCH_CACHE``, else ``~/.cache/steerwatch``); delete it at will.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from ..models import LoadedModel

CACHE_FORMAT = 1


def ids_sha256(ids: Sequence[Sequence[int]]) -> str:
    """The sha256 of a list of token-id sequences (lengths included, so boundaries count)."""
    import numpy as np

    h = hashlib.sha256()
    h.update(np.asarray([len(s) for s in ids], dtype=np.int64).tobytes())
    for s in ids:
        h.update(np.asarray(list(s), dtype=np.int64).tobytes())
    return h.hexdigest()


class ReadCache:
    """Block outputs at one layer over one set of token sequences, on disk (see the module text).

    ``root``: the directory (default ``<cache dir>/reads``). ``log``: where to say what was reused or
    written (one line each), e.g. the CLI's console."""

    def __init__(self, root: str | Path | None = None, *, log: Callable[[str], None] | None = None) -> None:
        from ..models import cache_dir

        self.root = Path(root) if root is not None else cache_dir() / "reads"
        self.log = log

    def say(self, msg: str) -> None:
        if self.log is not None:
            self.log(msg)

    def key(self, loaded: LoadedModel, ids: Sequence[Sequence[int]], layer: int) -> dict[str, Any]:
        """Everything that decides the stored numbers."""
        import torch
        import transformers

        param = next(loaded.model.parameters())
        return {"format": CACHE_FORMAT, "model_name": loaded.name, "model_fingerprint": loaded.fingerprint,
                "dtype": str(param.dtype).removeprefix("torch."), "device": param.device.type,
                "torch": torch.__version__, "transformers": transformers.__version__, "layer": int(layer),
                "ids_sha256": ids_sha256(ids), "n_sequences": len(ids), "n_tokens": sum(len(s) for s in ids),
                "d_model": loaded.hidden_size}

    def path(self, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / f"{key['model_name'].replace('/', '_')}-L{key['layer']}-{digest}.npy"

    def load(self, key: dict[str, Any]) -> np.ndarray | None:
        """The stored (n_tokens, d_model) array (memory-mapped, read-only), or None when absent or
        not what the key says (then it is rewritten)."""
        import numpy as np

        p = self.path(key)
        meta = p.with_suffix(".json")
        if not (p.is_file() and meta.is_file()):
            return None
        try:
            if json.loads(meta.read_text(encoding="utf-8")) != key:
                return None
            arr = np.load(p, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if arr.shape != (key["n_tokens"], key["d_model"]) or arr.dtype != np.float32:
            return None
        self.say(f"reusing cached reads at layer {key['layer']} ({arr.nbytes / 1e6:.0f} MB, {p})")
        return arr

    def create(self, key: dict[str, Any]) -> np.ndarray:
        """A writable (n_tokens, d_model) float32 array in a temporary file; :meth:`commit` it once
        filled. Raises OSError when the cache directory cannot be written."""
        import numpy as np

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.path(key).with_suffix(f".tmp{os.getpid()}.npy")
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(key["n_tokens"], key["d_model"]))
        if hasattr(os, "posix_fallocate"):  # reserve the blocks now: a full disk is an OSError here,
            try:                             # not a crash when a page of the mapping is written
                with open(tmp, "r+b") as fh:
                    os.posix_fallocate(fh.fileno(), 0, os.path.getsize(tmp))
            except OSError:
                self.discard(arr)
                raise
        return arr

    def commit(self, key: dict[str, Any], arr: np.ndarray) -> np.ndarray:
        """Move a filled :meth:`create` array into place (atomically) and return it read-only."""
        import numpy as np

        arr.flush()  # type: ignore[attr-defined]  # a numpy memmap
        tmp = Path(arr.filename)  # type: ignore[attr-defined]
        del arr
        p = self.path(key)
        os.replace(tmp, p)
        meta_tmp = p.with_suffix(f".tmp{os.getpid()}.json")
        meta_tmp.write_text(json.dumps(key, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        os.replace(meta_tmp, p.with_suffix(".json"))
        out = np.load(p, mmap_mode="r")
        self.say(f"cached the reads at layer {key['layer']} for the next calibration "
                  f"({out.nbytes / 1e6:.0f} MB, {p}; --no-cache skips this)")
        return out

    def discard(self, arr: np.ndarray) -> None:
        tmp = Path(arr.filename)  # type: ignore[attr-defined]
        del arr
        tmp.unlink(missing_ok=True)
