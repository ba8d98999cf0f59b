"""Whether the Hugging Face hub can be reached: asked once, quickly, before a hub name loads.

Offline, `transformers` retries a hub name five times (over 30 s) before failing, and its
error does not say that a local model folder or a preset needs no network. So a hub name
is first checked here: `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`, else one TCP connection
to the hub (or to the HTTPS proxy) within a few seconds. A model already in the local
cache still loads offline (`local_files_only`). Torch-free.
"""

from __future__ import annotations

import os
import socket
import threading
from functools import cache
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


@cache
def hub_unreachable_reason(timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the hub looks reachable, else why not (one line). Asked once a process."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in _TRUE:
            return f"{name} is set"
    endpoint = os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy if proxy and endpoint.startswith("https") else endpoint)
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    outcome: list[str | None] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome.append(None)
        except OSError as e:
            outcome.append(f"{host}:{port} cannot be reached: {e.strerror or e}")

    thread = threading.Thread(target=probe, name="fst-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {timeout_s:g} s"


def in_local_cache(repo_id: str) -> bool:
    """Whether the hub model `repo_id` is in the local Hugging Face cache (its config)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id, no huggingface_hub: not cached
        return False


def offline_message(what: str, reason: str, alternatives: str) -> str:
    return (
        f"{what}: a Hugging Face hub name, but the hub cannot be reached ({reason}) and the "
        f"model is not in the local cache; without a network give {alternatives}"
    )
