"""Compare two versions as maps: each (AOI, model version)'s map, kept so that a second compare is instant, and the
change from one map to the other (pearl_pipelines/geo/change.py) as a tile layer and a from -> to area table.

An AOI's layer versions are deleted as retrains go on (tasks.KEEP_LAYER_VERSIONS), so a version's map is kept
apart (`ProjectPaths.version_map_dir`): the AOI's current map when that version made it (a hard link to the model's
own output, before map patches), else predicted by the version's head over the AOI's embedding cache (a `compare`
job; no backbone pass), nodata outside the AOI's polygon as every AOI map. What is compared is the models: a mapper's
map patches (geo/patching.py) are not painted in, or every patch would show as a change.

Everything under the project's compare folder is a cache, bounded by `Settings.compare_max_bytes` (the least
recently used entries go first).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.warp import transform_bounds

from pearl_pipelines.classes import NODATA_CLASS
from pearl_pipelines.geo.change import MapChange, compare_maps, write_change_cog
from pearl_pipelines.geo.maps import MapError
from pearl_pipelines.geo.masking import mask_outside
from pearl_pipelines.geo.patching import model_file
from pearl_pipelines.labels.store import AoiRow, LabelStore
from pearl_pipelines.layout import CLASSES_FILE
from pearl_pipelines.ml import loop
from pearl_pipelines.settings import Settings
from review_app.jobs import Job, JobContext, JobFailed, JobRunner
from review_app.links import TMS
from review_app.schemas import CompareChangeRow, CompareMapsOut, CompareMapsRequest
from review_app.services.aois import AoiService
from review_app.services.classes import ClassSchemas
from review_app.services.errors import Conflict
from review_app.services.models import ModelService
from review_app.workspace import StateStore

CHANGE_FILE = "change.tif"
TABLE_FILE = "change.json"  # written last: the change is complete once it exists


class CompareError(ValueError):
    """The two maps cannot be compared (no overlap, no area); 422 with the reason."""


@dataclass(frozen=True)
class Side:
    """One map of a compare: an AOI and a model version of its project."""

    project_id: int
    aoi: AoiRow
    version: int


class CompareService:
    def __init__(
        self,
        *,
        settings: Settings,
        store: LabelStore,
        states: StateStore,
        classes: ClassSchemas,
        aois: AoiService,
        models: ModelService,
        runner: JobRunner,
    ) -> None:
        self.settings, self.store, self.states, self.classes = settings, store, states, classes
        self.aois, self.models, self.runner = aois, models, runner

    # -- what is asked --------------------------------------------------------------------------------------------
    def sides(self, project_id: int, req: CompareMapsRequest) -> tuple[Side, Side]:
        """The two maps asked for; KeyError (404) naming the unknown AOI or version. The caller's role in
        `req.project_b` is the router's to check (routers/compare.py)."""
        project_b = req.project_b or project_id
        if project_b != project_id and req.aoi_b is None:
            raise CompareError(
                f"map B of project {project_b} needs its AOI: give aoi_b (an AOI of project {project_b})"
            )
        aoi_a = self.aois.get(project_id, req.aoi)
        aoi_b = self.aois.get(project_b, req.aoi_b) if req.aoi_b is not None else aoi_a
        for which, project, number in (("a", project_id, req.a), ("b", project_b, req.b)):
            try:
                self.models.checkpoint_info(project, number)
            except KeyError:
                versions = ", ".join(str(e.number) for e in self.states.version_entries(project)) or "none yet"
                raise KeyError(
                    f"version {which}={number} is unknown in project {project}; its model versions are: {versions}"
                ) from None
        return Side(project_id, aoi_a, req.a), Side(project_b, aoi_b, req.b)

    # -- the versions' maps ---------------------------------------------------------------------------------------
    def version_map(self, side: Side) -> Path | None:
        """The side's map if it is kept, or the AOI's current map when this version made it (then kept too)."""
        paths = self.states.paths(side.project_id)
        kept = paths.version_map_dir(side.aoi.id, side.version)
        if (kept / CLASSES_FILE).is_file():
            _touch(kept)
            return kept / CLASSES_FILE
        layer = self.states.get(side.project_id).aois.get(side.aoi.id)
        if layer is None or layer.version == 0 or layer.partial or layer.model_version != side.version:
            return None
        current = paths.classes_path(side.aoi.id, layer.version)
        unpatched = model_file(current.parent, CLASSES_FILE)  # kept beside a patched map: the model's output
        current = unpatched if unpatched.is_file() else current
        with contextlib.suppress(FileNotFoundError):  # the layer was just replaced: predict it instead
            _keep(kept, lambda tmp: _link_or_copy(current, tmp / CLASSES_FILE))
            return kept / CLASSES_FILE
        return None

    def _check_cache(self, side: Side) -> Path:
        """The AOI's embedding cache, which a version's head re-predicts; 409 without one."""
        ws = self.states.workspace(side.project_id)
        state = ws.state()
        layer = state.aois.get(side.aoi.id)
        cache = ws.embeddings_dir(side.aoi.id, state)
        if layer is None or not layer.embeddings or not ws.has_cache(side.aoi.id, state):  # here or in the store
            raise Conflict(
                f"AOI {side.aoi.id} ({side.aoi.name}) has no cached embeddings yet, so model v{side.version}'s map "
                "of it cannot be made: predict the AOI first (Predict AOI)"
            )
        return cache

    def start(self, project_id: int, req: CompareMapsRequest) -> Job:
        """A `compare` job: the maps of the two sides that are not kept yet (each a head over the AOI's cache), then
        the change. Refused (409) when such an AOI has no embedding cache."""
        a, b = self.sides(project_id, req)
        self._class_lut(a, b)  # two projects whose classes cannot be matched: 422 now, not in the job
        missing = [s for s in dict.fromkeys((a, b)) if self.version_map(s) is None]
        caches = {s: self._check_cache(s) for s in missing}
        body = functools.partial(self._run, project_id=project_id, req=req, caches=caches)
        return self.runner.submit(project_id, "compare", body, aoi_id=req.aoi)

    def _run(self, ctx: JobContext, *, project_id: int, req: CompareMapsRequest, caches: dict[Side, Path]) -> str:
        made = []
        for n, (side, cache_dir) in enumerate(caches.items()):
            if self.version_map(side) is not None:  # made meanwhile (a compare queued before this one)
                continue
            ctx.step(f"predicting {side.aoi.name} with model v{side.version}", n / (len(caches) + 1))
            head = self.models.load_version(side.project_id, side.version)
            self.states.workspace(side.project_id).ensure_local_cache(side.aoi.id)  # only in the store: downloaded
            cache = loop.open_cache(cache_dir)
            if cache.meta.backbone_digest != head.base_model_id:
                raise JobFailed(
                    f"model v{side.version} was fitted on another backbone than the one that embedded AOI "
                    f"{side.aoi.id}; its map of this AOI cannot be made from the cache"
                )
            started = time.perf_counter()
            schema = self.classes.get(side.project_id)
            _keep(
                self.states.paths(side.project_id).version_map_dir(side.aoi.id, side.version),
                lambda tmp, c=cache, h=head, k=schema, g=side.aoi.geometry: _predict(c, h, k, tmp, g),  # type: ignore[misc]
            )
            made.append(f"v{side.version} of {side.aoi.name} in {time.perf_counter() - started:.1f} s")
        ctx.step("computing the change", len(caches) / (len(caches) + 1))
        out = self.change(project_id, req)
        what = f"maps made: {', '.join(made)}; " if made else ""
        return f"{what}{len(out.rows)} class changes over {out.changed_hectares:.2f} ha"

    def _class_lut(self, a: Side, b: Side) -> np.ndarray | None:
        """B's class values as A's (by class name) when B is of a project with other classes; None when the same."""
        names_a, names_b = self.classes.get(a.project_id).names, self.classes.get(b.project_id).names
        if names_b == names_a[: len(names_b)]:
            return None  # one schema, or B's is A's before classes were added: class i is the same class
        unknown = [n for n in names_b if n not in names_a]
        if unknown:
            raise CompareError(
                f"project {b.project_id}'s classes {', '.join(map(repr, unknown))} are not classes of project "
                f"{a.project_id}: only projects with the same classes (by name) can be compared"
            )
        lut = np.full(256, NODATA_CLASS, dtype=np.uint8)
        for i, name in enumerate(names_b):
            lut[i] = names_a.index(name)
        return lut

    # -- the change ------------------------------------------------------------------------------------------------
    def change(self, project_id: int, req: CompareMapsRequest) -> CompareMapsOut:
        """The change from map A to map B (computed once, then read back); 409 while a map is not made yet."""
        a, b = self.sides(project_id, req)
        maps = [self.version_map(side) for side in (a, b)]
        missing = [f"model v{s.version} of AOI {s.aoi.id}" for s, m in zip((a, b), maps, strict=True) if m is None]
        if missing:
            raise Conflict(
                f"no map of {' and '.join(missing)} yet: POST /api/projects/{project_id}/compare makes it "
                "(Compare in the page)"
            )
        a_map, b_map = (m for m in maps if m is not None)
        # AOI ids are unique across projects: the folder names one pair of maps.
        folder = self.states.paths(project_id).change_dir(a.aoi.id, a.version, b.aoi.id, b.version)
        table = folder / TABLE_FILE
        newest_map = max(a_map.stat().st_mtime_ns, b_map.stat().st_mtime_ns)
        if not table.is_file() or table.stat().st_mtime_ns < newest_map:
            self._compute(a, b, maps=(a_map, b_map), folder=folder)
        _touch(folder)
        self._bound(project_id, keep={folder, a_map.parent, b_map.parent})
        if b.project_id != project_id:
            self._bound(b.project_id, keep={b_map.parent})
        return self._out(project_id, a, b, json.loads(table.read_text()), table.stat().st_mtime_ns)

    def _compute(self, a: Side, b: Side, *, maps: tuple[Path, Path], folder: Path) -> None:
        try:
            change = compare_maps(*maps, within=[a.aoi.geometry, b.aoi.geometry], b_classes=self._class_lut(a, b))
        except MapError as exc:
            raise CompareError(str(exc)) from None
        write_change_cog(
            folder / CHANGE_FILE,
            change,
            self.classes.get(a.project_id).colormap(),
            {"from": f"aoi {a.aoi.id} model v{a.version}", "to": f"aoi {b.aoi.id} model v{b.version}"},
        )
        _write_json(folder / TABLE_FILE, _table(change))

    def _out(self, project_id: int, a: Side, b: Side, table: dict[str, Any], rev: int) -> CompareMapsOut:
        names = self.classes.get(project_id).names

        def name(index: int) -> str:
            return names[index] if index < len(names) else f"class {index}"

        pixel_m2 = float(table["pixel_m2"])
        rows = [
            CompareChangeRow(from_class=name(s), to_class=name(t), pixels=n, hectares=round(n * pixel_m2 / 1e4, 4))
            for s, t, n in table["rows"]
        ]
        changed = sum(r.pixels for r in rows)
        query = "tile_format=png&minzoom=12"

        def map_link(side: Side) -> str:
            kept = self.states.paths(side.project_id).version_map_dir(side.aoi.id, side.version) / CLASSES_FILE
            tail = f"{TMS}/tilejson.json?{query}&rev={kept.stat().st_mtime_ns}"
            return f"/tiles/compare/{side.project_id}/maps/{side.aoi.id}/{side.version}/{tail}"

        change = f"/tiles/compare/{project_id}/changes/{a.aoi.id}/{a.version}/{b.aoi.id}/{b.version}"
        return CompareMapsOut(
            aoi=a.aoi.id,
            aoi_b=b.aoi.id,
            project_b=b.project_id,
            a=a.version,
            b=b.version,
            rows=rows,
            unchanged_hectares=round(table["unchanged"] * pixel_m2 / 1e4, 4),
            changed_hectares=round(changed * pixel_m2 / 1e4, 4),
            compared_hectares=round(table["compared"] * pixel_m2 / 1e4, 4),
            pixel_m2=pixel_m2,
            bounds=tuple(table["bounds"]),
            tilejson_a=map_link(a),
            tilejson_b=map_link(b),
            tilejson_change=f"{change}/{TMS}/tilejson.json?{query}&rev={rev}",
        )

    # -- the disk bound ------------------------------------------------------------------------------------------
    def _bound(self, project_id: int, keep: set[Path]) -> None:
        """Delete the least recently used maps and changes until the project's compare folder fits its bound."""
        root = self.states.paths(project_id).compare_dir
        entries = [p for p in (*root.glob("maps/aoi-*/m*"), *root.glob("changes/*")) if p.is_dir()]
        sized = sorted(((p.stat().st_mtime, _size(p), p) for p in entries), key=lambda e: e[0])
        total = sum(size for _, size, _ in sized)
        for _, size, path in sized:
            if total <= self.settings.compare_max_bytes:
                break
            if path in keep:
                continue
            shutil.rmtree(path, ignore_errors=True)
            total -= size


