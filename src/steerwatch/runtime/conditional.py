"""Conditional steering: steering that a calibrated trigger detector switches on, row by row.

``mode="token"``: from the first forward pass after the generated token whose running-mean score
(over the last ``window`` tokens) crosses the trigger threshold. ``mode="prompt"``: for the whole
answer when the prompt's mean score crosses the detector's prompt threshold (decided by one
teacher-forced pass before generation). Tokens before the trigger are never touched: the gate
is read by the steering hooks at every forward call, and a decision made after one pass is
applied from the next.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from ..types import CONDITIONAL_MODES, ConditionalMode
from ..watch.detector import Detector

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from ..steer import SteerSpec
    from ..watch.score import ProjectionHooks


@dataclass
class Conditional:
    trigger: Detector
    specs: list[SteerSpec]
    mode: ConditionalMode = "token"
    window: int | None = None  # default: the window the trigger was calibrated with

    def __post_init__(self) -> None:
        if self.window is None:
            self.window = int(self.trigger.calibration.get("trigger_window", 8))
        if self.mode not in CONDITIONAL_MODES:
            raise SteerwatchError(f"unknown conditional mode {self.mode!r}; valid: {', '.join(CONDITIONAL_MODES)}")
        if self.window < 1:
            raise SteerwatchError(f"window must be >= 1, got {self.window}")
        if self.threshold is None:
            raise SteerwatchError(f"the trigger detector {self.trigger.name!r} is not calibrated; run "
                                  "`steerwatch calibrate` on it first")

    @property
    def threshold(self) -> float | None:
        key = "prompt_threshold" if self.mode == "prompt" else "trigger_threshold"
        return self.trigger.calibration.get(key)


class Gate:
    """One batch's conditional steering: the specs attached with a per-row 0/1 gate, and the trigger
    logic that opens it. ``hooks`` must be reading the trigger detector (column ``column``);
    ``prompt_fired``: per row, whether the prompt fired it (mode ``prompt``)."""

    def __init__(self, loaded: LoadedModel, cond: Conditional, hooks: ProjectionHooks, column: int,
                 prompt_fired: list[bool]) -> None:
        import torch

        self.loaded, self.cond, self.hooks, self.column = loaded, cond, hooks, column
        n = len(prompt_fired)
        self.value = torch.zeros(n)  # read by the steering hooks at every forward call
        self.pending: Any = None
        self.trigger_step: list[int | None] = [None] * n  # per row: the generated token that fired it
        self.step = 0
        self.recent: list[Any] = []
        self._handles: list[Any] = []
        if cond.mode == "prompt":  # decided before generation: the whole answer
            for r, fired in enumerate(prompt_fired):
                if fired:
                    self.value[r] = 1.0
                    self.trigger_step[r] = 0

    def __enter__(self) -> Gate:
        from ..steer import attach

        try:
            self._handles.append(attach(self.loaded, list(self.cond.specs), gate=self))
            # decide after each forward pass, apply from the next one: the trigger token's own pass
            # is never steered
            self._handles.append(self.loaded.model.register_forward_pre_hook(self._before_forward))
            self._handles.append(self.loaded.model.register_forward_hook(self._after_forward))
        except Exception:
            self.__exit__()
            raise
        return self

    def _before_forward(self, *_a: Any) -> None:
        if self.pending is not None:
            self.value = self.pending
            self.pending = None

    def _after_forward(self, *_a: Any) -> None:
        import torch

        cond = self.cond
        layer = cond.trigger.layer
        col = self.hooks.by_layer[layer].index(self.column)
        s = self.hooks.chunks[-1][layer][:, :, col]  # (batch, seq) scores of this call
        fired = torch.zeros(len(self.trigger_step), dtype=torch.bool)
        if self.step > 0 and cond.mode == "token":
            self.recent.append(s[:, -1])
            win = torch.stack(self.recent[-(cond.window or 1):], dim=1).mean(1)
            fired = win > float(cond.threshold or 0.0)  # calibrated: __post_init__ checked it
        for r in range(len(self.trigger_step)):
            if fired[r] and self.trigger_step[r] is None:
                self.trigger_step[r] = self.step - 1  # index of the generated token that fired
        if fired.any():
            self.pending = torch.maximum(self.value, fired.float())
        self.step += 1

    def __exit__(self, *exc: object) -> None:
        while self._handles:
            self._handles.pop().remove()
