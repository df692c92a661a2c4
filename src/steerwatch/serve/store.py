"""The event store: flagged (optionally all) responses with their prompt, response, per-token
scores (and the thresholds they were judged by), steering, policy hash and time. SQLite (tested; a
relative path is relative to the policy file, a ``sqlite:///file:...?uri=true`` URL is passed to
SQLite as is). Other SQLAlchemy URLs need
their driver installed and are not tested. Checked writable at start-up (:meth:`check_writable`),
before the model loads. Written by the engine's worker thread, so a client that disconnects
mid-stream loses nothing. ``readonly=True`` opens an existing store for reading only (the offline
watch page): nothing is created or migrated, and a missing file is an error."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import SteerwatchError

Rows = list[dict[str, Any]]  # aliases: inside EventStore, ``list`` is its method
Fired = list[tuple[float, list[str]]]
Names = dict[str, list[str]]
Wheres = list[Any]
JSON_FIELDS = ("flags", "events", "prompt", "steering", "scores", "thresholds", "token_scores", "tokens")


class StoreError(SteerwatchError):
    """The event store cannot be opened or written."""


class EventStore:
    def __init__(self, url: str, *, base_dir: Path | None = None, readonly: bool = False) -> None:
        import sqlalchemy as sa

        rel = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
        if rel is not None and url != "sqlite:///:memory:" and not rel.startswith("file:"):  # file: = a SQLite URI
            p = Path(rel).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            if readonly:
                if not p.is_file():
                    raise StoreError(f"no event store at {p}; give the store file that steerwatch serve wrote "
                                     "(the policy's store.url, e.g. steerwatch-events.db)")
                url = f"sqlite:///file:{p.resolve().as_posix()}?mode=ro&uri=true"
            else:
                try:
                    p.parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(f"cannot create the folder {p.parent} for the event store {url!r} "
                                     f"({exc.strerror or exc}); fix store.url in the policy") from None
                url = f"sqlite:///{p}"
        self.url = url
        try:
            kw: dict[str, Any] = {}
            if url.startswith("sqlite"):
                kw["connect_args"] = {"check_same_thread": False}
            self.engine = sa.create_engine(url, future=True, **kw)
            meta = sa.MetaData()
            self.events = sa.Table(
                "steerwatch_events", meta,
                sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
                sa.Column("request_id", sa.String(64), nullable=False, index=True),
                sa.Column("created", sa.Float, nullable=False, index=True),  # unix time
                sa.Column("key_name", sa.String(200)),
                sa.Column("model", sa.String(300), nullable=False),
                sa.Column("policy_sha256", sa.String(64), nullable=False),
                sa.Column("endpoint", sa.String(40), nullable=False),
                sa.Column("flagged", sa.Boolean, nullable=False, index=True),
                sa.Column("flags", sa.Text, nullable=False),  # JSON list of detector names
                sa.Column("events", sa.Text, nullable=False),  # JSON list: block / degeneration / steer trigger
                sa.Column("prompt", sa.Text, nullable=False),  # JSON: messages or the prompt text
                sa.Column("response", sa.Text, nullable=False),
                sa.Column("steering", sa.Text, nullable=False),  # JSON list of applied specs
                sa.Column("scores", sa.Text, nullable=False),  # JSON: detector -> response score
                sa.Column("thresholds", sa.Text),  # JSON: detector -> threshold (null in stores older than it)
                sa.Column("token_scores", sa.Text, nullable=False),  # JSON: detector -> per-token scores
                sa.Column("tokens", sa.Text, nullable=False),  # JSON list of generated token strings
            )
            columns = {c["name"] for c in sa.inspect(self.engine).get_columns("steerwatch_events")} if \
                sa.inspect(self.engine).has_table("steerwatch_events") else set()
            if readonly and not columns:
                raise StoreError(f"{url!r} holds no steerwatch events table; is it a steerwatch event store?")
            if not readonly:
                meta.create_all(self.engine)
                if columns and "thresholds" not in columns:  # a store written before thresholds were kept
                    with self.engine.begin() as conn:
                        conn.execute(sa.text("ALTER TABLE steerwatch_events ADD COLUMN thresholds TEXT"))
                    columns.add("thresholds")
            self._has_thresholds = not columns or "thresholds" in columns
        except StoreError:
            raise
        except Exception as exc:  # sqlalchemy raises many types; the message is what matters
            raise StoreError(f"cannot open the event store {url!r}: {exc}") from None
        self._lock = threading.Lock()

    def check_writable(self) -> None:
        """Write a probe event and roll it back: a read-only, full or unreachable store fails here, at
        start-up, rather than on the first request that must be stored."""
        import sqlalchemy as sa

        probe = {"request_id": "startup-probe", "created": time.time(), "model": "", "policy_sha256": "",
                 "endpoint": "", "flagged": False, "flags": "[]", "events": "[]", "prompt": "{}", "response": "",
                 "steering": "[]", "scores": "{}", "thresholds": "{}", "token_scores": "{}", "tokens": "[]"}
        try:
            with self.engine.connect() as conn:
                trans = conn.begin()
                try:
                    conn.execute(self.events.insert().values(**probe))
                    conn.execute(sa.select(sa.func.count()).select_from(self.events))
                finally:
                    trans.rollback()
        except Exception as exc:  # the probe carries no one's data, so its error text may be shown
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreError(f"the event store {self.url!r} is not writable ({first}); fix its permissions or "
                             "free space, or point store.url elsewhere") from None

    def add(self, row: dict[str, Any]) -> int:
        """Insert one event; JSON fields are serialised here. Returns its id."""
        rec = dict(row)
        rec.setdefault("created", time.time())
        for k in JSON_FIELDS:
            rec[k] = json.dumps(rec.get(k, [] if k in ("flags", "events", "steering", "tokens") else {}))
        with self._lock, self.engine.begin() as conn:
            res = conn.execute(self.events.insert().values(**rec))
            key = res.inserted_primary_key
            assert key is not None  # an INSERT always has one
            return int(key[0])

    def list(self, *, flagged_only: bool = False, limit: int = 100, after_id: int = 0) -> Rows:
        import sqlalchemy as sa

        q = sa.select(*self._columns()).where(self.events.c.id > after_id).order_by(self.events.c.id).limit(limit)
        if flagged_only:
            q = q.where(self.events.c.flagged.is_(True))
        return self._fetch(q)

    def _columns(self) -> Wheres:
        return [c for c in self.events.c if self._has_thresholds or c.name != "thresholds"]

    def _fetch(self, q: Any) -> Rows:
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for r in rows:
            for k in JSON_FIELDS:
                r[k] = json.loads(r[k]) if r.get(k) is not None else {}
        return rows

    def get(self, event_id: int) -> dict[str, Any] | None:
        """One event by id, or None."""
        import sqlalchemy as sa

        rows = self._fetch(sa.select(*self._columns()).where(self.events.c.id == event_id))
        return rows[0] if rows else None

    def query(self, *, flagged_only: bool = False, detector: str | None = None, key_name: str | None = None,
              since: float | None = None, until: float | None = None, limit: int = 100,
              offset: int = 0) -> tuple[Rows, int]:
        """Events matching the filters, flagged first, then newest; (one page of them, how many match).
        ``detector``: events where that detector fired (a flag, a block or a conditional-steering
        trigger); ``since`` <= created < ``until`` (unix time)."""
        import sqlalchemy as sa

        where = self._where(flagged_only=flagged_only, detector=detector, key_name=key_name, since=since,
                            until=until)
        t = self.events.c
        q = sa.select(*self._columns()).where(*where).order_by(t.flagged.desc(), t.created.desc(), t.id.desc())
        with self.engine.connect() as conn:
            total = int(conn.execute(sa.select(sa.func.count()).select_from(self.events).where(*where)).scalar_one())
        return self._fetch(q.limit(limit).offset(offset)), total

    def fired(self, **filters: Any) -> Fired:
        """(created, the detectors that fired) of every event matching the filters of :meth:`query`:
        the light columns the counts over time are drawn from."""
        import sqlalchemy as sa

        t = self.events.c
        q = sa.select(t.created, t.flags, t.events).where(*self._where(**filters)).order_by(t.created)
        out = []
        with self.engine.connect() as conn:
            for created, flags, events in conn.execute(q):
                out.append((float(created), fired_detectors(json.loads(flags), json.loads(events))))
        return out

    def names(self) -> Names:
        """The key names and the detector names (every one that fired, and those scored in the latest
        200 events) in the store, for the filters."""
        import sqlalchemy as sa

        t = self.events.c
        with self.engine.connect() as conn:
            keys = sorted({k for (k,) in conn.execute(sa.select(t.key_name).distinct()) if k is not None})
            dets: set[str] = set()
            for (flags,) in conn.execute(sa.select(t.flags).distinct()):
                dets.update(json.loads(flags))
            for (scores,) in conn.execute(sa.select(t.scores).order_by(t.id.desc()).limit(200)):
                dets.update(json.loads(scores))
        return {"keys": keys, "detectors": sorted(dets)}

    def _where(self, *, flagged_only: bool = False, detector: str | None = None, key_name: str | None = None,
               since: float | None = None, until: float | None = None) -> Wheres:
        import sqlalchemy as sa

        t = self.events.c
        where: Wheres = []
        if flagged_only:
            where.append(t.flagged.is_(True))
        if key_name is not None:
            where.append(t.key_name == key_name)
        if since is not None:
            where.append(t.created >= since)
        if until is not None:
            where.append(t.created < until)
        if detector is not None:  # JSON text: the name as a JSON string in the flags, or a steer trigger's
            name = _like(json.dumps(detector))
            where.append(sa.or_(t.flags.like(f"%{name}%", escape="\\"),
                                t.events.like(f'%"detector": {name}%', escape="\\")))
        return where

    def count(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.events)).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


def fired_detectors(flags: list[str], events: list[dict[str, Any]]) -> list[str]:
    """The detectors that fired on one event: its flags (flag and block actions) and the trigger of
    a conditional steer; ``degeneration`` (the guard, not a detector) is kept as its own name."""
    out = list(flags)
    for e in events:
        if e.get("type") == "steer" and e.get("detector") not in out:
            out.append(str(e.get("detector")))
    return out


def _like(text: str) -> str:
    """``text`` for a LIKE pattern: its wildcards and the escape character taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
