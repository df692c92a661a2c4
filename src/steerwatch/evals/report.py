"""A self-contained HTML report of a sweep: the recommendation in words with its evidence, one
dose-response chart per measure (matplotlib figures inlined as SVG: no JavaScript library, no
network; every point with its 95 % interval and n), all rows, and sample generations. The page is
a jinja2 template shipped with the package (``templates/report.html.j2``, autoescaped). Consumes
rows only; the metrics live in ``sweep.py``, the figures in ``plots.py``."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .intervals import UNIT_METRICS, point_interval, wilson
from .plots import layers_label, numeric_metrics, plot_specs, svg_for

# the measures charted, in this order (detector columns follow, one chart each)
REPORT_METRICS = ("behaviour", "kl", "ppl", "mc_acc", "share_corrected", "share_rejected", "share_agreed",
                  "share_evasive", "judge_share_corrected", "judge_share_rejected", "judge_share_agreed",
                  "judge_share_evasive", "judge_rule_agreement", "coherent", "repeat_4gram", "answer_ppl_median")
TABLE = ("behaviour", "kl", "ppl", "mc_acc", "share_corrected", "share_rejected", "share_agreed", "share_evasive",
         "judge_share_corrected", "judge_share_rejected", "judge_share_agreed", "judge_share_evasive",
         "judge_unparsed", "judge_rule_agreement", "coherent", "repeat_4gram", "answer_ppl_median")
# the data sets behind the rows: (count column, what it counts, the column that qualifies it)
SETS = (("n_ab", "A/B items", "ab_orders"), ("n_kl", "neutral prompts (KL)", None),
        ("n_ppl", "reference texts (perplexity)", None), ("n_mc", "capability items", "mc_scoring"),
        ("n_open", "open-ended prompts", "max_new_tokens"), ("n_judged", "answers labelled by the LLM judge",
                                                             "judge_model"))
N_COLUMNS = tuple(s[0] for s in SETS)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(metric: str, v: Any) -> str:
    """A cell's text: shares with 3 decimals, other numbers with 4 significant digits."""
    if v is None:
        return "–"
    if not _num(v):
        return str(v)
    if metric in UNIT_METRICS or "share_" in metric or metric.endswith("_flagged"):
        return f"{v:.3f}"
    return f"{v:.4g}"


def _strength(v: float) -> str:
    return "0" if v == 0 else f"{v:+g}"


def _ci_text(row: dict[str, Any] | None, metric: str) -> str:
    """" [low, high], n=N" for ``row[metric]`` where known."""
    if row is None:
        return ""
    ci, n, _ = point_interval(row, metric)
    out = f" [95 % {ci[0]:.3g}–{ci[1]:.3g}]" if ci else ""
    return out + (f", n={n}" if n else "")


def _det_metrics(rows: Sequence[dict[str, Any]]) -> list[str]:
    return sorted({k for r in rows for k, v in r.items() if k.startswith("det_") and _num(v)})


def _objective_ci(row: dict[str, Any] | None, objective: str) -> str:
    """The objective's interval: its own for one column; Wilson for a sum of shares of the same
    answers (disjoint outcomes, so the sum is a share itself)."""
    if row is None:
        return ""
    cols = [c.strip() for c in objective.split("+")]
    if len(cols) == 1:
        return _ci_text(row, cols[0])
    prefixes = {c.rsplit("share_", 1)[0] for c in cols}
    if all("share_" in c for c in cols) and len(prefixes) == 1 and _num(row.get("n_open")):
        total = sum(float(row[c]) for c in cols)
        lo, hi = wilson(total, int(row["n_open"])) or (0.0, 1.0)
        return f" [95 % {lo:.3g}–{hi:.3g}], n={row['n_open']}"
    return ""


