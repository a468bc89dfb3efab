"""The one file layout: keys relative to one root, the same files wherever that root is mounted."""

from __future__ import annotations

from pathlib import Path

import pytest

from pearl_pipelines.defs.resources import RasterStore
from pearl_pipelines.layout import Layout, model_slug
from pearl_pipelines.settings import Settings


def test_keys_are_relative_posix_paths_that_resolve_under_any_root(tmp_path: Path) -> None:
    keys = [
        Layout.catalog,
        Layout.at(tmp_path).tile("15-16384-10900"),
        Layout.aoi_embeddings("pearl-starter-chesapeake9-v3", 7),
        Layout.tile_prediction(model_slug("pearl-starter-chesapeake9", 3), "15-16384-10900"),
        Layout.region_map("demo", "m-v1"),
        Layout.label_set(2, "abc"),
        Layout.imagery_index("demo"),
        Layout.starter("chesapeake9", "unet"),
    ]
    here, pod = Layout.at(tmp_path / "home"), Layout.at(tmp_path / "mnt" / "pearl")
    for key in keys:
        assert not key.startswith("/") and "\\" not in key and ".." not in key.split("/")
        assert here.key(here.path(key)) == key  # a worker given the key finds the same file under its own mount
        assert pod.path(key) == pod.root / key
    assert Layout.at(tmp_path).tile("15-16384-10900") == "tiles/15/16384/10900/image.tif"
    assert Layout.tile_prediction("m-v1", "15-1-2") == "predictions/m-v1/15/1/2"


def test_keys_cannot_leave_the_root(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path)
    for bad in ("/etc/passwd", "../outside", "tiles/../../x"):
        with pytest.raises(ValueError, match="relative to the root"):
            layout.path(bad)
    with pytest.raises(ValueError, match="is not under"):
        layout.key(tmp_path.parent / "elsewhere")
    with pytest.raises(ValueError, match="three integers"):
        layout.tile("15-1")


def test_app_assets_and_settings_name_the_same_files(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    rasters = RasterStore(home=str(tmp_path))
    layout = settings.layout
    assert rasters.tile_path("15-1-2") == layout.path(layout.tile("15-1-2"))
    assert settings.tiles_dir == rasters.tiles_dir and settings.catalog_dir == rasters.catalog_dir
    assert rasters.rel(rasters.embeddings_dir("m-v1", 4)) == "embeddings/m-v1/aoi-4"
    assert rasters.rel(Path("/somewhere/else.tif")) == "/somewhere/else.tif"  # outside: stays absolute
    project = layout.project(3)
    assert layout.key(project.classes_path(5, 2)) == "review/projects/3/aois/5/predictions/v2/classes.tif"
    assert layout.key(project.embeddings_dir(5)) == "review/projects/3/aois/5/embeddings"
    assert layout.key(project.version_dir(1)) == "review/projects/3/models/v1"
