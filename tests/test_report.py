"""The HTML dose report: interval arithmetic, the page's content (the recommendation in words, n and
intervals, escaping), and the rendered page in headless Chromium (charts drawn, nothing runs past
the window, a screenshot that is not blank)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from steerwatch.evals.intervals import mean_ci95, median_ci95, ppl_ci95, wilson
from steerwatch.evals.report import render_report
from steerwatch.evals.sweep import recommend

SHARES = ("corrected", "rejected", "agreed", "evasive")


def test_interval_arithmetic():
    lo, hi = wilson(0.5, 20)  # 10 of 20: the textbook Wilson interval
    assert (round(lo, 4), round(hi, 4)) == (0.2993, 0.7007)
    assert wilson(0.0, 20)[0] == 0.0 and round(wilson(0.0, 20)[1], 4) == 0.1611
    assert wilson(0.3, 0) is None
    lo, hi = mean_ci95([1.0, 2.0, 3.0, 4.0])  # sd sqrt(5/3), SE sd/2
    assert (round(lo, 4), round(hi, 4)) == (1.2348, 3.7652)
    assert mean_ci95([1.0]) is None
    assert median_ci95([6.0, 1.0, 5.0, 2.0, 4.0, 3.0]) == [1.0, 6.0]  # n=6: the extremes (96.9 % coverage)
    assert median_ci95(list(range(1, 21))) == [6, 15]  # n=20: 6th and 15th order statistics
    assert median_ci95([1.0, 2.0, 3.0, 4.0, 5.0]) is None  # too few for 95 %
    nlls = [(20.0, 10), (40.0, 10), (10.0, 10), (30.0, 10)]  # ppl exp(2.5)
    lo, hi = ppl_ci95(nlls)
    assert ppl_ci95(nlls) == [lo, hi] and 2.718 < lo < 12.18 < hi < 54.6  # within exp(1)..exp(4), around the estimate


def _sweep_rows() -> list[dict]:
    """A sweep over 4 layer sets with the instruction too: 8 lines per chart, open-ended shares,
    judge and detector columns (a wide rows table)."""
    rows = []
    for j, layers in enumerate(([8, 9, 10, 11, 12, 13], [4, 5, 6], [14, 15], [2, 3, 18, 19, 20])):
        for setting in ("steer", "prompt+steer"):
            for s in (0.0, -0.01, -0.02, -0.04):
                if s == 0 and (setting != "steer" or j):
                    continue
                k = round(-s * 100)
                shares = [0.05 * k, 0.15 + 0.05 * (j % 2), 0.0, 0.0]
                shares[2] = round(0.55 - 0.1 * k, 2) if 0.55 - 0.1 * k > 0 else 0.0
                shares[3] = round(1 - sum(shares[:3]), 2)
                rows.append({"concept": "sycophancy", "setting": setting, "strength": s, "layers": layers,
                             "resolved_layers": layers, "behaviour": 0.50 - 0.01 * k, "n_ab": 50,
                             "behaviour_ci95": [0.45 - 0.01 * k, 0.55 - 0.01 * k], "kl": 0.012 * k * k,
                             "kl_ci95": [0.01 * k * k, 0.014 * k * k], "n_kl": 100, "ppl": 22.5 + k,
                             "ppl_ci95": [21.0 + k, 24.0 + k], "n_ppl": 40, "mc_acc": 0.52 - 0.01 * k, "n_mc": 100,
                             **{f"share_{o}": v for o, v in zip(SHARES, shares)},
                             **{f"judge_share_{o}": v for o, v in zip(SHARES, shares)}, "judge_unparsed": 0.0,
                             "judge_rule_agreement": 0.9, "n_judged": 20, "coherent": 1.0 - 0.05 * (k == 4),
                             "answer_ppl_median": 1.5 + 0.1 * k, "n_open": 20, "det_sycophancy": 0.3 - 0.1 * k,
                             "det_sycophancy_ci95": [0.2 - 0.1 * k, 0.4 - 0.1 * k], "det_sycophancy_flagged": 0.1})
    rows.append({**rows[0], "setting": "prompt", "strength": 0.0, "kl": None, "ppl": None, "share_corrected": 0.15,
                 "share_agreed": 0.4})
    return rows


SAMPLES = [{"setting": "steer", "strength": -0.01, "prompt": "Is the earth flat? <b>yes</b>", "outcome": "corrected",
            "coherent": True, "answer": "No. " + "Averyveryverylongwordwithoutanyspaces" * 12}]


@pytest.fixture(scope="module")
def report() -> tuple[str, list[dict]]:
    """The page, rendered once for the tests below (17 charts of 8 lines: a few seconds)."""
    rows = _sweep_rows()
    rec = recommend(rows, direction=1, objective="share_corrected+share_rejected", max_kl=0.1)
    return render_report(rows, rec, samples=SAMPLES, title="sycophancy <script>alert(1)</script>"), rows


def test_report_page_content(report):
    page, rows = report
    assert "<script>alert(1)</script>" not in page and "sycophancy &lt;script&gt;" in page  # autoescaped
    assert "&lt;b&gt;yes&lt;/b&gt;" in page
    # the recommendation in words, with the evidence and the rejected doses: no JSON dump
    assert "Steer at strength -0.02 on layers 4-6: the largest shift of share_corrected+share_rejected" in page
    assert '"budget"' not in page and "{" not in page.split(">Recommendation</h2>", 1)[1].split("<h2", 1)[0]
    assert "KL 0.192 &gt; 0.1" in page  # -0.04 on layers 8-13, rejected
    assert "A/B items: <b>50</b>" in page and "open-ended prompts: <b>20</b>" in page
    # 16 charts (behaviour, kl, ppl, mc_acc, 8 shares, judge agreement, coherent, answer ppl, 2 detector)
    charts = re.findall(r'<figure class="chart" id="chart-([^"]+)">', page)
    assert len(charts) == 17 and charts[:4] == ["behaviour", "kl", "ppl", "mc_acc"]
    svgs = page.split('<figure class="chart"')[1:]
    # 8 lines: steer at layers 8-13 has the strength-0 point too (4 points), the 7 others 3 each
    assert [s.count("<title>") for s in svgs[:4]] == [4 + 7 * 3] * 4
    kl = svgs[1]
    assert "strength -0.02: kl 0.048; 95 % interval 0.04 to 0.056 (mean ± 1.96 SE over prompts); n = 100" in kl
    assert "kl: 95 % intervals: mean ± 1.96 SE over prompts; n = 100 per point." in kl
    share = svgs[charts.index("share_agreed")]
    assert "95 % intervals: Wilson; n = 20 per point." in share
    table = page.split('<table class="rows">', 1)[1].split("</table>", 1)[0]
    assert page.count('<div class="scroll"><table class="rows">') == 1  # the wide table scrolls in its box
    assert table.count("<tr") == len(rows) + 1 and "<th" in table and ">n_open<" in table
    assert ">0.150<" in table and 'title="95 % 0.05237 to 0.3604, n=20">0.150<' in table


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium package")
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    return exe


def _browser(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--no-first-run",
                           f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,2000", *args],
                          capture_output=True, text=True, timeout=120)


def test_report_in_headless_chromium(tmp_path, report):
    """The page as a browser draws it: every chart has a visible size, nothing runs past the
    window's width (the 30-column table and a 400-character word scroll in their boxes), and the
    screenshot shows a page, not a blank or an error."""
    exe = _chromium()
    page = report[0]
    html = tmp_path / "r.html"
    html.write_text(page, encoding="utf-8")
    shot = tmp_path / "r.png"
    res = _browser(exe, tmp_path, f"--screenshot={shot}", "--dump-dom", html.as_uri())  # the DOM after the script ran
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    root = re.search(r"<html[^>]*>", res.stdout).group(0)
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', root))
    assert int(attrs["charts-shown"]) == 17 == res.stdout.count("<svg")
    assert int(attrs["scroll-width"]) <= int(attrs["client-width"]) == 1280
    import matplotlib.image
    import numpy as np

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape == (2000, 1280, 3)
    colours = np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, lines of 8 colours, bands: not a blank or a one-colour error page
    white = (img > 0.97).all(-1).mean()
    assert 0.3 < white < 0.97  # a light page with something drawn on most of it
