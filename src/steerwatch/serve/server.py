"""Running the app: build an engine from a policy file, and run uvicorn (in the foreground for
``steerwatch serve``, or in a background thread on a loopback port for tests and benchmarks)."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SteerwatchError

if TYPE_CHECKING:  # pragma: no cover
    from ..models import LoadedModel
    from .engine import Engine
    from .store import EventStore


def open_store(pf: Any) -> EventStore:
    """The policy's event store, opened and checked writable (a StoreError otherwise)."""
    from .store import EventStore

    store = EventStore(pf.policy.store.url, base_dir=pf.path.parent if pf.path else None)
    try:
        store.check_writable()
    except Exception:
        store.close()
        raise
    return store


def build_engine(policy: str | Path | Any, *, loaded: LoadedModel | None = None, guard: bool = True,
                 log: Callable[[str], None] | None = None, store: EventStore | None = None,
                 backend: str | Any = "hf", backend_options: dict[str, Any] | None = None) -> Engine:
    """Open the store and check it writable (before the model: a store fault fails in seconds), load
    (or take) the model, resolve the policy against it, run the policy guard (refusing a policy it
    refuses) and start the engine. ``store``: one already opened by :func:`open_store`.

    ``backend``: the generation engine, ``hf`` (in this process) or ``vllm`` (started here with
    ``backend_options``), or a runtime engine object already started on ``loaded``."""
    from ..policy.resolve import resolve_policy
    from ..policy.schema import PolicyFile, load_policy
    from .engine import Engine

    pf = policy if isinstance(policy, PolicyFile) else load_policy(policy)
    if store is None:
        store = open_store(pf)
    if loaded is None:
        from ..models import load_model

        loaded = load_model(pf.policy.model, log=log)
    dep = resolve_policy(pf, loaded)
    report = None
    if guard:
        from ..policy.guard import check_policy

        report = check_policy(pf, loaded, deployment=dep, progress=log is not None, log=log)
        for row in report.rows:
            if log and row.level != "info":
                log(f"guard {row.level}: {row.message}")
        report.raise_if_refused()
    runtime_engine: Any = backend
    if isinstance(backend, str):
        from ..runtime import make_engine

        if log is not None and backend != "hf":
            log(f"starting the {backend} engine…")
        runtime_engine = make_engine(loaded, backend, **(backend_options or {}))
    engine = Engine(dep, store=store, backend=runtime_engine)
    engine.guard_report = report  # per-request steering is checked against the same distress direction
    return engine.start()


class RunningServer:
    """uvicorn in a background thread; ``base_url`` once started. A context manager."""

    def __init__(self, engine: Engine, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        from .app import create_app

        self.engine = engine
        config = uvicorn.Config(create_app(engine), host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="steerwatch-http", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise SteerwatchError(f"the server did not start on {host}:{port}")
            time.sleep(0.02)
        sock = self.server.servers[0].sockets[0]
        self.host, self.port = sock.getsockname()[:2]
        self.base_url = f"http://{self.host}:{self.port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_forever(engine: Engine, *, host: str, port: int) -> None:
    import uvicorn

    from .app import create_app

    if host not in ("127.0.0.1", "localhost", "::1"):
        from rich.console import Console

        Console(stderr=True, markup=False).print(f"warning: binding {host}: the server is reachable from other "
                                   "machines; make sure the policy requires API keys")
    uvicorn.run(create_app(engine), host=host, port=port, log_level="info")
