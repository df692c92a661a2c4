"""A self-contained HTML report of a sweep: dose-response plots (inline SVG, no plotting library
needed), the recommendation with its evidence, and sample generations. Consumes rows only; the
metrics live in ``sweep.py``."""
from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

PANELS = (("behaviour", "behaviour (P of behaviour-matching answer)"), ("kl", "KL vs. unsteered (nats/token)"),
          ("ppl", "perplexity of reference text"), ("mc_acc", "capability accuracy"),
          (("share_corrected", "share_rejected", "share_agreed", "share_evasive"), "open-ended answers (share)"),
          (("judge_share_corrected", "judge_share_rejected", "judge_share_agreed", "judge_share_evasive"),
           "open-ended answers, LLM judge (share)"),
          ("coherent", "share of coherent answers"), ("repeat_4gram", "repeated 4-grams in answers (mean)"),
          ("answer_ppl_median", "unsteered perplexity of answers (median)"))
TABLE = ("setting", "resolved_layers", "strength", "behaviour", "kl", "ppl", "mc_acc", "share_corrected",
         "share_rejected", "share_agreed", "share_evasive", "judge_share_corrected", "judge_share_rejected",
         "judge_share_agreed", "judge_share_evasive", "judge_unparsed", "judge_rule_agreement", "coherent",
         "answer_ppl_median")
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _series(rows: Sequence[dict[str, Any]], metrics: Sequence[str]) -> dict[str, list[tuple[float, float]]]:
    """Points per line: one line per (setting, layers), and per metric when several are plotted."""
    out: dict[str, list[tuple[float, float]]] = {}
    groups = {(r["setting"], tuple(r["resolved_layers"])) for r in rows if r["setting"] != "prompt"}
    for r in rows:
        if r["setting"] == "prompt":
            continue
        group = f"{r['setting']} @ {','.join(map(str, r['resolved_layers']))}"
        for m in metrics:
            if r.get(m) is None:
                continue
            name = group if len(metrics) == 1 else (_short(m) if len(groups) == 1 else f"{_short(m)} {group}")
            out.setdefault(name, []).append((float(r["strength"]), float(r[m])))
    return {k: sorted(v) for k, v in out.items()}


def _short(metric: str) -> str:
    return metric.removeprefix("judge_").removeprefix("share_")


def svg_plot(rows: Sequence[dict[str, Any]], metric: str | Sequence[str], title: str, *, w: int = 420,
             h: int = 260, marks: dict[str, float] | None = None, chosen: float | None = None) -> str:
    """A line plot of ``metric`` (or several metrics in one panel) against strength."""
    series = _series(rows, [metric] if isinstance(metric, str) else list(metric))
    pts = [p for s in series.values() for p in s] + [(0.0, v) for v in (marks or {}).values()]
    if not pts:
        return f"<p>no data for {html.escape(title)}</p>"
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.08 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad
    L, R, T, B = 55, 10, 28, 36

    def px(x: float) -> float:
        return L + (x - x0) / (x1 - x0) * (w - L - R)

    def py(y: float) -> float:
        return T + (1 - (y - y0) / (y1 - y0)) * (h - T - B)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' "
             f"font-size='11'><text x='{w / 2}' y='16' text-anchor='middle' font-weight='600'>"
             f"{html.escape(title)}</text>",
             f"<line x1='{L}' y1='{h - B}' x2='{w - R}' y2='{h - B}' stroke='#888'/>",
             f"<line x1='{L}' y1='{T}' x2='{L}' y2='{h - B}' stroke='#888'/>"]
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        parts.append(f"<text x='{L - 4}' y='{py(yv) + 4:.1f}' text-anchor='end'>{yv:.3g}</text>")
        xv = x0 + (x1 - x0) * k / 4
        parts.append(f"<text x='{px(xv):.1f}' y='{h - B + 14}' text-anchor='middle'>{xv:.3g}</text>")
    parts.append(f"<text x='{(L + w - R) / 2}' y='{h - 4}' text-anchor='middle'>strength</text>")
    for j, (name, s) in enumerate(series.items()):
        c = COLOURS[j % len(COLOURS)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s)
        parts.append(f"<polyline fill='none' stroke='{c}' stroke-width='2' points='{path}'/>")
        parts += [f"<circle cx='{px(x):.1f}' cy='{py(y):.1f}' r='3' fill='{c}'><title>{html.escape(name)} "
                  f"strength {x:g}: {y:.4g}</title></circle>" for x, y in s]
        parts.append(f"<text x='{w - R - 4}' y='{T + 12 + 12 * j}' text-anchor='end' fill='{c}'>"
                     f"{html.escape(name)}</text>")
    for name, v in (marks or {}).items():
        parts.append(f"<line x1='{L}' x2='{w - R}' y1='{py(v):.1f}' y2='{py(v):.1f}' stroke='#555' "
                     f"stroke-dasharray='5,4'/><text x='{L + 4}' y='{py(v) - 3:.1f}' fill='#555'>"
                     f"{html.escape(name)} {v:.3g}</text>")
    if chosen is not None:
        parts.append(f"<line x1='{px(chosen):.1f}' x2='{px(chosen):.1f}' y1='{T}' y2='{h - B}' stroke='#2a2' "
                     "stroke-dasharray='2,3'/>")
    parts.append("</svg>")
    return "".join(parts)


