"""steerwatch.evals.plots: the plotted data is exactly the rows, one valid PNG per metric, clear
errors for missing metrics, bad rows and a missing matplotlib."""
from __future__ import annotations

import struct
import sys

import pytest

from steerwatch.errors import SteerwatchError
from steerwatch.evals.plots import figure_for, numeric_metrics, plot_specs, write_pngs


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
    assert list(lines) == ["series:steer @ layers 3", "series:steer @ layers 5,6", "series:prompt+steer @ layers 3",
                           "unsteered", "prompting", "recommended"]
    assert list(lines["series:steer @ layers 3"].get_xdata()) == [0.0, 0.1, 0.2]
    assert list(lines["series:steer @ layers 3"].get_ydata()) == [0.60, 0.60, 0.59]
    assert list(lines["series:prompt+steer @ layers 3"].get_ydata()) == [0.57, 0.55]
    assert lines["series:prompt+steer @ layers 3"].get_linestyle() == "--"
    assert lines["series:steer @ layers 3"].get_linestyle() == "-"
    colours = [lines[f"series:{n}"].get_color() for n in ("steer @ layers 3", "prompt+steer @ layers 3",
                                                           "steer @ layers 5,6")]
    assert colours[0] == colours[1] != colours[2]  # one colour per layer set
    assert list(lines["prompting"].get_ydata()) == [0.61, 0.61] and lines["prompting"].get_linestyle() == "--"
    assert list(lines["unsteered"].get_ydata()) == [0.60, 0.60]
    assert list(lines["recommended"].get_xdata()) == [0.2, 0.2]
    assert type(fig.canvas).__name__ == "FigureCanvasAgg"
    import matplotlib.pyplot as plt  # no figure leaked into pyplot's global state

    assert plt.get_fignums() == []


def test_write_pngs_one_valid_file_per_metric(tmp_path):
    out = tmp_path / "plots" / "nested"
    paths = write_pngs(ROWS, out, recommendation=REC, dpi=50)
    assert [p.name for p in paths] == ["behaviour.png", "kl.png", "ppl.png", "mc_acc.png", "distinct2.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert {_png_size(p) for p in paths} == {(300, 200)}  # 6x4 inches at 50 dpi
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
    with pytest.raises(SteerwatchError, match=r"pip install steerwatch\[plots\]"):
        write_pngs(ROWS, tmp_path / "p")
    assert not (tmp_path / "p").exists()
    assert plot_specs(ROWS)[0].metric == "behaviour"  # the data part needs no matplotlib