def recommendation_view(rec: dict[str, Any] | None, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The recommendation as a sentence, an evidence table and the rejected doses."""
    if rec is None:
        return None
    budget = rec.get("budget", {})
    budget_text = (f"KL ≤ {budget.get('max_kl')} nats/token, capability drop ≤ {budget.get('max_capability_drop')}"
                   if budget else "")
    rejected = [{"strength": _strength(r["strength"]), "layers": layers_label(r.get("layers") or []),
                 "why": "; ".join(r.get("why", []))} for r in rec.get("rejected", [])]
    objective, base = rec.get("objective", "behaviour"), rec.get("baseline", {})
    if rec.get("strength") is None:
        return {"chosen": False, "sentence": f"No strength recommended: {rec.get('reason', 'none fits the budget')} "
                f"(budget: {budget_text}).", "evidence": [], "rejected": rejected, "budget": budget_text}
    s, layers = rec["strength"], rec.get("layers") or []
    row = next((r for r in rows if r["setting"] == "steer" and r["strength"] == s
                and list(r.get("resolved_layers") or []) == list(layers)), None)
    base_row = next((r for r in rows if r["setting"] == "steer" and r["strength"] == 0), None)
    verb = "raises" if rec.get("direction", 1) == 1 else "lowers"
    sentence = (f"Steer at strength {_strength(s)} on layers {layers_label(layers)}: the largest shift of {objective} "
                f"within the budget ({budget_text}). It {verb} {objective} from {base.get('value', 0):.3g} "
                f"(unsteered) to {rec['value']:.3g} ({rec['shift']:+.3g})")
    p = rec.get("prompting")
    if p is not None:
        sentence += (f"; the system-prompt instruction alone reaches {p['value']:.3g}, so steering "
                     f"{'beats' if rec.get('beats_prompting') else 'does not beat'} prompting")
    sentence += "."
    prompt_row = next((r for r in rows if r["setting"] == "prompt"), None)
    ev: list[tuple[str, str]] = [
        ("dose", f"strength {_strength(s)} on layers {layers_label(layers)}"),
        (f"objective: {objective}", f"{rec['value']:.3g}{_objective_ci(row, objective)} · unsteered "
                                    f"{base.get('value', 0):.3g}{_objective_ci(base_row, objective)} · shift "
                                    f"{rec['shift']:+.3g}")]
    if p is not None:
        ev.append(("prompting baseline", f"{p['value']:.3g}{_objective_ci(prompt_row, objective)} · shift "
                                         f"{p['shift']:+.3g}"))
    if rec.get("kl") is not None:
        ev.append(("KL vs. unsteered (nats/token)", f"{rec['kl']:.3g}{_ci_text(row, 'kl')} · budget ≤ "
                                                    f"{budget.get('max_kl')}"))
    if rec.get("mc_acc") is not None:
        ev.append(("capability accuracy", f"{rec['mc_acc']:.3f}{_ci_text(row, 'mc_acc')} · change "
                                          f"{rec.get('capability_change', 0):+.3f} · budget: drop ≤ "
                                          f"{budget.get('max_capability_drop')}"))
    if rec.get("ppl") is not None:
        ev.append(("perplexity of reference text", f"{rec['ppl']:.4g}{_ci_text(row, 'ppl')} · unsteered "
                                                   f"{base.get('ppl') or float('nan'):.4g}"))
    if rec.get("behaviour") is not None:
        shift = rec.get("behaviour_shift")
        ev.append(("A/B behaviour (P of behaviour-matching answer)",
                   f"{rec['behaviour']:.3f}{_ci_text(row, 'behaviour')}"
                   + (f" · shift {shift:+.3f}" if shift is not None else "")))
    return {"chosen": True, "sentence": sentence, "evidence": ev, "rejected": rejected, "budget": budget_text}


def _sets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for col, label, note_col in SETS:
        ns = sorted({int(r[col]) for r in rows if _num(r.get(col))})
        if ns:
            notes = sorted({str(r[note_col]) for r in rows if note_col and r.get(note_col) is not None})
            note = ", ".join(notes)
            if note_col == "max_new_tokens" and note:
                note = f"up to {note} new tokens"
            elif note_col == "ab_orders" and note == "both":
                note = "each asked in both option orders"
            elif note_col == "mc_scoring" and note:
                note = f"{note} scoring"
            out.append({"label": label, "n": "–".join(map(str, (ns[0], ns[-1]))) if len(ns) > 1 else ns[0],
                        "note": note})
    return out


def _table(rows: Sequence[dict[str, Any]], rec: dict[str, Any] | None) -> dict[str, Any]:
    metrics = [c for c in TABLE if any(c in r for r in rows)] + _det_metrics(rows)
    ns = [c for c in N_COLUMNS if any(c in r for r in rows)]
    columns = ([{"name": "setting", "text": True, "help": "steer: vector only; prompt: instruction only; "
                 "prompt+steer: both"}, {"name": "layers", "text": True, "help": "steered layers"},
                {"name": "strength", "text": False, "help": "fraction of the residual-stream norm"}]
               + [{"name": m, "text": False, "help": m} for m in metrics]
               + [{"name": n, "text": False, "help": "items behind the row's " + n[2:] + " column(s)"} for n in ns])
    out = []
    chosen = (rec or {}).get("strength")
    for r in rows:
        cells = [{"text": r["setting"], "cls": "text", "title": ""},
                 {"text": layers_label(r.get("resolved_layers") or []), "cls": "text", "title": ""},
                 {"text": _strength(float(r["strength"])), "cls": "num", "title": ""}]
        for m in metrics:
            ci, n, _ = point_interval(r, m) if _num(r.get(m)) else (None, None, "")
            title = (f"95 % {ci[0]:.4g} to {ci[1]:.4g}" if ci else "") + (f", n={n}" if n and ci else "")
            cells.append({"text": _fmt(m, r.get(m)), "cls": "num", "title": title})
        cells += [{"text": _fmt(n, r.get(n)), "cls": "num", "title": ""} for n in ns]
        out.append({"cells": cells, "chosen": r["setting"] == "steer" and chosen is not None
                    and r["strength"] == chosen
                    and list(r.get("resolved_layers") or []) == list((rec or {}).get("layers") or [])})
    return {"columns": columns, "rows": out}


def _samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    if not samples:
        return None
    extra = [c for c in ("setting", "outcome", "judge", "coherent") if any(c in x for x in samples)]
    rows = [{"cells": [_strength(float(x["strength"])) if _num(x.get("strength")) else str(x.get("strength", ""))]
             + [str(x.get(c, "")) for c in extra], "prompt": str(x.get("prompt", "")),
             "answer": str(x.get("output", x.get("answer", "")))} for x in samples]
    return {"columns": ["strength", *extra], "rows": rows}


def _caption(spec: Any) -> str:
    ns = sorted({n for s in spec.series for n in s.n if n is not None})
    n = "" if not ns else f"n = {ns[0]} per point" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]} per point"
    return f"{spec.metric}: 95 % intervals: {spec.interval}" + (f"; {n}" if n else "") + "."


def render_report(rows: Sequence[dict[str, Any]], recommendation: dict[str, Any] | None = None, *,
                  samples: Sequence[dict[str, Any]] = (), title: str = "steerwatch sweep") -> str:
    """The report page (HTML text) of sweep or eval ``rows``, with the ``recommendation`` of
    :func:`~steerwatch.evals.sweep.recommend` when given and a few ``samples`` (rows with
    strength, prompt and output/answer, optionally setting, outcome, judge, coherent)."""
    import jinja2
    from markupsafe import Markup

    from .. import __version__

    present = set(numeric_metrics(rows))
    wanted = [m for m in REPORT_METRICS if m in present] + [m for m in _det_metrics(rows) if m in present]
    specs = plot_specs(rows, recommendation=recommendation, metrics=wanted) if wanted else []
    charts = [{"metric": s.metric, "svg": Markup(svg_for(s, id_prefix=f"c{i}-")), "caption": _caption(s)}
              for i, s in enumerate(specs)]
    env = jinja2.Environment(loader=jinja2.PackageLoader("steerwatch.evals", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    concepts = sorted({str(r["concept"]) for r in rows if r.get("concept")})
    return env.get_template("report.html.j2").render(
        title=title, version=__version__, concept=", ".join(concepts), n_rows=len(rows), sets=_sets(rows),
        rec=recommendation_view(recommendation, rows), charts=charts, table=_table(rows, recommendation),
        samples=_samples(samples))
