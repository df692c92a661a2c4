"""The event store: flagged (optionally all) responses with their prompt, response, per-token
scores, steering, policy hash and time. SQLite by default; any SQLAlchemy URL (e.g.
``postgresql+psycopg://user@host/db``) by configuration. Written by the engine's worker thread,
so a client that disconnects mid-stream loses nothing."""
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

        if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
            rel = url[len("sqlite:///"):]
            p = Path(rel).expanduser()
            if not p.is_absolute() and base_dir is not None:
                p = base_dir / p
            p.parent.mkdir(parents=True, exist_ok=True)
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
