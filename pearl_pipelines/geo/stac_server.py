"""Runs the local STAC API (`rustac serve`, in memory) over the collections of the local catalog."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from pearl_pipelines.geo.catalog import collection_files


def rustac_binary() -> str:
    candidate = Path(sys.executable).parent / "rustac"
    return str(candidate) if candidate.exists() else "rustac"


class StacServer:
    """A `rustac serve` process on 127.0.0.1:port; use as a context manager or start()/stop()."""

    def __init__(self, catalog_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.catalog_dir = Path(catalog_dir).resolve()
        self.host = host
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> StacServer:
        collections = collection_files(self.catalog_dir)
        if not collections:
            raise FileNotFoundError(
                f"no STAC collections under {self.catalog_dir}; run `pearl generate` or `pearl ingest` first"
            )
        cmd = [rustac_binary(), "serve", "--addr", f"{self.host}:{self.port}", "--load-collection-items"]
        # rustac resolves relative hrefs against its working directory: run it from the catalog folder.
        self.process = subprocess.Popen(
            cmd + [str(p) for p in collections],
            cwd=self.catalog_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"rustac serve exited with {self.process.returncode}: {err.strip()}")
            try:
                if httpx.get(f"{self.url}/collections", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"STAC API did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None

    def __enter__(self) -> StacServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
