"""Every file the system writes, as a key relative to one root (PEARL_HOME): the one file layout.

The review app, the Dagster assets and the Pipes worker all name their files here. Keys are POSIX paths
relative to the root, so they travel unchanged to a worker pod that mounts PEARL_HOME elsewhere, and are
the seam where an object store (keys under a bucket prefix) will plug in. `Layout.path` turns a key into a
local path; nothing else joins folder names.

Free of heavy imports on purpose: the worker, the Dagster resources and the review app's tile routes import it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

TILE_IMAGE = "image.tif"
CLASSES_FILE = "classes.tif"
CONFIDENCE_FILE = "confidence.tif"
PREDICTION_META = "prediction.json"
EMBEDDINGS_META = "embeddings.json"  # an embedding cache's metadata, written last (ml/embeddings.py)
IMAGERY_MOSAIC = "mosaic.tif"
IMAGERY_DIGEST = re.compile(r"[0-9a-f]{64}")  # sha256 (hex) of an imagery source's canonical JSON


def tile_key_parts(key: str) -> tuple[str, str, str]:
    """("z", "x", "y") of a tile key "z-x-y"; a clear error for anything else."""
    parts = key.split("-")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"tile key {key!r} is not 'z-x-y' with three integers")
    z, x, y = parts
    return z, x, y


def tile_dir(root: str | Path, key: str) -> Path:
    """The folder of tile `key` ("z-x-y") under a local folder: root/z/x/y."""
    return Path(root).joinpath(*tile_key_parts(key))


def tile_path(tiles_dir: str | Path, key: str) -> Path:
    """The imagery COG of tile `key` under a local imagery tiles folder."""
    return tile_dir(tiles_dir, key) / TILE_IMAGE


def model_slug(name: str, version: str | int) -> str:
    """Folder-safe id of a registered model version: predictions of different models never overwrite each other."""
    return f"{name}-v{version}"


@dataclass(frozen=True)
class Layout:
    """The file tree under one root. Methods without `_path` return keys (str, POSIX, relative to the root)."""

    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Layout:
        return cls(Path(root).expanduser().resolve())

    def path(self, key: str | PurePosixPath) -> Path:
        """The local path of a key."""
        key = PurePosixPath(key)
        if key.is_absolute() or ".." in key.parts:
            raise ValueError(f"layout key {str(key)!r} must be relative to the root, without '..'")
        return self.root.joinpath(*key.parts)

    def key(self, path: str | Path) -> str:
        """The key of a local path under the root (symlinks inside the root kept); ValueError outside it."""
        path = Path(path)
        for candidate in (path.absolute(), path.resolve()):
            if candidate.is_relative_to(self.root):
                return candidate.relative_to(self.root).as_posix()
        raise ValueError(f"{path} is not under {self.root}")

    # -- imagery -------------------------------------------------------------------------------------------
    catalog = "catalog"  # local STAC catalog: one folder per collection (region)
    tiles = "tiles"

    def tile(self, key: str) -> str:
        """The imagery COG of a tile."""
        return "/".join((self.tiles, *tile_key_parts(key), TILE_IMAGE))

    @staticmethod
    def imagery_index(region: str) -> str:
        return f"imagery_index/{region}.parquet"

    # -- embeddings and predictions --------------------------------------------------------------------------
    @staticmethod
    def aoi_embeddings(base_model_slug: str, aoi_id: int) -> str:
        """Embedding cache of one AOI, per base model (every head on that backbone shares it)."""
        return f"embeddings/{base_model_slug}/aoi-{int(aoi_id)}"

    @staticmethod
    def aoi_predictions(base_model_slug: str, aoi_id: int) -> str:
        return f"predictions/{base_model_slug}/aois/aoi-{int(aoi_id)}"

    @staticmethod
    def tile_prediction(model_slug: str, key: str) -> str:
        """Classes + confidence COGs of one tile by one model version."""
        return "/".join(("predictions", model_slug, *tile_key_parts(key)))

    @staticmethod
    def region_map(region: str, model_slug: str) -> str:
        return f"maps/{region}/{model_slug}"

    # -- labels, models, reports ---------------------------------------------------------------------------
    @staticmethod
    def label_sets_of(project_id: int) -> str:
        """The folder of a project's label-set snapshots."""
        return f"label_sets/project-{int(project_id)}"

    @classmethod
    def label_set(cls, project_id: int, digest: str) -> str:
        return f"{cls.label_sets_of(project_id)}/{digest}.parquet"

    models = "models"
    registry_cache = "models/registry-cache"  # registered versions downloaded from MLflow, reused after
    reports = "reports"
    machine_cache = "cache"  # per-machine measurements (e.g. the precision probe), safe to delete

    @staticmethod
    def starter(schema_id: str, arch: str) -> str:
        """A starter model's local copy (model.pt + replay.npz), used where MLflow is not reachable."""
        return f"models/starter-{schema_id}-{arch}"

    # -- review projects -------------------------------------------------------------------------------------
    def project(self, project_id: int) -> ProjectPaths:
        return ProjectPaths(self, f"review/projects/{int(project_id)}")

    @staticmethod
    def deleted_project(project_id: int, stamp: str) -> str:
        """Where a deleted project's folder is moved aside (restorable by an operator, removable to free disk)."""
        return f"review/deleted/{int(project_id)}-{stamp}"

    shared_imagery_dir = "review/imagery"  # mosaics shared by every project with the same imagery source

    @classmethod
    def shared_imagery(cls, digest: str) -> str:
        """The imagery mosaic of every review project whose imagery source has this digest (review_app.imagery's
        `source_digest`: sha256 of the source's canonical JSON), built once for all of them."""
        if not IMAGERY_DIGEST.fullmatch(digest):
            raise ValueError(f"imagery digest {digest!r} is not a sha256 hex digest")
        return f"{cls.shared_imagery_dir}/{digest}/{IMAGERY_MOSAIC}"