def _panels(rows: Sequence[dict[str, Any]]) -> list[tuple[str | tuple[str, ...], str]]:
    """The panels whose metrics some row carries (detector columns get one panel each)."""
    def present(m: str) -> bool:
        return any(r.get(m) is not None for r in rows)

    out: list[tuple[str | tuple[str, ...], str]] = [
        (m, label) for m, label in PANELS if any(present(x) for x in ([m] if isinstance(m, str) else m))]
    dets = sorted({k for r in rows for k in r if k.startswith("det_") and not k.endswith("_flagged")})
    return out + [(d, f"detector {d[4:]}: mean response score") for d in dets]


def render_report(rows: Sequence[dict[str, Any]], recommendation: dict[str, Any] | None = None, *,
                  samples: Sequence[dict[str, Any]] = (), title: str = "steerwatch sweep") -> str:
    prompt = next((r for r in rows if r["setting"] == "prompt"), None)
    chosen = (recommendation or {}).get("strength")
    body = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em;max-width:75em}.grid{display:flex;flex-wrap:wrap;"
            "gap:1em}table{border-collapse:collapse}td,th{padding:.25em .6em;border-bottom:1px solid #ddd;"
            "text-align:right}pre{white-space:pre-wrap;background:#f6f6f6;padding:.6em}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            "<p>Dashed lines: the prompting baseline (system-prompt instruction, no vector). Green dotted line: "
            "the recommended strength. Every point was measured in the same run (see the table).</p>",
            "<div class='grid'>"]
    for metric, label in _panels(rows):
        names = [metric] if isinstance(metric, str) else list(metric)
        marks = {("prompting" if len(names) == 1 else f"prompting {_short(m)}"): prompt[m] for m in names
                 if prompt is not None and prompt.get(m) is not None} or None
        body.append(svg_plot(rows, metric, label, marks=marks, chosen=chosen))
    body.append("</div><h2>Recommendation</h2>")
    if recommendation:
        body.append(f"<pre>{html.escape(json.dumps(recommendation, indent=1))}</pre>")
    cols = [c for c in TABLE if any(c in r for r in rows)] + sorted({k for r in rows for k in r
                                                                    if k.startswith("det_")})
    body.append("<h2>All rows</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>")
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "-")
            cells.append(f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    body.append("</table>")
    if samples:
        extra = [c for c in ("setting", "outcome", "judge", "coherent") if any(c in x for x in samples)]
        body.append("<h2>Sample generations</h2><table><tr><th>strength</th>" + "".join(f"<th>{c}</th>" for c in extra)
                    + "<th>prompt</th><th>answer</th></tr>")
        for x in samples:
            sample_cells = "".join(f"<td>{html.escape(str(x.get(c, '')))}</td>" for c in extra)
            answer = x.get("output", x.get("answer", ""))
            body.append(f"<tr><td>{x.get('strength', '')}</td>{sample_cells}<td style='text-align:left'>"
                        f"{html.escape(str(x.get('prompt', '')))}</td><td style='text-align:left'>"
                        f"{html.escape(str(answer))}</td></tr>")
        body.append("</table>")
    body.append("</body></html>")
    return "".join(body)
