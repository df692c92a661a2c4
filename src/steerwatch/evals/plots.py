"""Dose-response plots of sweep rows (matplotlib): the PNG files (``--png DIR``) and the charts of
the HTML report (the same figures, as inline SVG).

One figure per metric: the metric against strength, one line per (setting, layer set) for the
``steer`` and ``prompt+steer`` rows (every line its own colour and marker; solid: steer, dashed:
prompt+steer), each point with its 95 % interval and its ``n`` (:func:`point_interval`), the
unsteered baseline (the strength-0 ``steer`` row) as a dotted horizontal line, the prompting
baseline (the ``prompt`` row) as a dashed horizontal line with its interval as a band, and the
recommended strength as a vertical line when a recommendation is given. The y axis never leaves
the metric's possible values (:func:`metric_bounds`: shares within 0-1, KL >= 0, perplexity >= 1);
the legend sits below the plotting area.

The data of every figure is computed first, without matplotlib, as a :class:`PlotSpec`
(:func:`plot_specs`); :func:`figure_for` draws one spec on a ``matplotlib.figure.Figure`` with the
Agg canvas (no pyplot, so no global figure state), :func:`write_pngs` saves them all and
:func:`svg_for` returns one as SVG text with a tooltip on every point. Rows are what
:func:`steerwatch.evals.sweep.sweep` returns (or its JSON Lines file, read back).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from .intervals import NO_INTERVAL, metric_bounds, point_interval

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

LABELS = {"behaviour": "behaviour (P of behaviour-matching answer)", "kl": "KL vs. unsteered (nats/token)",
          "ppl": "perplexity of reference text", "mc_acc": "capability accuracy",
          "share_corrected": "open-ended: share corrected", "share_rejected": "open-ended: share rejected",
          "share_agreed": "open-ended: share agreed", "share_evasive": "open-ended: share evasive",
          "coherent": "open-ended: share of coherent answers", "repeat_4gram": "open-ended: repeated 4-grams",
          "distinct_2": "open-ended: distinct bigrams", "answer_words": "open-ended: words per answer",
          "answer_ppl": "open-ended: unsteered perplexity of the answers",
          "answer_ppl_median": "open-ended: median unsteered perplexity of the answers",
          **{f"judge_share_{o}": f"open-ended, LLM judge: share {o}" for o in ("corrected", "rejected", "agreed",
                                                                                "evasive")},
          "judge_unparsed": "open-ended, LLM judge: share unparsed",
          "judge_rule_agreement": "open-ended: judge-rule agreement"}
# the sweep's own metrics first, in this order; any other numeric column after them, sorted
PREFERRED = ("behaviour", "kl", "ppl", "mc_acc", "share_corrected", "share_rejected", "share_agreed",
             "share_evasive", "judge_share_corrected", "judge_share_rejected", "judge_share_agreed",
             "judge_share_evasive", "judge_unparsed", "judge_rule_agreement", "coherent", "repeat_4gram", "distinct_2",
             "answer_words", "answer_ppl", "answer_ppl_median")
# numeric columns that are not metrics: the dose itself, settings, and the item counts (n_*)
NOT_METRICS = frozenset({"strength", "max_new_tokens"})
SERIES_SETTINGS = ("steer", "prompt+steer")
# one colour per line (10 that tell apart; green is kept for the recommended strength, grey for the
# unsteered line) and one marker per line, so 10 lines differ in both and 100 in one of the two
COLOURS = ("#1f77b4", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
           "#ad494a")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
RECOMMENDED_COLOUR = "#2ca02c"
def metric_title(metric: str) -> str:
    """A metric's plot title."""
    if metric in LABELS:
        return LABELS[metric]
    if metric.startswith("det_"):
        name = metric[4:]
        return f"detector {name[:-8]}: share of answers flagged" if name.endswith("_flagged") else \
            f"detector {name}: mean response score"
    return metric


