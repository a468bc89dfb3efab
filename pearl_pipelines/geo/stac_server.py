"""Runs the local STAC API (`rustac serve`, in memory) over the collections of the local catalog."""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pearl_pipelines.geo.catalog import collection_files
from pearl_pipelines.services import Service, venv_bin


class StacServer(Service):
    """`rustac serve` on host:port over every `catalog_dir/*/collection.json`; a context manager.

    rustac loads the collections into memory at start: restart it after generating or ingesting.
    """

    def __init__(self, catalog_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.catalog_dir = Path(catalog_dir).resolve()
        self.host = host
        self.port = port
        super().__init__(
            "STAC API",
            [venv_bin("rustac"), "serve", "--addr", f"{host}:{port}", "--load-collection-items"],
            f"{self.url}/collections",
            # rustac resolves relative hrefs against its working directory: run it from the catalog.
            cwd=self.catalog_dir,
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> Self:
        collections = collection_files(self.catalog_dir)
        if not collections:
            raise FileNotFoundError(
                f"no STAC collections under {self.catalog_dir}; run `pearl generate` or `pearl ingest` first"
            )
        self.cmd = self.cmd[:5] + [str(p) for p in collections]
        super().start(timeout)
        return self
