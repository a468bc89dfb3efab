"""The Dagster loop's files in the object store: what one pod writes, another pod (its own PEARL_HOME) reads.

`StoredFiles(layout, store)` pairs a local tree (layout.py's keys under this process's PEARL_HOME) with the store of
PEARL_STORAGE_URL. `publish(path)` uploads a file or a folder written locally to its key (a folder's completion
marker, e.g. prediction.json, last); `local(path_or_key)` is the local path of a key, fetched from the store first
when it is not here. With no store, or the local folder as the store (PEARL_STORAGE_URL unset), both do nothing:
every process shares PEARL_HOME, and nothing is written or read besides what the caller does itself.

Free of heavy imports (boto3 comes with the first request of an S3 store): the worker and the resources import it.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pearl_pipelines.layout import Layout
from pearl_pipelines.storage import ObjectStore, check_key, fetch_dir, publish_dir


class StoredFileMissing(FileNotFoundError):
    """A key that is neither under this PEARL_HOME nor in the object store."""


@dataclass(frozen=True)
class StoredFiles:
    """Local files of `layout` mirrored to `store` (None or a LocalStore: local files only, nothing mirrored)."""

    layout: Layout
    store: ObjectStore | None = None

    @classmethod
    def open(cls, url: str | None, home: str | Path) -> StoredFiles:
        """The files under `home`, mirrored to the store of `url` (None: none)."""
        layout = Layout.at(home)
        return cls(layout, ObjectStore.open(url, layout.root) if url else None)

    @property
    def remote(self) -> bool:
        """Whether files are mirrored to a store other than this PEARL_HOME."""
        return self.store is not None and self.store.remote

    def key(self, path_or_key: str | Path) -> str:
        """The layout key of a local path under the root, or of a key (a relative path) as it is."""
        path = Path(path_or_key)
        if path.is_absolute():
            return check_key(self.layout.key(path))
        return check_key(PurePosixPath(str(path_or_key)).as_posix())

    def path(self, path_or_key: str | Path) -> Path:
        """The local path of a key (an absolute path is taken as it is)."""
        path = Path(path_or_key)
        return path if path.is_absolute() else self.layout.path(str(path_or_key))

    def publish(self, path_or_key: str | Path, *, last: tuple[str, ...] = ()) -> int:
        """Upload the local file or folder to its key; a folder's top-level files named in `last` (its completion
        marker) go after the others. How many files were uploaded: 0 when nothing is mirrored."""
        if not self.remote:
            return 0
        assert self.store is not None
        path = self.path(path_or_key)
        if path.is_dir():
            return publish_dir(self.store, path, self.layout, last=last)
        if not path.is_file():
            raise StoredFileMissing(f"cannot publish {path}: no such file or folder")
        self.store.put_file(path, self.key(path))
        return 1

    def local(self, path_or_key: str | Path, *, marker: str | None = None) -> Path:
        """The local path of a key, fetched from the store when it is not here (a file, or a folder whole; with
        `marker`, a folder counts as here, and as complete in the store, only with that file in it). Without a
        store, the local path as it is. StoredFileMissing (a FileNotFoundError) names the key and the store when
        neither has it."""
        path = self.path(path_or_key)
        here = (path / marker).is_file() if marker else path.exists()
        if here or not self.remote:
            return path
        assert self.store is not None
        try:
            key = self.key(path)
        except ValueError:  # outside PEARL_HOME: not a layout key, nothing in the store can be it
            return path
        if marker is None and self.store.exists(key):
            self._fetch_file(key, path)
            return path
        if marker is not None and path.is_dir():  # an incomplete folder from an earlier try: fetched again whole
            shutil.rmtree(path)
        if fetch_dir(self.store, key, path, marker=marker):
            return path
        what = f" (complete: with {marker})" if marker else ""
        raise StoredFileMissing(f"{key}{what} is neither under {self.layout.root} nor in the store {self.store!r}")

    def try_local(self, path_or_key: str | Path, *, marker: str | None = None) -> Path | None:
        """`local`, or None where neither this PEARL_HOME nor the store has the key."""
        try:
            return self.local(path_or_key, marker=marker)
        except StoredFileMissing:
            return None

    def exists(self, path_or_key: str | Path) -> bool:
        """Whether the file is here or (mirrored) in the store, without fetching it."""
        path = self.path(path_or_key)
        if path.is_file() or not self.remote:
            return path.is_file()
        assert self.store is not None
        return self.store.exists(self.key(path))

    def stored(self, path_or_key: str | Path) -> bool:
        """Whether the store (not this PEARL_HOME) has the file; False without a store of its own."""
        if not self.remote:
            return False
        assert self.store is not None
        return self.store.exists(self.key(path_or_key))

    def _fetch_file(self, key: str, path: Path) -> None:
        assert self.store is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.fetch-{uuid.uuid4().hex[:8]}")
        try:
            part.write_bytes(self.store.get_bytes(key))
            part.replace(path)
        finally:
            part.unlink(missing_ok=True)
