"""Imagery uploads from the browser: GeoTIFFs streamed to disk in chunks, checked, previewed and ingested.

An upload belongs to the user who started it: its files live under `review/uploads/<user id>/<upload id>/`, the id
is made here (random hex), and every lookup goes through the caller's own folder, so another user's id is an
unknown id (404). Chunks are appended at the offset the server says it has (`received`, the size of the file on
disk), so a page that lost its connection asks and resumes. A finished file is checked at once (a GeoTIFF, a CRS,
at least four bands, readable to its last row) and a bad one is deleted with a message that names the problem.

Ingesting runs `pearl ingest`'s own code (`ingest_files`: band mapping, stretch, COG, STAC item) in the background,
into a hidden staging catalog beside the real one; the collection `upload-<user id>-<slug>` appears in the catalog
only when every file succeeded (one rename and one collection save), so a failure leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rio_tiler.models import ImageData
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from pearl_pipelines.geo.catalog import load_collection_items, save_collection
from pearl_pipelines.geo.ingest import SUPPORTED_DTYPES, IngestError, _resolve_band_map, ingest_files
from pearl_pipelines.labels.accounts import User
from pearl_pipelines.settings import Settings
from pearl_pipelines.storage import ObjectStore, fetch_dir, publish_dir
from review_app.imagery import MAX_MOSAIC_PIXELS
from review_app.schemas import IngestOut, UploadCreate, UploadFileIngest, UploadInspection, UploadOut
from review_app.services.errors import Conflict, QuotaExceeded
from review_app.services.quotas import Quotas, tree_bytes

log = logging.getLogger(__name__)

UPLOADS_KEY = "review/uploads"  # Layout key of every user's uploads
STORED = "stored"  # in an upload's meta.json: it is in the remote object store (the store decides if it exists)
STAGING_DIR = ".staging"  # under the catalog: a collection is built here, then moved in whole
ACCEPTED = (
    "accepted: GeoTIFF files (.tif) with a coordinate reference system, at least 4 bands (red, green, blue, "
    f"near-infrared) and one pixel type of {', '.join(SUPPORTED_DTYPES)}"
)
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
INGEST_ID = re.compile(r"^[0-9a-f]{24}$")
COLLECTION_PREFIX = "upload-"
_OWNED_COLLECTION = re.compile(r"^upload-(\d+)-[a-z0-9][a-z0-9-]*$")
PREVIEW_SIZE = 256
# One file's pixels, at most what a project's mosaic may hold: it bounds the ingest's memory (it holds the whole RGBN
# uint8 image before writing the COG), and a larger file could not be mapped in the review app anyway.
MAX_PIXELS = MAX_MOSAIC_PIXELS
MIN_BANDS = 4


def upload_collection(user_id: int, name: str) -> str:
    """`upload-<user id>-<slug of name>`: the local collection an upload named `name` is ingested into."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    if not slug:
        raise ValueError(f"imagery name {name[:60]!r} needs at least one letter or digit (a-z, 0-9)")
    return f"{COLLECTION_PREFIX}{int(user_id)}-{slug}"


def collection_owner(collection: str) -> int | None:
    """The user id an uploaded collection belongs to; None for any other collection (generated, `pearl ingest`)."""
    match = _OWNED_COLLECTION.match(collection)
    return int(match.group(1)) if match else None


def may_use_collection(collection: str, user_id: int) -> bool:
    """Whether a user may read a local collection (list it, make a project of it): uploads only their uploader."""
    owner = collection_owner(collection)
    return owner is None or owner == user_id


def check_imagery_owner(imagery: Mapping[str, Any], user_id: int) -> None:
    """KeyError (404, as for an unknown collection) when a new project's imagery is someone else's upload."""
    collection = str(imagery.get("collection", ""))
    if imagery.get("source", "local") == "local" and not may_use_collection(collection, user_id):
        raise KeyError(f"no local collection {str(imagery.get('collection'))[:64]!r}")


def publish_collection(store: ObjectStore | None, settings: Settings, collection: str) -> None:
    """An uploaded collection just ingested, to the remote store (its collection.json last), so that a project of it
    can be made through any app process (`fetch_collection`). No-op without a remote store."""
    if store is not None and store.remote:
        folder = settings.catalog_dir / collection  # not resolved: its key is under PEARL_HOME's catalog/
        publish_dir(store, folder, settings.layout, last=("collection.json",))


