"""steerwatch.evals.plots: the plotted data is exactly the rows, one valid PNG per metric, clear
errors for missing metrics, bad rows and a missing matplotlib."""
from __future__ import annotations

import struct
import sys

import pytest

from steerwatch.errors import SteerwatchError
from steerwatch.evals.intervals import NO_INTERVAL, point_interval
from steerwatch.evals.plots import figure_for, numeric_metrics, plot_specs, svg_for, write_pngs


def _row(setting, s, layers, behaviour, *, kl=None, ppl=None, acc=0.6, **extra):
    r = {"concept": "honesty", "setting": setting, "strength": s, "layers": layers,
         "resolved_layers": layers or [3], "behaviour": behaviour, "mc_acc": acc, "n_ab": 10, "n_mc": 20}
    if kl is not None:
        r.update(kl=kl, ppl=ppl)
    r.update(extra)
    return r


ROWS = [
    _row("steer", 0.0, None, 0.30, kl=0.0, ppl=10.0, acc=0.60, distinct2=0.9),
    _row("steer", 0.2, None, 0.55, kl=0.08, ppl=10.5, acc=0.59, distinct2=0.8),
    _row("steer", 0.1, None, 0.40, kl=0.02, ppl=10.1, acc=0.60, distinct2=0.85),  # out of order on purpose
    _row("steer", 0.0, [5, 6], 0.30, kl=0.0, ppl=10.0, acc=0.60),
    _row("steer", 0.1, [5, 6], 0.35, kl=0.01, ppl=10.2, acc=0.58),
    _row("prompt", 0.0, None, 0.45, acc=0.61),
    _row("prompt+steer", 0.1, None, 0.62, kl=0.03, ppl=10.3, acc=0.57),
    _row("prompt+steer", 0.2, None, 0.75, kl=0.09, ppl=10.9, acc=0.55),
]
REC = {"strength": 0.2, "layers": [3], "shift": 0.25}


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_metrics_found_in_rows_sweep_metrics_first():
    assert numeric_metrics(ROWS) == ["behaviour", "kl", "ppl", "mc_acc", "distinct2"]  # n_* and strength are not
    open_row = {"setting": "steer", "strength": 0.0, "behaviour": 0.3, "max_new_tokens": 48, "n_open": 5,
                "answer_ppl": None, "share_agreed": 0.4, "coherent": 1.0, "ok": True, "outcomes": {"agreed": 2}}
    assert numeric_metrics([open_row]) == ["behaviour", "share_agreed", "coherent"]  # None, bools, dicts skipped


def test_specs_hold_exactly_the_rows():
    specs = {s.metric: s for s in plot_specs(ROWS, recommendation=REC)}
    b = specs["behaviour"]
    assert [(s.label, s.x, s.y) for s in b.series] == [
        ("steer @ layers 3", [0.0, 0.1, 0.2], [0.30, 0.40, 0.55]),
        ("steer @ layers 5,6", [0.0, 0.1], [0.30, 0.35]),
        ("prompt+steer @ layers 3", [0.1, 0.2], [0.62, 0.75]),
    ]
    assert (b.unsteered, b.prompting, b.recommended) == (0.30, 0.45, 0.2)
    assert b.recommended_label == "recommended 0.2 (layers 3)"
    kl = specs["kl"]
    assert kl.prompting is None and kl.unsteered == 0.0  # the prompt row has no KL
    assert [s.y for s in kl.series] == [[0.0, 0.02, 0.08], [0.0, 0.01], [0.03, 0.09]]
    d2 = specs["distinct2"]  # a column only some rows carry: only those rows
    assert [(s.x, s.y) for s in d2.series] == [([0.0, 0.1, 0.2], [0.9, 0.85, 0.8])]
    assert plot_specs(ROWS)[0].recommended is None
    assert plot_specs(ROWS, recommendation={"strength": None})[0].recommended is None


