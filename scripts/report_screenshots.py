"""The example dose report in the docs and its screenshots.

Renders docs/examples/syc_sweep.jsonl (the rows of the CAA sycophancy sweep in docs/results.md) and
docs/examples/syc_sweep.answers.jsonl (the answers that report showed) as
docs/examples/syc_sweep.html, with the recommendation that sweep made (objective
share_corrected+share_rejected, direction +1, KL <= 0.1, capability drop <= 0.02), then takes two
headless-Chromium screenshots of it at 1280 pixels wide: the top of the page (docs/img/report.png)
and the rows table (docs/img/report-rows.png), saved with a 256-colour palette to keep them small.

    python scripts/report_screenshots.py

Needs Debian's chromium (apt-get install chromium). A few seconds.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image

from steerwatch.evals.report import render_report
from steerwatch.evals.sweep import recommend

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES, IMG = ROOT / "docs" / "examples", ROOT / "docs" / "img"


def chromium(exe: str, page: Path, *args: str, height: int = 2000) -> str:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                               f"--user-data-dir={profile}", f"--window-size=1280,{height}", *args, page.as_uri()],
                              check=True, capture_output=True, text=True, timeout=120).stdout


def section_top(exe: str, page: Path, element_id: str) -> int:
    """Where the element starts on the page (CSS pixels), read from a copy of the page."""
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text(encoding="utf-8").replace(
        "</body>", f"<script>document.documentElement.setAttribute('data-top', String(Math.round("
                   f"document.getElementById('{element_id}').getBoundingClientRect().top)));</script></body>"),
        encoding="utf-8")
    try:
        dom = chromium(exe, probe, "--dump-dom")
    finally:
        probe.unlink()
    return int(re.search(r'data-top="(\d+)"', dom).group(1))  # type: ignore[union-attr]


def screenshot(exe: str, page: Path, out: Path, *, top: int = 0, height: int = 2000) -> None:
    """The page from ``top`` down, ``height`` pixels, 1280 wide, as a 256-colour PNG."""
    chromium(exe, page, f"--screenshot={out}", height=top + height)
    Image.open(out).convert("RGB").crop((0, top, 1280, top + height)).quantize(256).save(out, optimize=True)


def main() -> None:
    exe = shutil.which("chromium")
    if exe is None:
        raise SystemExit("needs Debian's chromium: apt-get install chromium")
    rows = [json.loads(x) for x in (EXAMPLES / "syc_sweep.jsonl").read_text().splitlines() if x.strip()]
    answers = [json.loads(x) for x in (EXAMPLES / "syc_sweep.answers.jsonl").read_text().splitlines() if x.strip()]
    rec = recommend(rows, direction=1, objective="share_corrected+share_rejected", max_kl=0.1,
                    max_capability_drop=0.02)
    page = EXAMPLES / "syc_sweep.html"
    page.write_text(render_report(rows, rec, samples=answers, title="sycophancy on Qwen2.5-Coder-0.5B-Instruct"),
                    encoding="utf-8")
    IMG.mkdir(exist_ok=True)
    screenshot(exe, page, IMG / "report.png")
    screenshot(exe, page, IMG / "report-rows.png", top=section_top(exe, page, "rows") - 16, height=1100)
    for p in (page, IMG / "report.png", IMG / "report-rows.png"):
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
