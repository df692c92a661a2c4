"""The watch page: the event store as HTML for deployers. The list of stored events (flagged first,
then newest) with filters (detector, key, time range, flagged only), counts of each detector's
firings per hour or day (inline SVG), and one event's prompt, response, scores and per-token
heatmap. Rendered server-side from jinja2 templates shipped with the package
(``templates/watch*.html.j2``, autoescaped, no JavaScript); served by ``steerwatch serve`` at
``/watch`` (:mod:`steerwatch.serve.watchroutes`) and written offline, list and every event in one
file, by ``steerwatch view --store`` (:func:`render_offline`). Times are UTC."""
from __future__ import annotations

import math
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError
from ..watch.view import _rgba, _z
from .store import fired_detectors

if TYPE_CHECKING:  # pragma: no cover
    from .store import EventStore

BUCKETS = {"hour": 3600, "day": 86400}
MAX_BUCKETS = 96  # bars drawn per detector; older buckets are left out (and said so)
MAX_LIMIT = 1000  # events on one page
CHART_W, CHART_H = 480, 36  # the counts chart's SVG size per detector (CSS pixels at 100 %)


@dataclass(frozen=True)
class WatchFilter:
    """What the listing shows: the query parameters of ``/watch`` (and the options of ``view --store``)."""
    flagged_only: bool = False
    detector: str | None = None  # events where this detector fired
    key: str | None = None  # the API key's name
    since: float | None = None  # unix time, inclusive
    until: float | None = None  # unix time, exclusive
    bucket: str = "auto"  # auto | hour | day: the counts chart's bucket
    page: int = 1
    limit: int = 100

    @classmethod
    def from_query(cls, q: Mapping[str, str]) -> WatchFilter:
        """From query parameters (``flagged``, ``detector``, ``key``, ``since``, ``until``, ``bucket``,
        ``page``, ``limit``; empty ones ignored). SteerwatchError names a bad one."""
        get = {k: v.strip() for k, v in q.items() if v is not None and v.strip()}
        unknown = sorted(set(get) - {"flagged", "detector", "key", "since", "until", "bucket", "page", "limit"})
        if unknown:
            raise SteerwatchError(f"unknown filter {unknown[0]!r}; valid: flagged, detector, key, since, until, "
                                  "bucket, page, limit")
        flagged = get.get("flagged", "false").lower()
        if flagged not in ("true", "false", "1", "0", "on", "off"):
            raise SteerwatchError(f"flagged must be true or false, not {get['flagged']!r}")
        return cls(flagged_only=flagged in ("true", "1", "on"), detector=get.get("detector"), key=get.get("key"),
                   since=parse_time(get["since"], "since") if "since" in get else None,
                   until=parse_time(get["until"], "until") if "until" in get else None,
                   bucket=get.get("bucket", "auto"), page=_int(get.get("page", "1"), "page", 1, 10**9),
                   limit=_int(get.get("limit", "100"), "limit", 1, MAX_LIMIT)).checked()

    def checked(self) -> WatchFilter:
        if self.bucket not in ("auto", *BUCKETS):
            raise SteerwatchError(f"bucket must be auto, hour or day, not {self.bucket!r}")
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise SteerwatchError("until must be later than since")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise SteerwatchError(f"limit must be between 1 and {MAX_LIMIT}")
        return self

    def store_filters(self) -> dict[str, Any]:
        return {"flagged_only": self.flagged_only, "detector": self.detector, "key_name": self.key,
                "since": self.since, "until": self.until}

    def query(self, **over: Any) -> str:
        """This filter (with ``over`` replaced) as a query string, for links."""
        f = replace(self, **over)
        q = {"flagged": "true" if f.flagged_only else None, "detector": f.detector, "key": f.key,
             "since": _iso(f.since) if f.since is not None else None,
             "until": _iso(f.until) if f.until is not None else None,
             "bucket": None if f.bucket == "auto" else f.bucket, "page": None if f.page == 1 else str(f.page),
             "limit": None if f.limit == 100 else str(f.limit)}
        return urllib.parse.urlencode({k: v for k, v in q.items() if v is not None})

    def describe(self) -> str:
        parts = [p for p in (
            "flagged only" if self.flagged_only else "",
            f"detector {self.detector}" if self.detector else "", f"key {self.key}" if self.key else "",
            f"from {_when(self.since)}" if self.since is not None else "",
            f"until {_when(self.until)}" if self.until is not None else "") if p]
        return ", ".join(parts) or "none"


