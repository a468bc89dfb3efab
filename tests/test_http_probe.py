"""Liveness probes share one client per process (pearl_pipelines/http_probe.py): a real loopback server sees one
connection for many probes, and a server that is gone is an httpx error, not a hang."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from pearl_pipelines.http_probe import probe
from pearl_pipelines.ml.tracking import mlflow_reachable


class _Health(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: what lets probes reuse a connection
    connections = 0

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_GET(self) -> None:
        body = b"OK"
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_probes_reuse_one_connection(server: str) -> None:
    _Health.connections = 0
    assert all(mlflow_reachable(server) for _ in range(5))
    assert probe(f"{server}/other", 1.0).status_code == 404
    assert _Health.connections == 1


def test_a_closed_port_is_an_http_error() -> None:
    with pytest.raises(httpx.HTTPError):
        probe("http://127.0.0.1:9/health", 0.5)
    assert mlflow_reachable("http://127.0.0.1:9") is False
