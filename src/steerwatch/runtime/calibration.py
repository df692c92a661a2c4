"""Calibrating the conditional-steering trigger on the model's own answers (it generates, so it
lives in the runtime; the statistics are the watch's)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..watch.calibrate import TRIGGER_WINDOW, control_prompts, running_max_mean, threshold_for_fpr
from .options import GenerationOptions
from .session import generate

if TYPE_CHECKING:  # pragma: no cover
    from ..data.conversations import Conversation
    from ..models import LoadedModel
    from ..watch.detector import Detector


def calibrate_trigger_on_generations(loaded: LoadedModel, detectors: Sequence[Detector],
                                     control: Sequence[Conversation], *, fpr: float = 0.01,
                                     max_new_tokens: int = 48, batch_size: int = 8,
                                     progress: bool = False) -> list[dict[str, Any]]:
    """Set the conditional-steering token trigger from the model's *own* greedy answers to the
    control prompts, read live exactly as the trigger reads them. Teacher-forced reference answers
    written by people score differently from the model's own text (on the embedded model a trigger
    calibrated on them fired on 23 % of benign prompts); whether a trigger fires is decided by the
    unsteered tokens up to the trigger, so these answers give the firing rate directly."""
    prompts = control_prompts(control)
    res = generate(loaded, prompts, GenerationOptions(max_new_tokens=max_new_tokens, batch_size=batch_size),
                   watch=list(detectors), progress=progress)
    rows = []
    for det in detectors:
        window = int(det.calibration.get("trigger_window", TRIGGER_WINDOW))
        stats = [running_max_mean(r.scores[det.name], window) for r in res if r.scores[det.name]]
        thr, achieved = threshold_for_fpr(stats, fpr)
        det.calibration.update(trigger_threshold=thr, trigger_window=window, trigger_source="generated",
                               trigger_fpr=achieved, trigger_n=len(stats), trigger_max_new_tokens=max_new_tokens)
        rows.append({"detector": det.name, "trigger_threshold": thr, "trigger_fpr": achieved, "n": len(stats)})
    return rows