def _predict(cache: Any, head: Any, schema: Any, out_dir: Path, aoi_geometry: Mapping[str, Any]) -> None:
    """A version's map of an AOI from its cache, nodata outside the AOI's polygon (as the page's maps)."""
    loop.repredict(cache, head, schema, out_dir)
    mask_outside(aoi_geometry, out_dir)


def _table(change: MapChange) -> dict[str, Any]:
    """What the change folder keeps of a change: class indices and pixels (names are the schema's, at read time)."""
    west, south, east, north = transform_bounds(change.crs, "EPSG:4326", *_grid_bounds(change), densify_pts=21)
    return {
        "rows": [[r.source, r.target, r.pixels] for r in change.rows()],
        "unchanged": change.unchanged_pixels,
        "compared": change.compared_pixels,
        "pixel_m2": change.pixel_m2,
        "bounds": [west, south, east, north],
    }


def _grid_bounds(change: MapChange) -> tuple[float, float, float, float]:
    height, width = change.change.shape
    t = change.transform
    xs, ys = (t.c, t.c + width * t.a), (t.f, t.f + height * t.e)
    return min(xs), min(ys), max(xs), max(ys)


def _keep(folder: Path, write: Any) -> None:
    """`write(tmp)` fills a temporary folder beside `folder`, which then replaces `folder` (never half-written)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no bytes copied; survives the layer's deletion), or a copy across file systems."""
    try:
        os.link(src, dst)
    except OSError:
        if not src.is_file():
            raise FileNotFoundError(src) from None
        shutil.copy2(src, dst)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
