"""Hugging Face hub ids without the long wait: decide in seconds whether the hub can be used.

Left to itself, transformers retries an unreachable hub for most of a minute before it gives up.
:func:`hub_mode` answers first: ``offline`` when ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is
set or a TCP connection to the hub endpoint does not open within a few seconds (then only the
local hub cache is tried), else ``online``. :func:`unreachable` is the one-line error that says
how to give a local path instead.
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Literal
from urllib.parse import urlparse

from .errors import ModelLoadError

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_CONNECT_TIMEOUT = 3.0  # seconds; $STEERWATCH_HUB_TIMEOUT overrides
_TRUE = {"1", "true", "yes", "on"}


def offline_by_env() -> str | None:
    """The environment variable that switches the hub off, or None."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return var
    return None


def endpoint() -> tuple[str, int]:
    """(host, port) of the hub: $HF_ENDPOINT, else huggingface.co:443."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    return url.hostname or "huggingface.co", port


def connect_timeout() -> float:
    raw = os.environ.get("STEERWATCH_HUB_TIMEOUT")
    if not raw:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ModelLoadError(f"STEERWATCH_HUB_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ModelLoadError(f"STEERWATCH_HUB_TIMEOUT must be positive, got {raw!r}")
    return value


def reachable(host: str, port: int, *, timeout: float) -> bool:
    """Whether a TCP connection to host:port opens within ``timeout`` seconds. Name resolution runs
    in a daemon thread too, so a resolver that hangs cannot hold the caller past the timeout."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def hub_mode() -> tuple[Literal["online", "offline"], str]:
    """("online", "") or ("offline", why)."""
    var = offline_by_env()
    if var is not None:
        return "offline", f"{var} is set"
    host, port = endpoint()
    timeout = connect_timeout()
    if not reachable(host, port, timeout=timeout):
        return "offline", f"no connection to {host}:{port} within {timeout:g} s"
    return "online", ""


def unreachable(spec: str, why: str, exc: Exception | None = None) -> ModelLoadError:
    detail = f" ({type(exc).__name__}: {str(exc).splitlines()[0]})" if exc is not None and str(exc) else ""
    return ModelLoadError(
        f"could not load {spec!r}: the Hugging Face hub is unreachable ({why}) and the model is not in the local "
        f"hub cache{detail}. Download it where the hub is reachable (hf download {spec} --local-dir "
        "DIR) and pass the directory instead (--model DIR), or a .gguf file, or an embedded model: 'default' "
        "or 'gemma-3-270m'")
