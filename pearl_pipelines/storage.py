"""Where the files that layout.py names live: a local folder (PEARL_HOME) or an S3-compatible bucket.

`ObjectStore.from_settings(settings)` gives the store of `settings.storage_url`: None is the local folder PEARL_HOME,
`s3://bucket/prefix` a bucket (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, the
usual boto3 chain; path-style addressing, so any S3-compatible server works). Keys are layout.py's keys (POSIX paths
relative to PEARL_HOME), never a name a request sent; a key with '..', a leading '/' or a backslash is refused.

GDAL reads a COG in the store in place, by HTTP range requests, never downloading it whole: `gdal_path(key)` is the
name to open (a local path, or /vsis3/bucket/prefix/key) and `gdal_env()` the options of `rasterio.Env` for it.
Free of heavy imports: boto3 is imported when an S3 store first talks to its server.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pearl_pipelines.layout import CLASSES_FILE, CONFIDENCE_FILE, Layout

if TYPE_CHECKING:
    from pearl_pipelines.settings import Settings

# S3 bucket naming rules: 3-63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit,
# no '..', not an IP address.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+")
_KEY_PART = re.compile(r"[A-Za-z0-9._=+@,-]+")  # what layout.py's keys are made of (no spaces, no control characters)


MAP_FILES = (CLASSES_FILE, CONFIDENCE_FILE)  # what the tile routes read of a published AOI map


class StorageError(ValueError):
    """A storage URL or key that cannot be used; the message says what is accepted."""


def check_key(key: str | PurePosixPath, *, prefix: bool = False) -> str:
    """`key` as a clean POSIX key relative to the store's root; StorageError for anything else. `prefix`: a folder
    key for list/delete, which may be empty (the whole store) or end with '/'."""
    text = str(key)
    if prefix and text in ("", "/"):
        return ""
    parts = text.rstrip("/").split("/") if prefix else text.split("/")
    if (
        text.startswith("/")
        or "\\" in text
        or not all(p and p not in (".", "..") and _KEY_PART.fullmatch(p) for p in parts)
    ):
        raise StorageError(
            f"storage key {text!r}: a relative POSIX path of letters, digits and . _ - = + @ , without '..' or '//'"
        )
    return "/".join(parts)


def parse_storage_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; StorageError names what is wrong otherwise."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise StorageError(f"PEARL_STORAGE_URL {url!r}: only s3://bucket/prefix is accepted (or unset: PEARL_HOME)")
    bucket = parts.netloc
    if not BUCKET.fullmatch(bucket) or ".." in bucket or _IP.fullmatch(bucket):
        raise StorageError(
            f"PEARL_STORAGE_URL {url!r}: bucket {bucket!r} must be 3-63 lower-case letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    if parts.query or parts.fragment or "@" in url:
        raise StorageError(f"PEARL_STORAGE_URL {url!r}: no user, query or fragment; s3://bucket/prefix only")
    prefix = parts.path.strip("/")
    return bucket, check_key(prefix, prefix=True) if prefix else ""


class ObjectStore:
    """The files of layout.py's keys, wherever they live. `remote`: False for the local folder."""

    remote = False

    @staticmethod
    def from_settings(settings: Settings) -> ObjectStore:
        return ObjectStore.open(settings.storage_url, settings.home_abs)

    @staticmethod
    def open(url: str | None, home: str | Path) -> ObjectStore:
        """The store of a storage URL: None is the local folder `home`."""
        if url is None or url == "":
            return LocalStore(Path(home))
        bucket, prefix = parse_storage_url(url)
        return S3Store(bucket, prefix)

    def put_file(self, local_path: str | Path, key: str) -> None:
        raise NotImplementedError

    def put_bytes(self, data: bytes, key: str) -> None:
        raise NotImplementedError

    def get_bytes(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        """The object's bytes, or only bytes [start, end) of it; FileNotFoundError when absent."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under a folder key (every level below it), in no promised order."""
        raise NotImplementedError

    def delete(self, prefix: str) -> int:
        """Remove the object `prefix` and every object under the folder `prefix/`; how many were removed."""
        raise NotImplementedError

    def gdal_path(self, key: str) -> str:
        """What GDAL opens to read the object in place."""
        raise NotImplementedError

    def gdal_env(self) -> dict[str, Any]:
        """`rasterio.Env` options under which `gdal_path` reads (none for local files)."""
        return {}


class LocalStore(ObjectStore):
    """Keys as files under a local folder (PEARL_HOME): what every process of one machine shares."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, local_path: str | Path, key: str) -> None:
        target = self.path(key)
        if Path(local_path).resolve() == target:
            return  # written in place already: the layout's local path is the store's
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        shutil.copyfile(local_path, tmp)
        tmp.replace(target)

    def put_bytes(self, data: bytes, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.part")
        tmp.write_bytes(data)
        tmp.replace(target)

    def get_bytes(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        with self.path(key).open("rb") as f:
            if start is None:
                return f.read()
            f.seek(start)
            return f.read(-1 if end is None else end - start)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = self.root / check_key(prefix, prefix=True)
        if folder.is_file():
            yield check_key(prefix)
            return
        for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
            if path.is_file():
                yield path.relative_to(self.root).as_posix()

    def delete(self, prefix: str) -> int:
        key = check_key(prefix, prefix=True)
        if not key:
            raise StorageError("refusing to delete the whole store")
        target = self.root / key
        if target.is_file():
            target.unlink()
            return 1
        count = sum(1 for p in target.rglob("*") if p.is_file()) if target.is_dir() else 0
        shutil.rmtree(target, ignore_errors=True)
        return count

    def gdal_path(self, key: str) -> str:
        return str(self.path(key))


class S3Store(ObjectStore):
    """Keys as objects under `s3://bucket/prefix/` of the endpoint AWS_ENDPOINT_URL (AWS itself when unset)."""

    remote = True

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        self.bucket, self.prefix = bucket, prefix
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if self.endpoint_url:
            parts = urlsplit(self.endpoint_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise StorageError(f"AWS_ENDPOINT_URL {self.endpoint_url!r}: http(s)://host[:port] is accepted")

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint_url!r})"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def object_key(self, key: str) -> str:
        key = check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _folder_key(self, prefix: str) -> str:
        key = check_key(prefix, prefix=True)
        return "/".join(p for p in (self.prefix, key) if p)

    @cached_property
    def _session(self) -> Any:
        import boto3

        return boto3.session.Session()

    @cached_property
    def client(self) -> Any:
        """A boto3 S3 client (thread-safe), path-style: `http://endpoint/bucket/key`."""
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"})
        region = self._session.region_name or "us-east-1"
        return self._session.client("s3", endpoint_url=self.endpoint_url, region_name=region, config=config)

    def put_file(self, local_path: str | Path, key: str) -> None:
        self.client.upload_file(str(local_path), self.bucket, self.object_key(key))

    def put_bytes(self, data: bytes, key: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)

    def get_bytes(self, key: str, start: int | None = None, end: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if start is not None:
            kwargs["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            return self.client.get_object(**kwargs)["Body"].read()  # type: ignore[no-any-return]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"{self.url}/{key}") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def _object_keys(self, folder: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{folder}/" if folder else ""):
            for item in page.get("Contents", ()):
                yield item["Key"]

    def list(self, prefix: str = "") -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        folder = self._folder_key(prefix)
        if prefix and self.exists(prefix):
            yield check_key(prefix)
        for key in self._object_keys(folder):
            yield key[strip:]

    def delete(self, prefix: str) -> int:
        if not check_key(prefix, prefix=True):
            raise StorageError("refusing to delete the whole store")
        folder = self._folder_key(prefix)
        keys = list(self._object_keys(folder))
        if self.exists(prefix):
            keys.append(folder)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def gdal_path(self, key: str) -> str:
        return f"/vsis3/{self.bucket}/{self.object_key(key)}"

    @cached_property
    def _rasterio_session(self) -> Any:
        from rasterio.session import AWSSession

        endpoint = urlsplit(self.endpoint_url).netloc if self.endpoint_url else None
        return AWSSession(self._session, endpoint_url=endpoint)

    def gdal_env(self) -> dict[str, Any]:
        """GDAL's /vsis3/ options for this endpoint and these keys: path-style, http where the endpoint is http, no
        directory listing on open (a COG is read by range requests: the header, then the blocks a read needs). The
        keys travel in a rasterio AWSSession (`session`): rasterio refuses them as plain options."""
        env: dict[str, Any] = {
            "session": self._rasterio_session,
            "AWS_VIRTUAL_HOSTING": "FALSE",
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        }
        if self.endpoint_url:
            env["AWS_HTTPS"] = "YES" if urlsplit(self.endpoint_url).scheme == "https" else "NO"
        return env


def older_versions(store: ObjectStore, folder: str, last: int) -> list[str]:
    """The folder keys `folder/v<n>` in the store with n <= `last` (an AOI's layer versions that are dropped)."""
    found = set()
    for key in store.list(folder):
        name = key[len(folder) :].lstrip("/").split("/", 1)[0]
        if name[:1] == "v" and name[1:].isdigit() and int(name[1:]) <= last:
            found.add(f"{folder}/{name}")
    return sorted(found)


def publish_dir(store: ObjectStore, local_dir: str | Path, layout: Layout, *, last: Iterable[str] = ()) -> int:
    """Upload every file under `local_dir` (a folder under `layout`'s root) to its layout key, the top-level files
    named in `last` (a completion marker, e.g. a model version's version.json) after all the others; files being
    written aside (`*.tmp`, `.*`) are left out. Returns how many files were uploaded."""
    local_dir = Path(local_dir)
    folder = check_key(layout.key(local_dir))  # ValueError outside the root, StorageError for a bad key
    late = {local_dir / name for name in last}
    files = [
        path
        for path in sorted(local_dir.rglob("*"))
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(".tmp")
    ]
    for path in sorted(files, key=lambda p: p in late):  # stable: the marker(s) last
        store.put_file(path, f"{folder}/{path.relative_to(local_dir).as_posix()}")
    return len(files)


def fetch_dir(store: ObjectStore, key: str, local_dir: str | Path, *, marker: str | None = None) -> bool:
    """Download the folder `key` of the store into `local_dir` (absent here): written aside and moved into place
    whole, so a reader never sees half of it. False when the store has no such folder (or lacks its `marker`, the
    file written last: not complete there); True when `local_dir` is there afterwards."""
    folder = check_key(key)
    local_dir = Path(local_dir)
    if marker is not None and not store.exists(f"{folder}/{check_key(marker)}"):
        return False
    names = [k[len(folder) + 1 :] for k in store.list(folder) if k.startswith(f"{folder}/")]
    if not names:
        return False
    part = local_dir.with_name(f".{local_dir.name}.fetch-{uuid.uuid4().hex[:8]}")
    try:
        for name in names:
            target = part.joinpath(*check_key(name).split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(store.get_bytes(f"{folder}/{name}"))
        try:
            part.rename(local_dir)
        except OSError:  # fetched meanwhile by another thread or process: theirs is the same folder
            if not local_dir.is_dir():
                raise
    finally:
        shutil.rmtree(part, ignore_errors=True)
    return True
