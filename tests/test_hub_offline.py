"""A hub name without a network fails at once, saying what works offline (a local folder, a
preset), instead of five hub retries; the probe never leaves this machine here."""

from __future__ import annotations

import socket
import time

import pytest

from fst.core import hub


@pytest.fixture
def closed_endpoint(monkeypatch: pytest.MonkeyPatch) -> str:
    """HF_ENDPOINT on a loopback port nobody listens on (and no offline variables)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    hub.hub_unreachable_reason.cache_clear()
    yield f"127.0.0.1:{port}"
    hub.hub_unreachable_reason.cache_clear()


def test_the_offline_variables_and_a_closed_endpoint_are_detected(
    closed_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = time.monotonic()
    assert hub.hub_unreachable_reason().startswith(f"{closed_endpoint} cannot be reached")
    assert time.monotonic() - start < hub.PROBE_TIMEOUT_S + 1
    hub.hub_unreachable_reason.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_unreachable_reason() == "HF_HUB_OFFLINE is set"


def test_a_listening_endpoint_is_reachable(closed_endpoint, monkeypatch) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_unreachable_reason() is None


def test_fst_train_model_path_hub_name_offline_names_the_alternatives(closed_endpoint) -> None:
    from fst.training.model import PRESETS, ModelError, check_model_path

    start = time.monotonic()
    with pytest.raises(ModelError) as error:
        check_model_path("someone/not-cached-model")
    assert time.monotonic() - start < hub.PROBE_TIMEOUT_S + 2
    message = str(error.value)
    assert message.startswith("--model_path someone/not-cached-model: a Hugging Face hub name")
    assert "local model folder" in message and all(p in message for p in PRESETS)
    assert check_model_path("tiny") is False  # presets never ask the hub


def test_fst_export_model_path_hub_name_offline(closed_endpoint) -> None:
    from fst.export.source import SourceError, load_source

    with pytest.raises(SourceError, match="cannot be reached.*local model folder"):
        load_source(None, "someone/not-cached-model")
