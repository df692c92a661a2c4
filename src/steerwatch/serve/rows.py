"""Per-row state of one batch while it generates: the tokens each row has produced, when it
stopped (end-of-turn token, its own ``max_tokens``, a stop string) and what has been streamed.

The runtime calls :meth:`RowState.on_token` after every decoding step with each row's new token;
its answer (which rows are done) stops those rows, so the batch ends when every request is done.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .requests import GenRequest


class RowState:
    """Per-row stopping and streaming state of one batch, fed token by token by the runtime."""

    def __init__(self, reqs: list[GenRequest], tokenizer: Any, eos: set[int], live: bool) -> None:
        self.reqs, self.tok, self.eos, self.live = reqs, tokenizer, eos, live
        self.tokens: list[list[int]] = [[] for _ in reqs]
        self.done = [False] * len(reqs)
        self.reason = ["length"] * len(reqs)
        self.sent = [0] * len(reqs)  # characters already streamed
        self.text = [""] * len(reqs)

    def on_token(self, tokens: list[int]) -> list[bool]:
        """One decoding step: each row's new token. Returns which rows are done."""
        for r, t in enumerate(tokens):
            if self.done[r]:
                continue
            if self.reqs[r].cancelled:  # its client hung up mid-generation: stop spending compute on it
                self._finish(r, "cancelled")
                continue
            if t in self.eos:
                self.tokens[r].append(t)
                self._finish(r, "stop")
                continue
            self.tokens[r].append(t)
            req = self.reqs[r]
            text = self.tok.decode(self.tokens[r], skip_special_tokens=True)
            hold = 0
            if req.stop:
                hits = [i for i in (text.find(s) for s in req.stop) if i >= 0]
                if hits:
                    self.text[r] = text[:min(hits)]
                    self._finish(r, "stop")
                    continue
                hold = max(len(s) for s in req.stop) - 1
            self.text[r] = text
            if len(self.tokens[r]) >= req.max_tokens:
                self._finish(r, "length")
                continue
            if self.live:
                ok = len(text) - hold
                while ok > self.sent[r] and text[ok - 1] == "\ufffd":  # an incomplete multi-byte character
                    ok -= 1
                self._emit(r, ok)
        return list(self.done)

    def _emit(self, r: int, upto: int) -> None:
        req = self.reqs[r]
        if req.stream and req.sink is not None and upto > self.sent[r]:
            req.streamed = True
            req.sink(("delta", self.text[r][self.sent[r]:upto]))
            self.sent[r] = upto

    def _finish(self, r: int, reason: str) -> None:
        self.done[r] = True
        self.reason[r] = reason

    def flush(self, r: int, text: str) -> None:
        """Send whatever of the final text has not been streamed yet."""
        req = self.reqs[r]
        if req.stream and req.sink is not None and len(text) > self.sent[r]:
            req.streamed = True
            req.sink(("delta", text[self.sent[r]:]))
            self.sent[r] = len(text)