def layers_label(layers: Sequence[int]) -> str:
    """``[8, 9, 10, 12]`` -> ``"8-10,12"``."""
    out: list[str] = []
    xs = sorted(set(layers))
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if j == i else f"{xs[i]}-{xs[j]}" if j > i + 1 else f"{xs[i]},{xs[j]}")
        i = j + 1
    return ",".join(out)


@dataclass
class Series:
    """One line: a setting at one layer set, points sorted by strength, each with its 95 % interval
    (``lo``/``hi``, None where there is none) and its ``n``."""
    label: str
    setting: str
    layers: tuple[int, ...] | None
    x: list[float]
    y: list[float]
    lo: list[float | None] = field(default_factory=list)
    hi: list[float | None] = field(default_factory=list)
    n: list[int | None] = field(default_factory=list)

    def n_label(self) -> str:
        ns = sorted({k for k in self.n if k is not None})
        return "" if not ns else f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


@dataclass
class PlotSpec:
    """Everything one figure shows, as plain data."""
    metric: str
    title: str
    series: list[Series] = field(default_factory=list)
    unsteered: float | None = None      # the strength-0 steer row's value
    prompting: float | None = None      # the prompt row's value
    prompting_ci: tuple[float, float] | None = None
    prompting_n: int | None = None
    recommended: float | None = None    # the recommended strength
    recommended_label: str = ""
    interval: str = NO_INTERVAL         # how the points' intervals were made
    bounds: tuple[float | None, float | None] = (None, None)  # the metric's possible values


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_rows(rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        raise SteerwatchError("no sweep rows to plot: run `steerwatch sweep` first")
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or "setting" not in r or "strength" not in r:
            raise SteerwatchError(f"row {i} is not a sweep row (it needs 'setting' and 'strength'): {r!r:.120}")
        if not _is_number(r["strength"]):
            raise SteerwatchError(f"row {i}: strength must be a number, got {r['strength']!r}")


def numeric_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The metric columns present in the rows: every numeric field except the strength and the
    item counts (``n_*``); the sweep's own metrics first."""
    found: set[str] = set()
    for r in rows:
        for k, v in r.items():
            if _is_number(v) and k not in NOT_METRICS and not k.startswith("n_"):
                found.add(k)
    return [m for m in PREFERRED if m in found] + sorted(found - set(PREFERRED))


def _layers_of(r: dict[str, Any]) -> tuple[int, ...] | None:
    layers = r.get("resolved_layers") or r.get("layers")
    return tuple(int(x) for x in layers) if layers else None


def _series_label(setting: str, layers: tuple[int, ...] | None) -> str:
    return f"{setting} @ layers {layers_label(layers)}" if layers else setting


def plot_specs(rows: Sequence[dict[str, Any]], *, recommendation: dict[str, Any] | None = None,
               metrics: Sequence[str] | None = None) -> list[PlotSpec]:
    """The data of one figure per metric (``metrics``: all numeric columns when None; a named
    metric that no row carries is an error naming the ones present)."""
    _check_rows(rows)
    present = numeric_metrics(rows)
    if metrics is None:
        wanted = present
    else:
        wanted = list(dict.fromkeys(metrics))
        missing = [m for m in wanted if m not in present]
        if missing:
            raise SteerwatchError(f"no row has a numeric {', '.join(map(repr, missing))}; metrics present: "
                                  f"{', '.join(present) or 'none'}")
    if not wanted:
        raise SteerwatchError("the rows carry no numeric metric to plot (expected e.g. behaviour, kl, ppl, mc_acc)")
    chosen = (recommendation or {}).get("strength")
    rec_layers = (recommendation or {}).get("layers")
    rec_label = ""
    if chosen is not None:
        rec_label = f"recommended {chosen:g}" + (f" (layers {layers_label(rec_layers)})" if rec_layers else "")
    base = next((r for r in rows if r["setting"] == "steer" and r["strength"] == 0), None)
    prompt = next((r for r in rows if r["setting"] == "prompt"), None)
    specs = []
    for metric in wanted:
        groups: dict[tuple[str, tuple[int, ...] | None], list[dict[str, Any]]] = {}
        for r in rows:
            if r["setting"] in SERIES_SETTINGS and _is_number(r.get(metric)):
                groups.setdefault((r["setting"], _layers_of(r)), []).append(r)
        series, methods = [], []
        for (setting, layers), group in groups.items():
            group = sorted(group, key=lambda r: float(r["strength"]))
            cis = [point_interval(r, metric) for r in group]
            methods += [how for ci, _, how in cis if ci is not None]
            series.append(Series(label=_series_label(setting, layers), setting=setting, layers=layers,
                                 x=[float(r["strength"]) for r in group], y=[float(r[metric]) for r in group],
                                 lo=[ci[0] if ci else None for ci, _, _ in cis],
                                 hi=[ci[1] if ci else None for ci, _, _ in cis], n=[n for _, n, _ in cis]))
        has_prompt = prompt is not None and _is_number(prompt.get(metric))
        p_ci, p_n, _ = point_interval(prompt, metric) if has_prompt else (None, None, "")  # type: ignore[arg-type]
        specs.append(PlotSpec(
            metric=metric, title=metric_title(metric), series=series,
            unsteered=float(base[metric]) if base is not None and _is_number(base.get(metric)) else None,
            prompting=float(prompt[metric]) if has_prompt else None,  # type: ignore[index]
            prompting_ci=p_ci, prompting_n=p_n,
            recommended=float(chosen) if chosen is not None else None, recommended_label=rec_label,
            interval="; ".join(dict.fromkeys(methods)) or NO_INTERVAL, bounds=metric_bounds(metric)))
    return specs


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise SteerwatchError("plots need matplotlib: pip install steerwatch[plots] "
                              f"({e})") from None
    return matplotlib, Figure, FigureCanvasAgg


def _offsets(k: int) -> list[float]:
    """Sideways shifts (points) of k lines, so their intervals at one strength do not hide each other."""
    if k < 2:
        return [0.0] * k
    step = min(4.0, 28.0 / (k - 1))
    return [(i - (k - 1) / 2) * step for i in range(k)]


def _style(i: int, setting: str) -> tuple[str, str, Any]:
    """(colour, marker, line style) of the i-th line."""
    return COLOURS[i % len(COLOURS)], MARKERS[(i + i // len(COLOURS)) % len(MARKERS)], \
        "-" if setting == "steer" else "--"


def axis_limits(spec: PlotSpec) -> tuple[tuple[float, float], tuple[float, float]] | None:
    """((x0, x1), (y0, y1)) that show every point, interval and marker, the y range clipped to the
    metric's possible values; None when the spec has nothing to show."""
    ys = [v for s in spec.series for v in (*s.y, *s.lo, *s.hi) if v is not None]
    ys += [v for v in (spec.unsteered, spec.prompting, *(spec.prompting_ci or ())) if v is not None]
    xs = [x for s in spec.series for x in s.x] + ([spec.recommended] if spec.recommended is not None else [])
    if not ys:
        return None
    y0, y1 = min(ys), max(ys)
    pad = 0.06 * (y1 - y0) if y1 - y0 > 1e-12 else max(0.05 * abs(y0), 0.05)
    y0, y1 = y0 - pad, y1 + pad
    low, high = spec.bounds
    y0, y1 = max(y0, low) if low is not None else y0, min(y1, high) if high is not None else y1
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    xpad = 0.07 * (x1 - x0) if x1 - x0 > 1e-12 else 0.05 * max(abs(x0), 1e-3)
    return (x0 - xpad, x1 + xpad), (y0, y1)


def figure_for(spec: PlotSpec, *, width: float = 6.0, height: float | None = None, dpi: int = 100,
               id_prefix: str = "", interval_note: bool = True) -> Figure:
    """A Figure (on an Agg canvas, outside pyplot) drawing ``spec``. Its lines: per series, the
    line (gid ``series:LABEL``) then one marker per point (gid ``pt-{id_prefix}{i}-{k}``; the
    intervals are a LineCollection with gid ``ci:LABEL``); then the unsteered, prompting and
    recommended markers, each a Line2D with gid ``unsteered`` / ``prompting`` / ``recommended``.
    Every series has its own colour and marker (solid: steer; dashed: prompt+steer); lines are
    shifted sideways by a few points so their intervals stay apart. The legend sits below the
    axes. ``height``: default 3.6 inches plus the legend's rows. ``interval_note``: say under the
    x axis how the intervals were made (the HTML report says it in the caption instead)."""
    from matplotlib.lines import Line2D
    from matplotlib.transforms import ScaledTranslation

    _, Figure, FigureCanvasAgg = _matplotlib()
    n_entries = len(spec.series) + sum(v is not None for v in (spec.unsteered, spec.prompting, spec.recommended))
    ncols = 2 if n_entries > 2 else max(n_entries, 1)
    legend_rows = -(-n_entries // ncols)
    height = height or 3.6 + 0.2 * legend_rows
    fig = Figure(figsize=(width, height), dpi=dpi)  # fixed margins: a layout engine doubles the drawing time
    bottom = 0.62 + (0.16 if interval_note else 0.0) + 0.2 * legend_rows  # inches: ticks, x label, legend
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, top=1 - 0.4 / height, bottom=bottom / height)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles: list[Any] = []
    for i, (s, dx) in enumerate(zip(spec.series, _offsets(len(spec.series)))):
        colour, marker, style = _style(i, s.setting)
        shift = ax.transData + ScaledTranslation(dx / 72, 0, fig.dpi_scale_trans)
        ax.plot(s.x, s.y, linestyle=style, color=colour, linewidth=1.5, transform=shift, gid=f"series:{s.label}")
        ci = [(x, lo, hi) for x, lo, hi in zip(s.x, s.lo, s.hi) if lo is not None and hi is not None]
        if ci:
            ax.vlines([c[0] for c in ci], [c[1] for c in ci], [c[2] for c in ci], colors=colour, linewidth=1.0,
                      transform=shift, gid=f"ci:{s.label}")
            ax.plot([c[0] for c in ci] * 2, [c[1] for c in ci] + [c[2] for c in ci], marker="_", markersize=5,
                    linestyle="none", color=colour, transform=shift, gid=f"caps:{s.label}")
        for k, (x, y) in enumerate(zip(s.x, s.y)):
            ax.plot([x], [y], marker=marker, markersize=5.5, color=colour, linestyle="none", transform=shift,
                    clip_on=False, zorder=3, gid=f"pt-{id_prefix}{i}-{k}")
        n = s.n_label()
        handles.append(Line2D([], [], color=colour, marker=marker, linestyle=style,
                              label=f"{s.label} ({n})" if n else s.label))
    if spec.unsteered is not None:
        handles.append(ax.axhline(spec.unsteered, color="#777777", linestyle=":", linewidth=1.2,
                                  label=f"unsteered {spec.unsteered:.4g}", gid="unsteered"))
    if spec.prompting is not None:
        label = f"prompting {spec.prompting:.4g}"
        if spec.prompting_ci is not None:
            ax.axhspan(*spec.prompting_ci, color="#333333", alpha=0.08, linewidth=0, gid="prompting-ci")
            label += f" [{spec.prompting_ci[0]:.3g}, {spec.prompting_ci[1]:.3g}]"
        if spec.prompting_n:
            label += f" (n={spec.prompting_n})"
        handles.append(ax.axhline(spec.prompting, color="#333333", linestyle="--", linewidth=1.2, label=label,
                                  gid="prompting"))
    if spec.recommended is not None:
        handles.append(ax.axvline(spec.recommended, color=RECOMMENDED_COLOUR, linestyle="-.", linewidth=1.4,
                                  label=spec.recommended_label, gid="recommended"))
    limits = axis_limits(spec)
    if limits is not None:
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
    ax.set_title(spec.title, fontsize=11)
    ax.set_xlabel("strength (fraction of the residual-stream norm)"
                  + (f"\nbars: 95 % interval, {spec.interval}" if interval_note else ""), fontsize=9)
    ax.set_ylabel(spec.metric)
    ax.grid(True, alpha=0.3)
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.04 / height), ncols=ncols,
                   fontsize="small", frameon=False, borderaxespad=0.0)
    return fig


def point_tooltips(spec: PlotSpec, id_prefix: str = "") -> dict[str, str]:
    """The hover text of every point, by the gid :func:`figure_for` gives its marker."""
    out = {}
    for i, s in enumerate(spec.series):
        for k, (x, y) in enumerate(zip(s.x, s.y)):
            tip = f"{s.label}, strength {x:+g}: {spec.metric} {y:.4g}".replace("strength +0:", "strength 0:")
            if s.lo[k] is not None and s.hi[k] is not None:
                tip += f"; 95 % interval {s.lo[k]:.4g} to {s.hi[k]:.4g} ({spec.interval})"
            else:
                tip += "; no interval"
            if s.n[k] is not None:
                tip += f"; n = {s.n[k]}"
            out[f"pt-{id_prefix}{i}-{k}"] = tip
    return out


def svg_for(spec: PlotSpec, *, id_prefix: str = "", width: float = 6.0) -> str:
    """``spec``'s figure as inline SVG (text kept as text, no fixed size: it fills its container),
    every point with a ``<title>`` tooltip (value, interval, n). ``id_prefix`` keeps ids unique when
    several figures share a page."""
    import html
    import io

    matplotlib, _, _ = _matplotlib()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"steerwatch-{id_prefix}"}):
        fig = figure_for(spec, width=width, id_prefix=id_prefix, interval_note=False)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # no XML declaration or DOCTYPE inside HTML
    text = re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"',
                  lambda m: f'<svg {m.group(1)}role="img" aria-label="{html.escape(spec.title)}"', text, count=1)
    text = re.sub(r'<metadata>.*?</metadata>\s*', "", text, count=1, flags=re.S)
    text = re.sub(r'<g id="(series|ci|caps):[^"]*">', lambda m: f'<g class="{m.group(1)}">', text)
    used = set(re.findall(r'#([^)"\s]+)', text))  # ids something refers to (clip paths, markers)
    text = re.sub(r' id="([^"]+)"', lambda m: m.group(0) if m.group(1) in used or m.group(1).startswith("pt-")
                  else "", text)
    for gid, tip in point_tooltips(spec, id_prefix).items():
        text = text.replace(f'<g id="{gid}">', f'<g id="{gid}" class="pt"><title>{html.escape(tip)}</title>', 1)
    return text


def _filename(metric: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("._") or "metric"
    return f"{name}.png"


def write_pngs(rows: Sequence[dict[str, Any]], out_dir: str | Path, *, recommendation: dict[str, Any] | None = None,
               metrics: Sequence[str] | None = None, dpi: int = 100) -> list[Path]:
    """Write one PNG per metric (``<metric>.png``) into ``out_dir`` (created if needed); returns
    the paths in metric order. ``metrics``: the columns to plot (default: every numeric one)."""
    specs = plot_specs(rows, recommendation=recommendation, metrics=metrics)
    _matplotlib()  # fail before creating the folder when matplotlib is missing
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise SteerwatchError(f"{out} exists and is not a folder: give a folder for the PNG plots")
    out.mkdir(parents=True, exist_ok=True)
    names = [_filename(s.metric) for s in specs]
    if len(set(names)) != len(names):
        raise SteerwatchError(f"metric names collide as file names: {', '.join(s.metric for s in specs)}")
    paths = []
    for spec, name in zip(specs, names):
        fig = figure_for(spec, dpi=dpi)
        path = out / name
        fig.savefig(path, format="png")
        paths.append(path)
    return paths

