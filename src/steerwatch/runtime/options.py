"""How to decode: the options every generation path shares, checked once."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SteerwatchError


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings. Greedy by default, so results are reproducible.

    ``system``: a system prompt put first in chat prompts that have none of their own.
    ``seed``: seeds torch's generator before the first batch (sampling).
    ``raw``: feed each prompt string as it is (no chat template, no ``User:``/``Assistant:`` wrapping;
    the tokenizer's BOS only) and return only its continuation: completion for base models."""

    max_new_tokens: int = 64
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    system: str | None = None
    raw: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise SteerwatchError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise SteerwatchError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.do_sample and not (math.isfinite(self.temperature) and self.temperature > 0):
            raise SteerwatchError(f"temperature must be a positive number when sampling, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SteerwatchError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.raw and self.system:
            raise SteerwatchError("a system prompt needs chat prompts, and raw completion feeds the text as it is; "
                                  "drop the system prompt or raw (--raw)")

    def hf_kwargs(self, pad_token: int) -> dict[str, object]:
        """The keyword arguments for Hugging Face ``generate()``."""
        kw: dict[str, object] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                                 "pad_token_id": pad_token}
        if self.do_sample:
            kw["temperature"] = self.temperature
            if self.top_p is not None:
                kw["top_p"] = self.top_p
        else:  # the model's generation_config may carry sampling defaults; greedy ignores them explicitly
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw
