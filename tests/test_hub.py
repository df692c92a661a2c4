"""A hub id that cannot be resolved fails in seconds with a message that says the hub is unreachable
and how to give a local path (issue 21, item 7). No test here touches the network: HF_HUB_OFFLINE,
a closed local port as the endpoint, or a patched connection."""
from __future__ import annotations

import socket

import pytest

from steerwatch import hub
from steerwatch.errors import ModelLoadError
from steerwatch.models import load_model

MADE_UP = "steerwatch-tests/no-such-model-7f3a"


def _closed_port() -> int:
    """A local port nothing listens on: bind, read the port, close."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything opens a connection."""
    def refuse(*a, **kw):
        raise AssertionError(f"network access attempted: {a}")

    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("var", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_env_skips_the_network_and_says_how_to_fix_it(monkeypatch, no_network, var):
    monkeypatch.setenv(var, "1")
    with pytest.raises(ModelLoadError) as err:
        load_model(MADE_UP, progress=False)
    msg = str(err.value)
    assert f"could not load {MADE_UP!r}: the Hugging Face hub is unreachable ({var} is set)" in msg
    assert f"hf download {MADE_UP} --local-dir DIR" in msg and "--model DIR" in msg


def test_offline_env_values(monkeypatch):
    for value, offline in [("1", True), ("YES", True), ("true", True), ("0", False), ("", False)]:
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        assert (hub.offline_by_env() == "HF_HUB_OFFLINE") is offline, value


def test_an_unreachable_endpoint_is_offline_after_one_connect(monkeypatch):
    port = _closed_port()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("STEERWATCH_HUB_TIMEOUT", "1.5")
    assert hub.endpoint() == ("127.0.0.1", port)
    assert hub.hub_mode() == ("offline", f"no connection to 127.0.0.1:{port} within 1.5 s")
    with pytest.raises(ModelLoadError, match=rf"the Hugging Face hub is unreachable \(no connection to "
                                             rf"127\.0\.0\.1:{port} within 1\.5 s\) and the model is not in the "
                                             r"local hub cache"):
        load_model(MADE_UP, progress=False)


def test_the_probe_uses_the_short_timeout(monkeypatch):
    seen = []

    def slow(address, timeout=None):
        seen.append((address, timeout))
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", slow)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("STEERWATCH_HUB_TIMEOUT", raising=False)
    assert hub.hub_mode() == ("offline", f"no connection to huggingface.co:443 within "
                                         f"{hub.DEFAULT_CONNECT_TIMEOUT:g} s")
    assert seen == [(("huggingface.co", 443), hub.DEFAULT_CONNECT_TIMEOUT)]


def test_a_listening_endpoint_is_online(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
        assert hub.hub_mode() == ("online", "")


@pytest.mark.parametrize("raw", ["soon", "0", "-1"])
def test_a_bad_timeout_is_an_error(monkeypatch, raw):
    monkeypatch.setenv("STEERWATCH_HUB_TIMEOUT", raw)
    with pytest.raises(ModelLoadError, match="STEERWATCH_HUB_TIMEOUT must be"):
        hub.connect_timeout()