@dataclass(frozen=True)
class ProjectPaths:
    """One review project's files. Every raster the tile routes serve sits at a path computed here from integer
    ids, so a tile request can never name a file."""

    layout: Layout
    prefix: str

    @classmethod
    def of(cls, home: Path, project_id: int) -> ProjectPaths:
        return Layout.at(home).project(project_id)

    @property
    def root(self) -> Path:
        return self.layout.path(self.prefix)

    def _path(self, *parts: object) -> Path:
        return self.layout.path("/".join((self.prefix, *map(str, parts))))

    @property
    def imagery(self) -> Path:
        """The project's own imagery mosaic: where projects made before shared mosaics keep theirs."""
        return self._path("imagery", IMAGERY_MOSAIC)

    def imagery_mosaic(self, digest: str | None) -> Path:
        """The mosaic the project reads: the shared one of its source's digest, or (None) its own `imagery`.
        The one place a project's imagery path is decided (review_app.workspace.ProjectWorkspace.imagery_path)."""
        return self.imagery if digest is None else self.layout.path(Layout.shared_imagery(digest))

    def aoi_dir(self, aoi_id: int) -> Path:
        return self._path("aois", int(aoi_id))

    def prediction_dir(self, aoi_id: int, version: int) -> Path:
        return self._path("aois", int(aoi_id), "predictions", f"v{int(version)}")

    def classes_path(self, aoi_id: int, version: int) -> Path:
        return self.prediction_dir(aoi_id, version) / CLASSES_FILE

    def confidence_path(self, aoi_id: int, version: int) -> Path:
        return self.prediction_dir(aoi_id, version) / CONFIDENCE_FILE

    # -- compare two versions' maps (review_app/services/compare.py): a bounded cache, safe to delete ------------
    @property
    def compare_dir(self) -> Path:
        return self._path("compare")

    def version_map_dir(self, aoi_id: int, model_version: int) -> Path:
        """The AOI's map by one model version (layer versions are deleted as retrains go on; these are kept)."""
        return self._path("compare", "maps", f"aoi-{int(aoi_id)}", f"m{int(model_version)}")

    def change_dir(self, aoi_a: int, version_a: int, aoi_b: int, version_b: int) -> Path:
        """The change from (AOI, model version) A's map to B's: change raster + from -> to table."""
        name = f"aoi-{int(aoi_a)}-m{int(version_a)}-aoi-{int(aoi_b)}-m{int(version_b)}"
        return self._path("compare", "changes", name)

    def embeddings_dir(self, aoi_id: int) -> Path:
        return self._path("aois", int(aoi_id), "embeddings")

    def checkpoint_map_dir(self, aoi_id: int, version: int) -> Path:
        """Model version `version`'s map of the AOI (from its embedding cache), painted in by checkpoint patches."""
        return self._path("aois", int(aoi_id), "checkpoint-maps", f"v{int(version)}")

    def share_dir(self, share_id: int) -> Path:
        """A share link's frozen snapshot (review_app/services/shares.py): maps, legend, areas; under the project so
        the owner's disk quota counts it."""
        return self._path("shares", int(share_id))

    @property
    def base_model_dir(self) -> Path:
        """The project's copy of its base model (model.pt + replay.npz): no MLflow needed after the first load."""
        return self._path("models", "base")

    def version_dir(self, version: int) -> Path:
        """A model version checkpoint (ml.versions.ModelVersion: head, schema, lineage, metrics, labels)."""
        return self._path("models", f"v{int(version)}")

    def session_version_dir(self, version_id: str) -> Path:
        """A head the worker maps with that is not a checkpoint on disk (saved for the worker to load)."""
        return self._path("models", "session", version_id)

    @property
    def state(self) -> Path:
        return self._path("state.json")


# -- prediction folders' completion marker -----------------------------------------------------------------
def write_prediction_meta(out_dir: Path, **meta: object) -> None:
    (Path(out_dir) / PREDICTION_META).write_text(json.dumps(meta, indent=2, default=str))


def prediction_is_fresh(out_dir: Path, image_path: Path, *, whole_tile: bool = False) -> bool:
    """A tile's prediction exists, is complete (meta written last) and is newer than the tile's imagery.

    `whole_tile`: only a full-inference prediction counts (a head-only one covers just the AOI part of a tile).
    """
    meta = Path(out_dir) / PREDICTION_META
    if not meta.is_file() or not (Path(out_dir) / CLASSES_FILE).is_file():
        return False
    if whole_tile and json.loads(meta.read_text()).get("mode") != "full":
        return False
    return not Path(image_path).is_file() or meta.stat().st_mtime >= Path(image_path).stat().st_mtime


# -- embedding caches' completion marker ----------------------------------------------------------------------------
def cache_complete(directory: Path) -> bool:
    """Whether `directory` holds a complete embedding cache (the metadata file is written last, by `flush`).

    Here rather than in ml/embeddings.py (which writes the caches) so that Dagster's definitions can ask without
    importing torch."""
    return (Path(directory) / EMBEDDINGS_META).is_file()