def test_figure_lines_are_the_spec():
    spec = plot_specs(ROWS, recommendation=REC, metrics=["mc_acc"])[0]
    fig = figure_for(spec)
    ax = fig.axes[0]
    lines = {ln.get_gid(): ln for ln in ax.get_lines()}
    assert [g for g in lines if not g.startswith(("pt-", "caps:"))] == [
        "series:steer @ layers 3", "series:steer @ layers 5,6", "series:prompt+steer @ layers 3",
        "unsteered", "prompting", "recommended"]
    assert sorted(g for g in lines if g.startswith("pt-")) == ["pt-0-0", "pt-0-1", "pt-0-2", "pt-1-0", "pt-1-1",
                                                              "pt-2-0", "pt-2-1"]  # one marker per point
    assert list(lines["series:steer @ layers 3"].get_xdata()) == [0.0, 0.1, 0.2]
    assert list(lines["series:steer @ layers 3"].get_ydata()) == [0.60, 0.60, 0.59]
    assert list(lines["series:prompt+steer @ layers 3"].get_ydata()) == [0.57, 0.55]
    assert lines["series:prompt+steer @ layers 3"].get_linestyle() == "--"
    assert lines["series:steer @ layers 3"].get_linestyle() == "-"
    styles = [(lines[f"pt-{i}-0"].get_color(), lines[f"pt-{i}-0"].get_marker()) for i in range(3)]
    assert len({c for c, _ in styles}) == 3 and len({m for _, m in styles}) == 3  # every line its own
    assert list(lines["prompting"].get_ydata()) == [0.61, 0.61] and lines["prompting"].get_linestyle() == "--"
    assert list(lines["unsteered"].get_ydata()) == [0.60, 0.60]
    assert list(lines["recommended"].get_xdata()) == [0.2, 0.2]
    # the Wilson interval of 0.60 of 20 capability items, drawn as a bar at strength 0
    bars = next(c for c in ax.collections if c.get_gid() == "ci:steer @ layers 3")
    assert tuple(map(tuple, bars.get_segments()[0])) == (
        (0.0, spec.series[0].lo[0]), (0.0, spec.series[0].hi[0]))
    assert (round(spec.series[0].lo[0], 4), round(spec.series[0].hi[0], 4)) == (0.3866, 0.7812)
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    import matplotlib.pyplot as plt  # no figure leaked into pyplot's global state

    assert plt.get_fignums() == []


def _eight_lines(metric="share_agreed", values=(0.0, 0.5, 1.0)):
    """4 layer sets x (steer, prompt+steer): 8 lines of a share at the bounds 0 and 1."""
    rows = []
    for j, layers in enumerate(([2], [3], [4, 5], [6, 7, 8])):
        for setting in ("steer", "prompt+steer"):
            for k, s in enumerate((0.1, 0.2, 0.3)):
                rows.append({"setting": setting, "strength": s, "layers": layers, "resolved_layers": layers,
                             metric: values[(j + k) % 3], "n_open": 20})
    return rows


def test_eight_lines_distinct_bounded_axes_legend_outside():
    spec = plot_specs(_eight_lines())[0]
    assert len(spec.series) == 8 and spec.bounds == (0.0, 1.0)
    fig = figure_for(spec)
    ax = fig.axes[0]
    pts = {ln.get_gid(): ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith("pt-")}
    styles = {(pts[f"pt-{i}-0"].get_color(), pts[f"pt-{i}-0"].get_marker()) for i in range(8)}
    assert len({c for c, _ in styles}) == 8 and len({m for _, m in styles}) == 8
    assert ax.get_ylim() == (0.0, 1.0)  # shares at 0 and 1 with intervals: the axis stops at the bounds
    fig.canvas.draw()
    legend, box = fig.legends[0].get_window_extent(), ax.get_window_extent()
    assert legend.y1 < box.y0  # below the plotting area, not over the lines
    assert len(fig.legends[0].get_texts()) == 8 and fig.legends[0].get_texts()[0].get_text() == (
        "steer @ layers 2 (n=20)")
    coh = plot_specs(_eight_lines("coherent", (1.0, 1.0, 1.0)))[0]  # all answers coherent: no 1.58
    assert figure_for(coh).axes[0].get_ylim()[1] == 1.0
    kl = plot_specs(_eight_lines("kl", (0.0, 0.01, 0.02)))[0]
    assert figure_for(kl).axes[0].get_ylim()[0] == 0.0


