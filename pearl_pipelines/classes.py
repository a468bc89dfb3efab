"""Class schemas (names, titles, colours) loaded from `assets/schemas/*.json`.

A schema is data, not code: a model carries its schema, rasters carry its colour table, and the
review app adds classes to a copy of it. Class index i is pixel value i; 255 is nodata.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, field_validator

NODATA_CLASS = 255
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,47}$")
_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


class ClassDef(BaseModel):
    name: str = Field(description="snake_case identifier, e.g. tree_canopy")
    title: str
    color: str = Field(description="#rrggbb")
    from_: list[str] | None = Field(default=None, alias="from")

    model_config = {"populate_by_name": True}

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"class name {value!r} must be snake_case: a-z, 0-9 and _, starting with a letter")
        return value

    @field_validator("color")
    @classmethod
    def _check_color(cls, value: str) -> str:
        if not _COLOR_RE.match(value):
            raise ValueError(f"colour {value!r} must be #rrggbb, e.g. #1a7a2e")
        return value.lower()

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class ClassSchema(BaseModel):
    id: str
    title: str = ""
    description: str = ""
    classes: list[ClassDef]

    @field_validator("classes")
    @classmethod
    def _check_unique(cls, value: list[ClassDef]) -> list[ClassDef]:
        names = [c.name for c in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"class names must be unique; repeated: {', '.join(dupes)}")
        if not 1 <= len(value) < NODATA_CLASS:
            raise ValueError(f"a schema needs 1 to {NODATA_CLASS - 1} classes, got {len(value)}")
        return value

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown class {name!r}; this schema has: {', '.join(self.names)}") from None

    def colormap(self) -> dict[int, tuple[int, int, int, int]]:
        """GDAL/rio-tiler colour table: class index -> RGBA; nodata is transparent."""
        cmap = {i: (*c.rgb, 255) for i, c in enumerate(self.classes)}
        cmap[NODATA_CLASS] = (0, 0, 0, 0)
        return cmap

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 lookup table for rendering class rasters as RGB."""
        lut = np.zeros((256, 3), dtype=np.uint8)
        for i, c in enumerate(self.classes):
            lut[i] = c.rgb
        return lut

    def remap_from(self, parent: ClassSchema) -> np.ndarray:
        """Lookup table parent index -> this schema's index, using each class's `from` list."""
        lut = np.full(256, NODATA_CLASS, dtype=np.uint8)
        for i, c in enumerate(self.classes):
            for source in c.from_ or [c.name]:
                lut[parent.index(source)] = i
        return lut


def schemas_dir(assets_dir: Path | None = None) -> Path:
    from pearl_pipelines.settings import get_settings

    return (assets_dir or get_settings().assets_dir) / "schemas"


def load_schema(schema_id: str, assets_dir: Path | None = None) -> ClassSchema:
    path = schemas_dir(assets_dir) / f"{schema_id}.json"
    if not path.is_file():
        known = sorted(p.stem for p in schemas_dir(assets_dir).glob("*.json"))
        raise KeyError(f"unknown class schema {schema_id!r}; known: {', '.join(known)}")
    return ClassSchema.model_validate(json.loads(path.read_text()))
