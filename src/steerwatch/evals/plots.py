"""PNG dose-response plots of sweep rows (matplotlib, an optional dependency: ``pip install
steerwatch[plots]``).

One figure per metric: the metric against strength, one line per (setting, layer set) for the
``steer`` and ``prompt+steer`` rows, the unsteered baseline (the strength-0 ``steer`` row) as a
dotted horizontal line, the prompting baseline (the ``prompt`` row) as a dashed horizontal line,
and the recommended strength as a vertical line when a recommendation is given.

The data of every figure is computed first, without matplotlib, as a :class:`PlotSpec`
(:func:`plot_specs`); :func:`figure_for` draws one spec on a ``matplotlib.figure.Figure`` with the
Agg canvas (no pyplot, so no global figure state), and :func:`write_pngs` saves them all. Rows
are what :func:`steerwatch.evals.sweep.sweep` returns (or its JSON Lines file, read back).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError

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
# one colour per layer set (green is kept for the recommended strength)
COLOURS = ("#1f77b4", "#d62728", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


@dataclass
class Series:
    """One line: a setting at one layer set, points sorted by strength."""
    label: str
    setting: str
    layers: tuple[int, ...] | None
    x: list[float]
    y: list[float]


@dataclass
class PlotSpec:
    """Everything one figure shows, as plain data."""
    metric: str
    title: str
    series: list[Series] = field(default_factory=list)
    unsteered: float | None = None      # the strength-0 steer row's value
    prompting: float | None = None      # the prompt row's value
    recommended: float | None = None    # the recommended strength
    recommended_label: str = ""


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
    return f"{setting} @ layers {','.join(map(str, layers))}" if layers else setting


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
        rec_label = f"recommended {chosen:g}" + (f" (layers {','.join(map(str, rec_layers))})" if rec_layers else "")
    base = next((r for r in rows if r["setting"] == "steer" and r["strength"] == 0), None)
    prompt = next((r for r in rows if r["setting"] == "prompt"), None)
    specs = []
    for metric in wanted:
        groups: dict[tuple[str, tuple[int, ...] | None], list[tuple[float, float]]] = {}
        for r in rows:
            if r["setting"] in SERIES_SETTINGS and _is_number(r.get(metric)):
                groups.setdefault((r["setting"], _layers_of(r)), []).append((float(r["strength"]), float(r[metric])))
        series = []
        for (setting, layers), pts in groups.items():
            pts.sort()
            series.append(Series(label=_series_label(setting, layers), setting=setting, layers=layers,
                                 x=[p[0] for p in pts], y=[p[1] for p in pts]))
        specs.append(PlotSpec(
            metric=metric, title=LABELS.get(metric, metric), series=series,
            unsteered=float(base[metric]) if base is not None and _is_number(base.get(metric)) else None,
            prompting=float(prompt[metric]) if prompt is not None and _is_number(prompt.get(metric)) else None,
            recommended=float(chosen) if chosen is not None else None, recommended_label=rec_label))
    return specs


def _matplotlib():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise SteerwatchError("PNG plots need matplotlib, an optional dependency: pip install steerwatch[plots] "
                              f"({e})") from None
    return matplotlib, Figure, FigureCanvasAgg


def figure_for(spec: PlotSpec, *, width: float = 6.0, height: float = 4.0, dpi: int = 100) -> Figure:
    """A Figure (on an Agg canvas, outside pyplot) drawing ``spec``. Its first lines are the
    series in ``spec.series`` order (colour: the layer set; solid: steer; dashed: prompt+steer);
    then the unsteered, prompting and recommended markers, each a Line2D with gid ``unsteered`` /
    ``prompting`` / ``recommended``."""
    _, Figure, FigureCanvasAgg = _matplotlib()
    fig = Figure(figsize=(width, height), dpi=dpi, layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colour_of: dict[tuple[int, ...] | None, str] = {}  # one colour per layer set; the setting sets the style
    for s in spec.series:
        colour = colour_of.setdefault(s.layers, COLOURS[len(colour_of) % len(COLOURS)])
        dashed = s.setting != "steer"
        ax.plot(s.x, s.y, marker="s" if dashed else "o", linestyle="--" if dashed else "-",
                color=colour, label=s.label, gid=f"series:{s.label}")
    if spec.unsteered is not None:
        ax.axhline(spec.unsteered, color="#777777", linestyle=":", linewidth=1.2,
                   label=f"unsteered {spec.unsteered:.4g}", gid="unsteered")
    if spec.prompting is not None:
        ax.axhline(spec.prompting, color="#333333", linestyle="--", linewidth=1.2,
                   label=f"prompting {spec.prompting:.4g}", gid="prompting")
    if spec.recommended is not None:
        ax.axvline(spec.recommended, color="#22aa22", linestyle="-.", linewidth=1.2, label=spec.recommended_label,
                   gid="recommended")
    ax.set_title(spec.title)
    ax.set_xlabel("strength (fraction of the residual-stream norm)")
    ax.set_ylabel(spec.metric)
    ax.grid(True, alpha=0.3)
    if ax.get_lines():
        ax.legend(fontsize="small")
    return fig


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

