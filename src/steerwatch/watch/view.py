"""Seeing scores: a self-contained HTML page with every token tinted by its score (one row per
detector under each message), and a terminal rendering of the same.

Colour scale: a calibrated detector's scores are shown relative to its threshold, in units of the
calibration data's standard deviation (red above the threshold, blue well below); an uncalibrated
one relative to the conversation's own mean and spread.
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .detector import Detector
    from .score import ScoredConversation


def _scale(sc: ScoredConversation, det: Detector) -> tuple[float, float]:
    vals = [v for v, k in zip(sc.scores[det.name], sc.msg_index) if k >= 0]
    if det.threshold is not None and det.calibration.get("score_std"):
        return float(det.threshold), float(det.calibration["score_std"])
    mean = sum(vals) / max(1, len(vals))
    std = (sum((v - mean) ** 2 for v in vals) / max(1, len(vals))) ** 0.5 or 1.0
    return mean, std


def _z(v: float, centre: float, spread: float) -> float:
    return max(-1.0, min(1.0, (v - centre) / (2 * spread)))


def _rgba(z: float) -> str:
    return f"rgba(220,40,40,{z:.2f})" if z > 0 else f"rgba(40,90,220,{-z:.2f})"


def _token_texts(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([t]) for t in ids]


def render_html(scored: Sequence[ScoredConversation], detectors: Sequence[Detector], tokenizer: Any, *,
                title: str = "steerwatch scores") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
             ".conv{border:1px solid #ccc;border-radius:6px;padding:1em;margin:1em 0}"
             ".msg{margin:.6em 0}.role{font-weight:600;color:#555;font-size:.85em;text-transform:uppercase}"
             ".row{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.6;margin:.2em 0}"
             ".det{display:inline-block;min-width:9em;color:#777;font-size:.8em}"
             ".flag{color:#b00;font-weight:700}.tok{border-radius:2px}"
             "table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #eee}"
             "</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             "<p>Each token is tinted by its detector score: red above the detector's threshold "
             "(calibrated detectors) or above the conversation's mean (uncalibrated), blue below. "
             "Hover a token to see its score.</p>"]
    for sc in scored:
        head = f"<h2>{html.escape(sc.id)}" + (f" <small>label {sc.label}</small>" if sc.label is not None else "")
        parts.append(f"<div class='conv'>{head}</h2><table><tr><th>detector</th><th>layer</th><th>response score"
                     "</th><th>threshold</th><th></th></tr>")
        for det in detectors:
            s = sc.response_score(det.name, det.aggregate)
            flagged = det.flagged(s)
            parts.append(f"<tr><td>{html.escape(det.name)}</td><td>{det.layer}</td>"
                         f"<td>{'-' if s is None else f'{s:.3f}'}</td>"
                         f"<td>{'-' if det.threshold is None else f'{det.threshold:.3f}'}</td>"
                         f"<td class='flag'>{'FLAGGED' if flagged else ''}</td></tr>")
        parts.append("</table>")
        texts = _token_texts(tokenizer, sc.token_ids)
        scales = {det.name: _scale(sc, det) for det in detectors}
        for k, role in enumerate(sc.roles):
            idx = [i for i, m in enumerate(sc.msg_index) if m == k]
            if not idx:
                continue
            parts.append(f"<div class='msg'><div class='role'>{html.escape(role)} · message {k}</div>")
            for det in detectors:
                c, w = scales[det.name]
                vals = sc.scores[det.name]
                toks = "".join(f"<span class='tok' style='background:{_rgba(_z(vals[i], c, w))}' "
                               f"title='{vals[i]:.3f}'>{html.escape(texts[i])}</span>" for i in idx)
                parts.append(f"<div class='row'><span class='det'>{html.escape(det.name)}</span>{toks}</div>")
            parts.append("</div>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "".join(parts)


def score_summary(sc: ScoredConversation, detectors: Sequence[Detector]) -> list[dict[str, Any]]:
    """Per detector, the numbers a view shows above the tokens: layer, aggregate, the response score,
    the threshold (None: uncalibrated) and whether the response is flagged."""
    rows = []
    for det in detectors:
        s = sc.response_score(det.name, det.aggregate)
        rows.append({"detector": det.name, "layer": det.layer, "aggregate": det.aggregate, "score": s,
                     "threshold": det.threshold, "flagged": det.flagged(s)})
    return rows


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def render_terminal(sc: ScoredConversation, detectors: Sequence[Detector], tokenizer: Any, *,
                    tokens: bool = False):
    """A rich renderable: a table of each detector's response score, threshold and flag, then each
    message's tokens tinted by each detector's score; with ``tokens``, every token's scores too
    (``▲``: above the detector's threshold)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    texts = _token_texts(tokenizer, sc.token_ids)
    summary = Table("detector", "layer", "response score", "threshold", "flag",
                    title=None if sc.label is None else f"label {sc.label}", title_justify="left")
    for r in score_summary(sc, detectors):
        flag = (Text("FLAGGED", style="bold red") if r["flagged"] else
                Text("uncalibrated", style="dim") if r["threshold"] is None else "-")
        summary.add_row(r["detector"], f"{r['layer']:d}", f"{_num(r['score'])} ({r['aggregate']})",
                        _num(r["threshold"]), flag)
    lines: list[Any] = [summary]
    for k, role in enumerate(sc.roles):
        idx = [i for i, m in enumerate(sc.msg_index) if m == k]
        if not idx:
            continue
        lines.append(Text(f"{role} · message {k}", style="bold"))
        for det in detectors:
            c, w = _scale(sc, det)
            t = Text(f"{det.name:>12} ", style="dim")
            for i in idx:
                z = _z(sc.scores[det.name][i], c, w)
                level = int(abs(z) * 4)
                colour = ["", "on #5f0000", "on #870000", "on #af0000", "on #d70000"][level] if z > 0 else \
                    ["", "on #00005f", "on #000087", "on #0000af", "on #0000d7"][level]
                t.append(texts[i].replace("\n", "⏎"), style=colour)
            lines.append(t)
        if tokens:
            lines.append(_token_table(sc, detectors, texts, idx))
    return Group(*lines)


def _token_table(sc: ScoredConversation, detectors: Sequence[Detector], texts: list[str], idx: list[int]):
    from rich.table import Table
    from rich.text import Text

    table = Table("#", "token", *[d.name for d in detectors], box=None, pad_edge=False)
    for i in idx:
        cells: list[Any] = []
        for det in detectors:
            v = sc.scores[det.name][i]
            above = det.threshold is not None and v > det.threshold
            cells.append(Text(f"{v:+.3f} ▲", style="red") if above else f"{v:+.3f}")
        table.add_row(f"{i:d}", repr(texts[i])[1:-1], *cells)
    return table
