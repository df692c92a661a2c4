"""Issue 18's harness: deception detectors judged on the model's own answers.

Step ``generate`` answers every source's prompts with the embedded model (greedy, unsteered) and
labels each answer from its content (:mod:`steerwatch.evals.deception`); one file per source,
``OUT/responses-SOURCE.jsonl`` (a source already there is skipped, so the run resumes). The known
facts come from the knowledge check (``OUT/knowledge.json``, computed once).

Step ``eval`` (``steerwatch deception eval`` does the same from the CLI) fits the probes on dev
only, scores every detector and black-box baseline on every source, and writes ``OUT/eval.json``.

    python scripts/deception_figures.py generate --sources instructed,sycophancy,talk,control
    python scripts/deception_figures.py generate --sources roleplay
    python scripts/deception_figures.py eval
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from steerwatch.data.reference import load_benign
from steerwatch.evals import deception as dc
from steerwatch.evals.bait import knowledge_check, load_bait
from steerwatch.models import load_model


def known_ids(lm, out: Path) -> set[str]:
    path = out / "knowledge.json"
    if path.exists():
        return set(json.loads(path.read_text()))
    rows = knowledge_check(lm, load_bait(), batch_size=16, progress=True)
    ids = sorted(r["id"] for r in rows if r["knows"])
    path.write_text(json.dumps(ids))
    return set(ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["generate", "eval"])
    ap.add_argument("--sources", default=",".join(dc.SOURCES))
    ap.add_argument("--out", type=Path, default=Path("out/deception"))
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lm = load_model("default")
    if args.step == "generate":
        known = known_ids(lm, args.out)
        print(f"{len(known)} known facts")
        for src in args.sources.split(","):
            path = args.out / f"responses-{src}.jsonl"
            if path.exists():
                print(f"{src}: exists, skipped")
                continue
            t = time.time()
            prompts = dc.deception_prompts(
                [src], bait=load_bait(), known=known,
                scenarios=dc.load_roleplay() if src == "roleplay" else (),
                talk=dc.load_talk() if src == "talk" else (),
                control=dc.control_prompts(load_benign()) if src == "control" else ())
            rows = dc.generate_responses(lm, prompts, max_new_tokens=args.max_new_tokens, progress=True)
            dc.save_responses(rows, path)
            print(f"{src}: {len(rows)} answers in {time.time() - t:.0f} s")
            print(dc.counts_summary(rows), flush=True)


if __name__ == "__main__":
    main()
