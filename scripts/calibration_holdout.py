"""Does a threshold calibrated on one half of the benign control set hold on the other half?

The figure behind docs/results.md ("Calibrated at 1 % on half the benign set ..."): the built-in
honesty detector on the embedded model, calibrated at the target FPR on the even-numbered benign
conversations (200) and applied to the odd-numbered ones (200). tests/test_embedded_watch.py checks
the same mechanism on the 200 shortest conversations at 5 % (kept short for CI).

    python scripts/calibration_holdout.py [--fpr 0.01] [--concept honesty]

About 7 minutes on 2 CPU cores (the whole set is scored once; the vector is cached).
"""
from __future__ import annotations

import argparse
import json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concept", default="honesty", help="built-in concept whose detector is calibrated")
    ap.add_argument("--fpr", type=float, default=0.01, help="target false-positive rate")
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    from steerwatch.data.reference import load_benign
    from steerwatch.extract.library import builtin_vector
    from steerwatch.models import load_model
    from steerwatch.watch.calibrate import calibrate
    from steerwatch.watch.detector import Detector
    from steerwatch.watch.score import score_conversations

    lm = load_model(args.model, progress=False)
    vec, _, path = builtin_vector(lm, args.concept, progress=True, log=print)
    det = Detector.from_vector(vec)
    convs = load_benign()
    scored = score_conversations(lm, convs, [det], progress=True)
    cal, held = scored[0::2], scored[1::2]
    calibrate(lm, [det], convs[0::2], fpr=args.fpr, source="benign[0::2]", scored=cal)
    held_scores = [s.response_score(det.name) for s in held]
    flagged = sum(v is not None and det.flag(v) for v in held_scores)
    row = {"concept": args.concept, "layer": det.layer, "fpr_target": args.fpr,
           "threshold": det.threshold, "achieved_fpr_calibration": det.calibration["achieved_fpr"],
           "n_calibration": det.calibration["n"], "n_held_out": len(held), "flagged_held_out": flagged,
           "held_out_rate": flagged / len(held), "vector": str(path)}
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