def parse_time(text: str, name: str = "time") -> float:
    """A date or date-time (ISO 8601, as an HTML datetime-local field sends it: 2026-12-07T09:30),
    UTC unless it carries an offset, as unix time."""
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise SteerwatchError(f"{name} must be a date or date-time such as 2026-12-07 or 2026-12-07T09:30 (UTC), "
                              f"not {text!r}") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _int(text: str, name: str, lo: int, hi: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise SteerwatchError(f"{name} must be a whole number, not {text!r}") from None
    if not lo <= v <= hi:
        raise SteerwatchError(f"{name} must be between {lo} and {hi}")
    return v


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M")


def _when(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------- counts over time
def counts_over_time(fired: Sequence[tuple[float, list[str]]], bucket: str = "auto") -> dict[str, Any] | None:
    """Each detector's firings (and all matching events) per hour or day, laid out as bars of an
    inline SVG per series on one shared scale. None when no event matches."""
    if not fired:
        return None
    first, last = fired[0][0], fired[-1][0]
    name = bucket if bucket != "auto" else ("hour" if last - first <= 2 * 86400 else "day")
    size = BUCKETS[name]
    b0, b1 = math.floor(first / size), math.floor(last / size)
    dropped = max(0, b1 - b0 + 1 - MAX_BUCKETS)
    b0 += dropped
    n = b1 - b0 + 1
    series: dict[str, list[int]] = {"all events": [0] * n}
    for created, dets in fired:
        i = math.floor(created / size) - b0
        if i < 0:
            continue
        series["all events"][i] += 1
        for d in dets:
            series.setdefault(d, [0] * n)[i] += 1
    top = max(max(v) for v in series.values()) or 1
    fmt = "%Y-%m-%d %H:00" if name == "hour" else "%Y-%m-%d"

    def label(i: int) -> str:
        return datetime.fromtimestamp((b0 + i) * size, timezone.utc).strftime(fmt)

    w = CHART_W / n
    rows = []
    for sname in ["all events", *sorted(k for k in series if k != "all events")]:
        counts = series[sname]
        bars = []
        for i, c in enumerate(counts):
            if c:
                h = max(1.0, (CHART_H - 2) * c / top)
                bars.append({"x": round(i * w + 0.1 * w, 2), "w": round(max(0.8 * w, 1.0), 2), "h": round(h, 2),
                             "y": round(CHART_H - h, 2), "title": f"{sname}, {label(i)} UTC: {c}"})
        rows.append({"name": sname, "total": sum(counts), "bars": bars})
    return {"bucket": name, "n": n, "first": label(0), "last": label(n - 1), "top": top, "series": rows,
            "dropped": dropped, "width": CHART_W, "height": CHART_H}


# ---------------------------------------------------------------------- one event
def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _fmt(v: Any) -> str:
    f = _finite(v)
    return "-" if f is None else f"{f:+.3f}" if abs(f) < 1e6 else f"{f:+.3g}"


def event_view(row: dict[str, Any]) -> dict[str, Any]:
    """What the templates show of one stored event: facts, prompt, response, the scores table and
    the per-token heatmap (tinted relative to each detector's threshold, in units of the response's
    own spread of token scores; red above the threshold, blue below)."""
    thresholds = row.get("thresholds") or {}
    fired = fired_detectors(row.get("flags") or [], row.get("events") or [])
    token_scores: dict[str, list[float]] = row.get("token_scores") or {}
    tokens: list[str] = row.get("tokens") or []
    scores = []
    for name in sorted(set(row.get("scores") or {}) | set(token_scores)):
        s, t = (row.get("scores") or {}).get(name), thresholds.get(name)
        fs, ft = _finite(s), _finite(t)
        above = fs is not None and ft is not None and fs > ft
        scores.append({"detector": name, "score": _fmt(s), "threshold": _fmt(t) if name in thresholds else "not stored",
                       "above": above, "fired": name in fired, "n": len(token_scores.get(name, []))})
    heat: list[dict[str, Any]] = []
    table: list[dict[str, Any]] = []
    for name, vals in sorted(token_scores.items()):
        if not vals:
            continue
        mean = sum(vals) / len(vals)
        spread = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5 or 1.0
        t = _finite(thresholds.get(name))
        centre = mean if t is None else t
        heat.append({"detector": name, "centre": "threshold" if t is not None else "mean",
                     "tokens": [{"text": tokens[i] if i < len(tokens) else "", "bg": _rgba(_z(v, centre, spread)),
                                 "title": f"token {i}: {v:+.3f}" + ("" if t is None else f" (threshold {_fmt(t)})")}
                                for i, v in enumerate(vals)]})
    if heat:
        names: list[str] = [h["detector"] for h in heat]
        n = max(len(token_scores[d]) for d in names)
        for i in range(n):
            cells = []
            for d in names:
                vals, t = token_scores[d], _finite(thresholds.get(d))
                v = vals[i] if i < len(vals) else None
                cells.append({"text": "-" if v is None else f"{v:+.3f}",
                              "above": v is not None and t is not None and v > t})
            table.append({"i": i, "token": repr(tokens[i])[1:-1] if i < len(tokens) else "", "cells": cells})
    prompt = row.get("prompt")
    messages = ([{"role": str(m.get("role", "?")), "content": str(m.get("content") or "")} for m in prompt
                 if isinstance(m, dict)] if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt)
                else None)
    return {
        "id": row["id"], "request_id": row.get("request_id", ""), "when": _when(row.get("created")),
        "key": row.get("key_name") or "(none)", "model": row.get("model", ""), "endpoint": row.get("endpoint", ""),
        "policy": (row.get("policy_sha256") or "")[:12], "flagged": bool(row.get("flagged")), "fired": fired,
        "messages": messages, "prompt_text": None if messages is not None else _prompt_text(prompt),
        "response": row.get("response", ""), "scores": scores, "heat": heat, "token_table": table,
        "token_names": [h["detector"] for h in heat],
        "steering": ", ".join(f"{s.get('vector')} {s.get('op')} {s.get('strength')} at {s.get('layers')}"
                              for s in row.get("steering") or []) or "none",
        "events": [_event_text(e) for e in row.get("events") or []],
        "has_thresholds": bool(thresholds),
    }


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return f"(token ids) {prompt}"
    import json

    return json.dumps(prompt, ensure_ascii=False)


def _event_text(e: dict[str, Any]) -> str:
    kind = e.get("type", "?")
    rest = ", ".join(f"{k} {v}" for k, v in e.items() if k != "type")
    return f"{kind}: {rest}" if rest else str(kind)


def list_row(row: dict[str, Any]) -> dict[str, Any]:
    """One line of the events table."""
    prompt = row.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        last = str(prompt[-1].get("content") or "")
    else:
        last = _prompt_text(prompt)
    scores = row.get("scores") or {}
    return {"id": row["id"], "when": _when(row.get("created")), "key": row.get("key_name") or "(none)",
            "flagged": bool(row.get("flagged")),
            "fired": fired_detectors(row.get("flags") or [], row.get("events") or []),
            "prompt": _clip(last, 120), "response": _clip(row.get("response") or "", 160),
            "scores": ", ".join(f"{k} {_fmt(v)}" for k, v in sorted(scores.items())), "endpoint": row.get("endpoint")}


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


# ---------------------------------------------------------------------- pages
def _env() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("steerwatch.serve", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _common(title: str) -> dict[str, Any]:
    from .. import __version__

    return {"title": title, "version": __version__, "now": _when(time.time())}


def listing(store: EventStore, filt: WatchFilter, *, detectors: Sequence[str] = ()) -> dict[str, Any]:
    """The list page's data: the page of events, how many match, the counts chart, the filter options."""
    rows, total = store.query(**filt.store_filters(), limit=filt.limit, offset=(filt.page - 1) * filt.limit)
    names = store.names()
    pages = max(1, math.ceil(total / filt.limit))
    return {"rows": [list_row(r) for r in rows], "raw": rows, "total": total, "filt": filt,
            "f": asdict(filt) | {"since_text": _iso(filt.since) if filt.since is not None else "",
                                 "until_text": _iso(filt.until) if filt.until is not None else ""},
            "first": (filt.page - 1) * filt.limit + 1 if rows else 0, "last": (filt.page - 1) * filt.limit + len(rows),
            "pages": pages, "prev": filt.query(page=filt.page - 1) if filt.page > 1 else None,
            "next": filt.query(page=filt.page + 1) if filt.page < pages else None,
            "chart": counts_over_time(store.fired(**filt.store_filters()), filt.bucket),
            "keys": names["keys"], "detectors": sorted(set(names["detectors"]) | set(detectors)),
            "described": filt.describe()}


def render_list(store: EventStore, filt: WatchFilter, *, detectors: Sequence[str] = (), model: str = "") -> str:
    data = listing(store, filt, detectors=detectors)
    return _env().get_template("watch_list.html.j2").render(
        **_common(f"steerwatch watch: {model}" if model else "steerwatch watch"), **data, offline=False,
        events=[])


def render_event(row: dict[str, Any]) -> str:
    return _env().get_template("watch_event.html.j2").render(
        **_common(f"steerwatch event {row['id']}"), ev=event_view(row))


def render_offline(store: EventStore, filt: WatchFilter, *, source: str = "") -> str:
    """One self-contained page: the list, the counts and every listed event's detail (linked by anchor)."""
    data = listing(store, filt)
    return _env().get_template("watch_list.html.j2").render(
        **_common(f"steerwatch watch: {source}" if source else "steerwatch watch"), **data, offline=True,
        events=[event_view(r) for r in data["raw"]])


def render_login(message: str = "", *, has_keys: bool = True) -> str:
    return _env().get_template("watch_login.html.j2").render(**_common("steerwatch watch: sign in"),
                                                             message=message, has_keys=has_keys)


def render_message(title: str, message: str) -> str:
    return _env().get_template("watch_message.html.j2").render(**_common(title), message=message)
