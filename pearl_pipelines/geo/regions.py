"""Named regions (`assets/regions/*.geojson`): the region file format and reading it.

A region file is a GeoJSON Feature (lon/lat polygon) whose properties say its role (train, holdout,
demo, shifted), its refresh cron and, for synthetic regions, the generator seed, shift and UTM grid.
Each region becomes one STAC collection of 1 km items: an RGBN image COG plus, for a synthetic region,
reference-label COGs (`label_asset_key`), which are reference data only and never read at inference.
Building a synthetic region into the local catalog is `pearl_pipelines.synthetic.regions.build_region`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

LABEL_SCHEMAS = ("chesapeake9", "chesapeake4")


def label_asset_key(schema_id: str) -> str:
    return f"labels_{schema_id}"


class SyntheticGrid(BaseModel):
    seed: int
    shift: Literal["shifted"] | None = None
    epsg: int
    origin: tuple[float, float] = Field(description="UTM x of the left edge, y of the top edge (m)")
    width_m: int = Field(gt=0, le=20000)
    height_m: int = Field(gt=0, le=20000)
    item_size_m: int = Field(default=1000, ge=100, le=10000)


class RegionProperties(BaseModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,39}$")
    title: str = ""
    role: Literal["train", "holdout", "demo", "shifted", "custom"]
    datetime: dt.datetime
    synthetic: SyntheticGrid | None = None
    refresh_cron: str | None = None
    class_schema: str = "chesapeake9"


class Region(BaseModel):
    """A region file: a lon/lat polygon plus properties."""

    geometry: dict[str, object]
    properties: RegionProperties

    @property
    def name(self) -> str:
        return self.properties.name

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        from shapely.geometry import shape

        return shape(self.geometry).bounds  # type: ignore[return-value]


class RegionFileError(ValueError):
    """A region file is missing, malformed, or has invalid properties."""


def regions_dir(assets_dir: Path | None = None) -> Path:
    from pearl_pipelines.settings import get_settings

    return (assets_dir or get_settings().assets_dir) / "regions"


def load_region_file(path: Path) -> Region:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RegionFileError(f"region file {path} is not readable GeoJSON: {exc}") from exc
    if data.get("type") != "Feature":
        raise RegionFileError(f"region file {path} must be a GeoJSON Feature, got type {data.get('type')!r}")
    try:
        region = Region.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RegionFileError(f"region file {path} has invalid properties: {problems}") from exc
    if region.name != Path(path).stem:
        raise RegionFileError(
            f"region file {path} declares name {region.name!r}; the file must be named {region.name}.geojson"
        )
    return region


def load_regions(assets_dir: Path | None = None) -> dict[str, Region]:
    return {p.stem: load_region_file(p) for p in sorted(regions_dir(assets_dir).glob("*.geojson"))}