def fetch_collection(store: ObjectStore | None, settings: Settings, collection: str) -> bool:
    """An uploaded collection another app process ingested (`publish_collection`), downloaded into this catalog when
    it is not here, its absolute hrefs made this catalog's. Whether it is here now. Only uploaded collections
    (`upload-<user>-<slug>`) travel: the operator's own collections are on every process's disk."""
    final = settings.catalog_dir / collection
    if store is None or not store.remote or (final / "collection.json").is_file():
        return (final / "collection.json").is_file()
    if collection_owner(collection) is None:
        return False
    staging = settings.catalog_dir / STAGING_DIR / f"fetch-{secrets.token_hex(8)}"
    part = staging / collection
    try:
        staging.mkdir(parents=True, exist_ok=True)
        if not fetch_dir(store, settings.layout.key(final), part, marker="collection.json"):
            return False
        links = json.loads((part / "collection.json").read_text()).get("links", [])
        self_href = next((link["href"] for link in links if link.get("rel") == "self"), None)
        if self_href:  # the ingesting process's folder, named by every href: this catalog's instead
            old, new = str(Path(self_href).parent), str(settings.catalog_dir.resolve() / collection)
            for path in part.rglob("*.json"):
                path.write_text(path.read_text().replace(old, new))
        try:
            os.rename(part, final)
        except OSError:  # fetched meanwhile by another thread: theirs is the same collection
            if not (final / "collection.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return (final / "collection.json").is_file()


def _safe_stem(filename: str) -> str:
    """A file name's stem reduced to what a STAC item id may hold (ingest names the item after it)."""
    stem = Path(filename.replace("\\", "/")).name
    stem = stem[: -len(Path(stem).suffix)] if Path(stem).suffix.lower() in (".tif", ".tiff") else stem
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:60] or "image"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UploadError(ValueError):
    """A bad upload request (400): the message says what was wrong and what is accepted."""


class UploadTooLarge(UploadError):
    """An upload over PEARL_UPLOAD_MAX_BYTES (413)."""


