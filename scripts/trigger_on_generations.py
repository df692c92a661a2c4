"""Conditional-steering trigger: calibrated on the model's own answers vs. on the reference answers.

The figures behind docs/results.md, Detection (issue 4), "Trigger calibrated on the model's own
answers": the built-in honesty detector (its best layer, sign -1) on the embedded model.

1. Calibrated as ``steerwatch calibrate honesty.sv --fpr F`` does: teacher-forced on the 400
   built-in benign conversations (their reference answers), which also sets the token trigger
   (highest running mean over 8 tokens, ``running_max_mean``) from those reference answers.
2. The model answers every other benign prompt (200; greedy, 48 new tokens) while the detector
   watches (``steerwatch.runtime.generate(..., watch=[detector])``), as ``calibrate --generate 48`` does for all 400.
3. The trigger threshold is set at the target rate on half of those answers (100, the even
   positions) and applied to the other half (100): the held-out firing rate. The reference-answer
   trigger threshold is applied to all 200 answers.

    python scripts/trigger_on_generations.py [--fpr 0.01 --fpr 0.05] [--detector honesty.det.json]

About 13 minutes on 2 CPU cores (13.4 measured on 2026-12-05: scoring the 400 benign conversations
about 6.5, generating the 200 answers about 6.5); ``--detector`` with a detector already calibrated
by ``steerwatch calibrate`` skips the scoring.
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fpr", type=float, action="append", help="target rate(s) (default: 0.01 and 0.05)")
    ap.add_argument("--detector", help="a calibrated honesty detector file (skips calibration on the reference "
                                       "answers)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    fprs = args.fpr or [0.01, 0.05]

    from steerwatch.data.reference import load_benign
    from steerwatch.extract.library import builtin_vector
    from steerwatch.models import load_model
    from steerwatch.runtime import GenerationOptions, generate
    from steerwatch.watch.calibrate import TRIGGER_WINDOW, calibrate, control_prompts, running_max_mean
    from steerwatch.watch.calibrate import threshold_for_fpr as fpr_threshold
    from steerwatch.watch.detector import Detector, load_detector

    lm = load_model(args.model, progress=False)
    convs = load_benign()
    if args.detector:
        det = load_detector(args.detector)
    else:
        vec, _, _ = builtin_vector(lm, "honesty", log=print)
        det = Detector.from_vector(vec)
        calibrate(lm, [det], convs, fpr=fprs[0], source="builtin:benign", progress=True)
    ref_thr = det.calibration["trigger_threshold"]
    window = int(det.calibration.get("trigger_window", TRIGGER_WINDOW))
    prompts = control_prompts(convs)[0::2]
    gens = generate(lm, prompts, GenerationOptions(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size),
                    watch=[det], progress=True)
    stats = [running_max_mean(g.scores[det.name], window) for g in gens if g.scores[det.name]]
    cal, held = stats[0::2], stats[1::2]
    out = {"detector": det.name, "layer": det.layer, "sign": det.sign, "window": window,
           "n_answers": len(stats), "max_new_tokens": args.max_new_tokens,
           "reference_trigger_threshold": ref_thr, "reference_fpr_target": det.calibration.get("fpr_target"),
           "reference_threshold_fires": sum(s > ref_thr for s in stats),
           "reference_threshold_rate": sum(s > ref_thr for s in stats) / len(stats), "own_answers": []}
    for f in fprs:
        thr, achieved = fpr_threshold(cal, f)
        fired = sum(s > thr for s in held)
        out["own_answers"].append({"fpr_target": f, "threshold": thr, "achieved_on_calibration_half": achieved,
                                   "n_calibration": len(cal), "n_held_out": len(held), "fired_held_out": fired,
                                   "held_out_rate": fired / len(held)})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