def test_point_intervals_and_n():
    row = {"setting": "steer", "strength": 0.1, "behaviour": 0.5, "n_ab": 50, "kl": 0.2, "kl_ci95": [0.1, 0.3],
           "n_kl": 100, "share_agreed": 0.25, "n_open": 20, "judge_share_agreed": 0.5, "n_judged": 20,
           "judge_unparsed": 0.1, "det_x": 1.5, "distinct2": 0.3}
    ci, n, how = point_interval(row, "kl")
    assert (ci, n, how) == ((0.1, 0.3), 100, "mean ± 1.96 SE over prompts")
    ci, n, how = point_interval(row, "share_agreed")
    assert n == 20 and how == "Wilson" and (round(ci[0], 4), round(ci[1], 4)) == (0.1119, 0.4687)
    assert point_interval(row, "judge_share_agreed")[1] == 18  # the answers the judge could label
    assert point_interval(row, "behaviour")[2] == "Wilson (conservative for a mean probability)"
    assert point_interval(row, "det_x") == (None, 20, NO_INTERVAL)
    assert point_interval(row, "distinct2") == (None, 20, NO_INTERVAL)


def test_svg_has_a_tooltip_per_point_and_no_fixed_size():
    spec = plot_specs(ROWS, recommendation=REC, metrics=["mc_acc"])[0]
    svg = svg_for(spec, id_prefix="c1-")
    assert svg.startswith("<svg ") and "<?xml" not in svg and 'width="' not in svg.split(">", 1)[0]
    assert svg.count("<title>") == 7
    assert ("<title>steer @ layers 3, strength 0: mc_acc 0.6; 95 % interval 0.3866 to 0.7812 (Wilson); "
            "n = 20</title>") in svg
    assert "@ layers" not in svg.replace("<title>", "\n").split("\n", 1)[0]  # no id with spaces


def test_write_pngs_one_valid_file_per_metric(tmp_path):
    out = tmp_path / "plots" / "nested"
    paths = write_pngs(ROWS, out, recommendation=REC, dpi=50)
    assert [p.name for p in paths] == ["behaviour.png", "kl.png", "ppl.png", "mc_acc.png", "distinct2.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    # 6 inches wide at 50 dpi; 3.6 inches high plus 0.2 per legend row (2 columns): 5-6 entries for the
    # first four metrics, 3 for distinct2 (one line, unsteered, recommended)
    assert [_png_size(p) for p in paths] == [(300, 210)] * 4 + [(300, 200)]
    two = write_pngs(ROWS, tmp_path / "two", metrics=["kl", "behaviour"])
    assert [p.name for p in two] == ["kl.png", "behaviour.png"]
    assert len(list((tmp_path / "two").iterdir())) == 2


def test_missing_metric_and_bad_rows(tmp_path):
    with pytest.raises(SteerwatchError, match=r"no row has a numeric 'coherence'; metrics present: behaviour, kl"):
        write_pngs(ROWS, tmp_path, metrics=["behaviour", "coherence"])
    assert list(tmp_path.iterdir()) == []  # nothing written before the error
    with pytest.raises(SteerwatchError, match="no sweep rows"):
        plot_specs([])
    with pytest.raises(SteerwatchError, match="row 2 is not a sweep row"):
        plot_specs([ROWS[0], {"behaviour": 0.3}])
    with pytest.raises(SteerwatchError, match=r"row 1: strength must be a number, got '0.1'"):
        plot_specs([{"setting": "steer", "strength": "0.1", "behaviour": 0.3}])
    with pytest.raises(SteerwatchError, match="no numeric metric"):
        plot_specs([{"setting": "steer", "strength": 0.0, "n_ab": 3, "concept": "x"}])
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(SteerwatchError, match="not a folder"):
        write_pngs(ROWS, f)


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SteerwatchError, match=r"plots need matplotlib: pip install steerwatch\[plots\]"):
        write_pngs(ROWS, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    assert plot_specs(ROWS)[0].metric == "behaviour"  # the data part needs no matplotlib
