"""The event store: flagged (optionally all) responses with their prompt, response, per-token
scores, steering, policy hash and time. SQLite (tested; a relative path is relative to the policy
file, a ``sqlite:///file:...?uri=true`` URL is passed to SQLite as is). Other SQLAlchemy URLs need
their driver installed and are not tested. Checked writable at start-up (:meth:`check_writable`),
before the model loads. Written by the engine's worker thread, so a client that disconnects
mid-stream loses nothing."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import SteerwatchError


class StoreError(SteerwatchError):
    """The event store cannot be opened or written."""


class EventStore:
    def __init__(self, url: str, *, base_dir: Path | None = None) -> None:
        import sqlalchemy as sa

        rel = url[len("sqlite:///"):] if url.startswith("sqlite:///") else None
        if rel is not None and url != "sqlite:///:memory:" and not rel.startswith("file:"):  # file: = a SQLite URI
            p = Path(rel).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
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
                sa.Column("token_scores", sa.Text, nullable=False),  # JSON: detector -> per-token scores
                sa.Column("tokens", sa.Text, nullable=False),  # JSON list of generated token strings
            )
            meta.create_all(self.engine)
        except Exception as exc:  # sqlalchemy raises many types; the message is what matters
            raise StoreError(f"cannot open the event store {url!r}: {exc}") from None
        self._lock = threading.Lock()

    def check_writable(self) -> None:
        """Write a probe event and roll it back: a read-only, full or unreachable store fails here, at
        start-up, rather than on the first request that must be stored."""
        import sqlalchemy as sa

        probe = {"request_id": "startup-probe", "created": time.time(), "model": "", "policy_sha256": "",
                 "endpoint": "", "flagged": False, "flags": "[]", "events": "[]", "prompt": "{}", "response": "",
                 "steering": "[]", "scores": "{}", "token_scores": "{}", "tokens": "[]"}
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
        for k in ("flags", "events", "prompt", "steering", "scores", "token_scores", "tokens"):
            rec[k] = json.dumps(rec.get(k, [] if k in ("flags", "events", "steering", "tokens") else {}))
        with self._lock, self.engine.begin() as conn:
            res = conn.execute(self.events.insert().values(**rec))
            key = res.inserted_primary_key
            assert key is not None  # an INSERT always has one
            return int(key[0])

    def list(self, *, flagged_only: bool = False, limit: int = 100, after_id: int = 0) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        q = sa.select(self.events).where(self.events.c.id > after_id).order_by(self.events.c.id).limit(limit)
        if flagged_only:
            q = q.where(self.events.c.flagged.is_(True))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(q)]
        for r in rows:
            for k in ("flags", "events", "prompt", "steering", "scores", "token_scores", "tokens"):
                r[k] = json.loads(r[k])
        return rows

    def count(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.events)).scalar_one())

    def close(self) -> None:
        self.engine.dispose()