class UploadService:
    """With a remote object store (PEARL_STORAGE_URL=s3://...), a complete upload (its file, then its meta.json) and
    every ingest's progress go to their layout keys too, so that any app process serves them: one without a copy
    reads the meta.json from the store, previews the file in place and downloads it to ingest it. The store is
    the truth for complete uploads: one deleted (or ingested) through another process is gone here too. Chunks of an
    upload still being received are written to the disk of the process that created it: they must reach that
    process (the page sends them in order; a balancer keeps the connection's process)."""

    def __init__(self, *, settings: Settings, quotas: Quotas) -> None:
        self.settings, self.quotas = settings, quotas
        self.root = settings.layout.path(UPLOADS_KEY)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pearl-ingest")
        self._guard = threading.Lock()
        store = ObjectStore.from_settings(settings) if settings.storage_url else None
        self.remote: ObjectStore | None = store if store is not None and store.remote else None

    # -- the remote object store (none: local files only, nothing else is read or written) --------------------

    def _key(self, path: Path) -> str:
        return self.settings.layout.key(path)

    def _publish(self, folder: Path, meta: Mapping[str, Any]) -> None:
        """A complete upload to the store: its file (when kept), then its meta.json (marked `stored`)."""
        if self.remote is None:
            return
        data = self._data(folder, meta)
        if data.is_file():
            self.remote.put_file(data, self._key(data))
        self.remote.put_bytes(json.dumps({**meta, STORED: True}).encode(), self._key(folder / "meta.json"))

    def _fetch_meta(self, folder: Path) -> bool:
        """An upload another process accepted: its meta.json from the store to this disk (not its file). Whether
        the store has it."""
        if self.remote is None:
            return False
        try:
            data = self.remote.get_bytes(self._key(folder / "meta.json"))
        except FileNotFoundError:
            return False
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"meta.json.{secrets.token_hex(4)}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / "meta.json")
        return True

    def _stale(self, folder: Path) -> bool:
        """A stored upload whose objects are gone (deleted or ingested through another process): removed here."""
        try:
            if self.remote is None or not self._meta(folder).get(STORED):
                return False
        except (OSError, ValueError):  # being deleted meanwhile: the caller's reads answer for it
            return False
        if self.remote.exists(self._key(folder / "meta.json")):
            return False
        shutil.rmtree(folder, ignore_errors=True)
        return True

    def _sync(self, user: User) -> None:
        """This disk's copy of the user's complete uploads made what the store holds (remote store only)."""
        if self.remote is None:
            return
        folder = self._user_dir(user)
        stored = {
            key.rsplit("/", 2)[-2]
            for key in self.remote.list(self._key(folder))
            if key.endswith("/meta.json") and UPLOAD_ID.fullmatch(key.rsplit("/", 2)[-2])
        }
        for upload_id in stored:
            if not (folder / upload_id / "meta.json").is_file():
                self._fetch_meta(folder / upload_id)
        for child in folder.iterdir() if folder.is_dir() else ():
            if UPLOAD_ID.fullmatch(child.name) and child.name not in stored and (child / "meta.json").is_file():
                try:
                    if self._meta(child).get(STORED):
                        shutil.rmtree(child, ignore_errors=True)
                except (OSError, ValueError):
                    continue

    def _delete_stored(self, folder: Path) -> None:
        if self.remote is not None:
            self.remote.delete(self._key(folder))

    def _local_data(self, folder: Path, meta: Mapping[str, Any]) -> Path:
        """The upload's file on this disk: downloaded from the store (in pieces, written aside) when another process
        accepted it."""
        data = self._data(folder, meta)
        if data.is_file() or self.remote is None:
            return data
        size, step = int(meta["size"]), 64 << 20
        tmp = data.with_name(f".{data.name}.{secrets.token_hex(4)}.part")
        try:
            with open(tmp, "wb") as out:
                for start in range(0, size, step):
                    out.write(self.remote.get_bytes(self._key(data), start, min(size, start + step)))
            tmp.replace(data)
        finally:
            tmp.unlink(missing_ok=True)
        return data

    # -- where things are ------------------------------------------------------------------------------------

    def _user_dir(self, user: User) -> Path:
        return self.root / str(int(user.id))

    def _dir(self, user: User, upload_id: str) -> Path:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise KeyError(f"no upload {upload_id[:40]!r}")
        folder = self._user_dir(user) / upload_id
        if not (folder / "meta.json").is_file() and not self._fetch_meta(folder):
            raise KeyError(f"no upload {upload_id!r}")
        if self._stale(folder):
            raise KeyError(f"no upload {upload_id!r}")
        return folder

    def _meta(self, folder: Path) -> dict[str, Any]:
        return json.loads((folder / "meta.json").read_text())  # type: ignore[no-any-return]

    def _save_meta(self, folder: Path, meta: Mapping[str, Any]) -> None:
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        tmp.replace(folder / "meta.json")  # readers never see half a file

    @staticmethod
    def _data(folder: Path, meta: Mapping[str, Any]) -> Path:
        return folder / f"{meta['stem']}.tif"

    def _out(self, folder: Path, meta: Mapping[str, Any]) -> UploadOut:
        data = self._data(folder, meta)
        received = data.stat().st_size if data.is_file() else (meta["size"] if meta["state"] == "ready" else 0)
        return UploadOut(
            id=folder.name,
            filename=meta["filename"],
            size=meta["size"],
            received=received,
            chunk_bytes=self.chunk_bytes,
            state=meta["state"],
            error=meta.get("error"),
            inspection=UploadInspection(**meta["inspection"]) if meta.get("inspection") else None,
            created_at=meta["created_at"],
        )

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_limit(self.settings)

    @staticmethod
    def chunk_limit(settings: Settings) -> int:
        """Bytes per PUT: the largest body the app accepts (PEARL_MAX_BODY_BYTES), at most 8 MiB."""
        return min(settings.max_body_bytes, 8 << 20)

    # -- quota -----------------------------------------------------------------------------------------------

    def bytes_used(self, user: User) -> int:
        """What the user's projects, uploads (their announced size: room is kept for what is still to come) and
        uploaded collections hold."""
        used = self.quotas.bytes_of(self.quotas.owned_projects(user))
        used += sum(int(m["size"]) for m in self._metas(user) if m["state"] != "rejected")  # rejected: bytes deleted
        catalog = self.settings.catalog_dir
        if catalog.is_dir():
            used += sum(tree_bytes(p) for p in catalog.iterdir() if collection_owner(p.name) == user.id)
        return used

    def _check_quota(self, user: User, more: int) -> None:
        used, quota = self.bytes_used(user), self.settings.quota_bytes
        if used + more > quota:
            raise QuotaExceeded(
                f"storage quota reached: your projects and uploads hold {used / 2**30:.2f} GiB, this upload needs "
                f"{more / 2**30:.2f} GiB more and PEARL_QUOTA_BYTES allows {quota / 2**30:.2f} GiB per user; "
                "delete uploads or projects, or ask an operator"
            )

    def _metas(self, user: User) -> Iterator[dict[str, Any]]:
        self._sync(user)
        folder = self._user_dir(user)
        if not folder.is_dir():
            return
        for child in folder.iterdir():
            if UPLOAD_ID.fullmatch(child.name) and (child / "meta.json").is_file():
                try:
                    yield {**self._meta(child), "id": child.name}
                except (OSError, ValueError):
                    continue  # a folder being deleted

    # -- the upload protocol ---------------------------------------------------------------------------------

    def create(self, user: User, req: UploadCreate) -> UploadOut:
        limit = self.settings.upload_max_bytes
        if req.size == 0:
            raise UploadError(f"{req.filename} is empty (0 bytes); {ACCEPTED}")
        if req.size > limit:
            raise UploadTooLarge(
                f"{req.filename} is {req.size / 2**20:.1f} MiB; PEARL_UPLOAD_MAX_BYTES allows files up to "
                f"{limit / 2**20:.1f} MiB"
            )
        if Path(req.filename).suffix.lower() not in (".tif", ".tiff"):
            raise UploadError(f"{req.filename} is not a .tif or .tiff file; {ACCEPTED}")
        self._check_quota(user, req.size)
        upload_id = secrets.token_hex(16)
        folder = self._user_dir(user) / upload_id
        folder.mkdir(parents=True)
        meta = {
            "filename": req.filename,
            "stem": _safe_stem(req.filename),
            "size": req.size,
            "state": "receiving",
            "created_at": _now().isoformat(),
        }
        self._data(folder, meta).touch()
        self._save_meta(folder, meta)
        return self._out(folder, meta)

    def get(self, user: User, upload_id: str) -> UploadOut:
        folder = self._dir(user, upload_id)
        return self._out(folder, self._meta(folder))

    def list_mine(self, user: User) -> list[UploadOut]:
        folder = self._user_dir(user)
        found = [self._out(folder / m["id"], m) for m in self._metas(user)]
        return sorted(found, key=lambda u: u.created_at)

    def delete(self, user: User, upload_id: str) -> None:
        folder = self._dir(user, upload_id)
        self._delete_stored(folder)
        shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        with open(folder / ".lock", "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Conflict("another chunk of this upload is being written; retry when it is done") from None
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def write_chunk(
        self, user: User, upload_id: str, content_range: str | None, body: AsyncIterator[bytes]
    ) -> UploadOut:
        """Append one chunk (`Content-Range: bytes START-END/SIZE`) at START, which must be what the server has."""
        folder = self._dir(user, upload_id)
        meta = self._meta(folder)
        start, end, total = _parse_range(content_range, meta["size"])
        with self._locked(folder):
            meta = self._meta(folder)
            if meta["state"] != "receiving":
                raise Conflict(f"upload {upload_id} is complete ({meta['state']}); start a new upload to send again")
            data = self._data(folder, meta)
            have = data.stat().st_size
            if start != have:
                raise Conflict(f"the server has {have} bytes of this upload; send the chunk that starts at byte {have}")
            expected, written = end - start + 1, 0
            with open(data, "ab") as out:
                try:
                    async for piece in body:
                        if written + len(piece) > expected:
                            out.truncate(start + written)  # never keep more than the range announced
                            raise UploadError(
                                f"the chunk is longer than its Content-Range bytes {start}-{end}/{total} announces"
                            )
                        out.write(piece)
                        written += len(piece)
                except ClientDisconnect:
                    pass  # the connection dropped: what arrived is kept, the page asks for `received` and resumes
            if written != expected:
                raise UploadError(
                    f"the chunk held {written} bytes but its Content-Range announced {expected}; the server kept "
                    f"them: send the rest from byte {start + written}"
                )
            if start + written == meta["size"]:
                await run_in_threadpool(self._finish, folder, meta)
        return self._out(folder, self._meta(folder))

    def _finish(self, folder: Path, meta: dict[str, Any]) -> None:
        """The whole file is here: check it now; a bad one is deleted, its message kept."""
        data = self._data(folder, meta)
        try:
            meta["inspection"] = inspect_geotiff(data, meta["filename"])
            meta["state"] = "ready"
        except IngestError as exc:
            meta["state"], meta["error"] = "rejected", str(exc)
            data.unlink(missing_ok=True)
        except Exception:  # never leave a complete upload unchecked: refuse it, keep the details in the log
            log.exception("checking upload %s failed", folder.name)
            meta["state"], meta["error"] = "rejected", f"{meta['filename']} could not be checked; {ACCEPTED}"
            data.unlink(missing_ok=True)
        if self.remote is not None:
            try:
                self._publish(folder, meta)
                meta[STORED] = True
            except Exception:  # kept on this disk only: still usable through this process
                log.exception("upload %s: storing it in the object store failed", folder.name)
        self._save_meta(folder, meta)

    # -- preview ---------------------------------------------------------------------------------------------

    def preview_png(self, user: User, upload_id: str, bands: Sequence[int] | None) -> bytes:
        """A small PNG of three bands (default: the file's red, green, blue), stretched 2-98 %, rendered here."""
        from review_app.gtiff_reader import GTiffReader  # the tile routes' reader: GTiff only, never a VRT

        folder = self._dir(user, upload_id)
        meta = self._meta(folder)
        if meta["state"] != "ready":
            raise Conflict(f"upload {upload_id} is {meta['state']}; a preview needs the whole, checked file")
        inspection = meta["inspection"]
        count = inspection["count"]
        indexes = list(bands) if bands else list((inspection.get("band_map") or [1, 2, 3])[:3])
        if len(indexes) != 3 or not all(1 <= b <= count for b in indexes):
            raise UploadError(f"preview bands must be three band numbers between 1 and {count}, e.g. 3,2,1")
        data, env = self._data(folder, meta), {}
        source = str(data)
        if not data.is_file() and self.remote is not None:  # another process's upload: read in place in the store
            source, env = self.remote.gdal_path(self._key(data)), self.remote.gdal_env()
        with rasterio.Env(**env), GTiffReader(source) as reader:
            image = reader.preview(indexes=indexes, max_size=PREVIEW_SIZE)
        if np.ma.getmaskarray(image.array).all():  # e.g. NIR flagged as alpha: show the pixels, not that "mask"
            image = ImageData(np.ma.MaskedArray(image.array.data, mask=False), bounds=image.bounds, crs=image.crs)
        pixels = np.ma.masked_invalid(image.array.astype("float64"))
        ranges = []
        for band in pixels:
            valid = band.compressed()
            low, high = np.percentile(valid, (2, 98)) if valid.size else (0.0, 1.0)
            ranges.append((float(low), float(max(high, low + 1e-6))))
        return image.rescale(in_range=ranges).render(img_format="PNG")

    # -- ingest ----------------------------------------------------------------------------------------------

    def _ingest_file(self, user: User, ingest_id: str) -> Path:
        if not INGEST_ID.fullmatch(ingest_id):
            raise KeyError(f"no imagery ingest {ingest_id[:40]!r}")
        return self._user_dir(user) / "ingests" / f"{ingest_id}.json"

    def get_ingest(self, user: User, ingest_id: str) -> IngestOut:
        path = self._ingest_file(user, ingest_id)
        if self.remote is not None:  # the process running it writes its progress there
            try:
                return IngestOut.model_validate_json(self.remote.get_bytes(self._key(path)))
            except FileNotFoundError:
                pass
        if not path.is_file():
            raise KeyError(f"no imagery ingest {ingest_id!r}")
        return IngestOut.model_validate_json(path.read_text())

    def _save_ingest(self, user: User, job: IngestOut) -> None:
        path = self._ingest_file(user, job.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(job.model_dump_json())
        tmp.replace(path)
        if self.remote is not None:
            self.remote.put_bytes(job.model_dump_json().encode(), self._key(path))

    def start_ingest(self, user: User, name: str, files: Sequence[UploadFileIngest]) -> IngestOut:
        """Check the request now (400/404/409), then ingest in the background; the answer says how to follow it."""
        try:
            collection = upload_collection(user.id, name)
        except ValueError as exc:
            raise UploadError(str(exc)) from None
        if (self.settings.catalog_dir / collection).exists() or (
            self.remote is not None
            and self.remote.exists(f"{self._key(self.settings.catalog_dir / collection)}/collection.json")
        ):
            raise Conflict(f"you already have imagery named {name!r} ({collection}); choose another name")
        plan: list[tuple[Path, tuple[int, int, int, int], str]] = []
        stems: dict[str, str] = {}
        for entry in files:
            folder = self._dir(user, entry.upload_id)
            meta = self._meta(folder)
            if meta["state"] != "ready":
                why = f": {meta['error']}" if meta.get("error") else ""
                raise Conflict(f"upload {meta['filename']} is {meta['state']}{why}; only complete, checked files")
            count = meta["inspection"]["count"]
            band_map = tuple(entry.band_map) if entry.band_map else meta["inspection"].get("band_map")
            if band_map is None:
                raise UploadError(
                    f"{meta['filename']}: its bands do not say which is red, green, blue and NIR; choose the band "
                    f"for each (1..{count})"
                )
            if not all(1 <= b <= count for b in band_map):
                raise UploadError(f"{meta['filename']}: band numbers must be between 1 and {count}, got {band_map}")
            if meta["stem"] in stems:
                raise UploadError(f"{meta['filename']} and {stems[meta['stem']]} would be the same item; rename one")
            stems[meta["stem"]] = meta["filename"]
            plan.append((self._data(folder, meta), band_map, entry.upload_id))  # type: ignore[arg-type]
        self._check_quota(user, 0)
        job = IngestOut(
            id=secrets.token_hex(12), collection=collection, state="queued", progress=0.0, message="waiting"
        )
        self._save_ingest(user, job)
        self._pool.submit(self._run_ingest, user, job, name, plan)
        return job

    def _run_ingest(
        self, user: User, job: IngestOut, name: str, plan: list[tuple[Path, tuple[int, int, int, int], str]]
    ) -> None:
        catalog = self.settings.catalog_dir
        staging = catalog / STAGING_DIR / job.id
        job.state = "running"
        try:
            for index, (planned, band_map, _) in enumerate(plan):
                job.progress, job.message = index / (len(plan) + 1), f"file {index + 1} of {len(plan)}: {planned.name}"
                self._save_ingest(user, job)
                path = self._local_data(planned.parent, self._meta(planned.parent))  # another process's: fetched
                # `pearl ingest`'s own code: checks, band mapping, stretch, COG, STAC item (into the staging catalog)
                ingest_files([path], staging, job.collection, band_map=band_map)
            job.progress, job.message = len(plan) / (len(plan) + 1), "adding the collection to the catalog"
            self._save_ingest(user, job)
            self._move_in(staging, job.collection, name)
            publish_collection(self.remote, self.settings, job.collection)  # for the other processes (remote store)
        except (IngestError, RasterioError, OSError, ValueError) as exc:
            if isinstance(exc, RasterioError):
                message = (
                    f"a file could not be read to its end ({exc}); it may be damaged or truncated: upload it again"
                )
            else:
                message = str(exc)
            log.info("ingest %s into %s failed: %s", job.id, job.collection, message)
            job.state, job.error, job.message = "failed", message, "failed"
        except Exception:
            log.exception("ingest %s into %s crashed", job.id, job.collection)
            job.state, job.error = "failed", "the ingest failed unexpectedly; the server log has the details"
        else:
            job.state, job.progress, job.message = "done", 1.0, f"{len(plan)} file(s) ingested into {job.collection}"
            for _, _, upload_id in plan:  # the COGs are in the catalog now: the raw files only cost quota
                with contextlib.suppress(Exception):
                    self._delete_stored(self._user_dir(user) / upload_id)
                shutil.rmtree(self._user_dir(user) / upload_id, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._save_ingest(user, job)

    def _move_in(self, staging: Path, collection: str, name: str) -> None:
        """Staged collection -> catalog: one rename of its folder, then the collection written with final hrefs."""
        catalog = self.settings.catalog_dir.resolve()
        items = load_collection_items(staging, collection)
        source, final = (staging / collection).resolve(), catalog / collection
        (source / "collection.json").unlink()  # invisible in the catalog until the save below
        with self._guard:
            if final.exists():
                raise IngestError(f"imagery named {name!r} ({collection}) appeared meanwhile; choose another name")
            os.rename(source, final)
        try:
            for item in items:
                item.clear_links()
                for asset in item.assets.values():
                    href = Path(asset.href)
                    if href.is_relative_to(source):
                        asset.href = str(final / href.relative_to(source))
            save_collection(catalog, collection, f"Imagery uploaded in the review app: {name}", items, title=name)
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise

    @staticmethod
    def check_imagery_owner(imagery: Mapping[str, Any], user: User) -> None:
        """Before a project is made: 404 (as for an unknown collection) when its imagery is another user's upload."""
        check_imagery_owner(imagery, user.id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _parse_range(header: str | None, size: int) -> tuple[int, int, int]:
    accepted = f"send `Content-Range: bytes START-END/{size}` (END inclusive, END < {size})"
    match = re.fullmatch(r"\s*bytes\s+(\d{1,15})-(\d{1,15})/(\d{1,15})\s*", header or "")
    if match is None:
        raise UploadError(f"missing or malformed Content-Range header; {accepted}")
    start, end, total = (int(g) for g in match.groups())
    if total != size or end < start or end >= size:
        raise UploadError(
            f"Content-Range bytes {start}-{end}/{total} does not fit this upload of {size} bytes; {accepted}"
        )
    return start, end, total


def inspect_geotiff(path: Path, filename: str) -> dict[str, Any]:
    """What the page needs to know about an uploaded file, or IngestError naming what is wrong with it."""
    try:
        src = rasterio.open(path, driver="GTiff")  # GeoTIFF only: a VRT or any other format GDAL knows is refused
    except RasterioError:
        raise IngestError(f"{filename} is not a GeoTIFF (GDAL cannot read it as one); {ACCEPTED}") from None
    with src:
        if src.crs is None:
            raise IngestError(
                f"{filename} has no coordinate reference system (it is not georeferenced); {ACCEPTED}. "
                "Assign one with e.g. `gdal_edit.py -a_srs EPSG:32631 file.tif`"
            )
        if src.count < MIN_BANDS:
            raise IngestError(
                f"{filename} has {src.count} band(s); PEARL needs red, green, blue and near-infrared; {ACCEPTED}"
            )
        if src.width * src.height > MAX_PIXELS:
            raise IngestError(
                f"{filename} is {src.width} x {src.height} px ({src.width * src.height / 1e6:.0f} Mpx); the review "
                f"app maps imagery of at most {MAX_PIXELS / 1e6:.0f} Mpx: crop it, e.g. with gdal_translate -srcwin, "
                "or ask an operator to ingest it for regional maps (`pearl ingest`)"
            )
        if src.transform.b != 0 or src.transform.d != 0:
            raise IngestError(f"{filename} has a rotated pixel grid; warp it north-up first (gdalwarp); {ACCEPTED}")
        if len(set(src.dtypes)) > 1 or src.dtypes[0] not in SUPPORTED_DTYPES:
            raise IngestError(f"{filename} has pixel type {', '.join(sorted(set(src.dtypes)))}; {ACCEPTED}")
        try:  # a file cut short still opens (its header is at the start): its last rows cannot be read
            for row in (0, src.height - 1):
                src.read(window=Window(0, row, src.width, 1))
        except RasterioError:
            raise IngestError(
                f"{filename} is truncated or damaged: its pixels cannot be read to the last row; upload the whole "
                f"file again; {ACCEPTED}"
            ) from None
        try:
            band_map: list[int] | None = list(_resolve_band_map(src, path, None))
            note = ""
        except IngestError as exc:  # the file does not say which band is which: the page asks the user
            band_map, note = None, str(exc).replace(f"{path}: ", "", 1).split(";")[0]
        bounds = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
        return {
            "width": src.width,
            "height": src.height,
            "count": src.count,
            "dtype": src.dtypes[0],
            "crs": src.crs.to_string(),
            "bounds": [float(v) for v in bounds],
            "descriptions": [d or "" for d in src.descriptions],
            "colorinterp": [ci.name if ci != ColorInterp.undefined else "" for ci in src.colorinterp],
            "band_map": band_map,
            "band_note": note,
        }
