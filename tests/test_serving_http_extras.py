"""HEAD on the GET routes, /docs that renders offline, and an unknown model id not echoed
back in full."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from serving_fakes import FakeGenerator

from fst.serving.app import create_app
from fst.serving.settings import ServingSettings


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(ServingSettings(model_name="tiny"), generator=FakeGenerator())
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield client


@pytest.mark.parametrize(
    "path", ["/health", "/ready", "/version", "/metrics", "/v1/models", "/v1/models/tiny", "/docs"]
)
def test_head_answers_as_get_without_a_body(client: TestClient, path: str) -> None:
    get, head = client.get(path), client.head(path)
    assert get.status_code == 200
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    if path != "/metrics":  # the metrics change between the two requests
        assert head.headers["content-length"] == str(len(get.content))


def test_head_on_a_post_route_is_still_405(client: TestClient) -> None:
    assert client.head("/v1/completions").status_code == 405


def test_docs_load_their_assets_from_the_server(client: TestClient) -> None:
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        external = re.findall(r"""(?:src|href)=["']?(https?://[^"' >]+)""", html)
        assert external == [], external
        assets = re.findall(r"""(?:src|href)=["']?(/[^"' >]+\.(?:js|css))""", html)
        assert assets
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 10_000, asset
    assert "swagger-ui-bundle.js" in client.get("/docs").text


def test_an_unknown_model_id_is_not_echoed_in_full(client: TestClient) -> None:
    r = client.get("/v1/models/" + "x" * 65_000)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert len(message) < 300 and "x" * 100 + "…" in message
    body = {"model": "y" * 65_000, "prompt": "Hello", "max_tokens": 2}
    assert len(client.post("/v1/completions", json=body).text) < 1000
