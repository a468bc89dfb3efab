"""Class and confidence tiles are palette PNGs (review_app/tile_render.py) that show exactly the pixels titiler's
own RGBA rendering shows: the real app's tiles of a predicted AOI against titiler's render of the same tile read
straight from the COG, and the cases that must keep titiler's rendering."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from titiler.core.resources.enums import ImageType
from titiler.core.utils import render_image

from pearl_pipelines.settings import Settings
from review_app.tile_render import render_class_tile
from review_app.tiles import UNCERTAINTY
from review_app.workspace import ProjectPaths
from tests.review_app.test_first_block import ZOOM, tile_at


def rgba(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def same_pixels(a: np.ndarray, b: np.ndarray) -> None:
    """Equal alpha everywhere and equal colour wherever a pixel shows (a transparent pixel has no colour)."""
    assert a.shape == b.shape
    np.testing.assert_array_equal(a[..., 3], b[..., 3])
    shown = a[..., 3] > 0
    np.testing.assert_array_equal(a[shown][:, :3], b[shown][:, :3])


@pytest.mark.parametrize("layer", ["classes", "confidence"])
def test_a_map_tile_is_a_palette_png_of_titilers_pixels(
    client: TestClient, settings: Settings, project: dict[str, Any], aoi: dict[str, Any], layer: str
) -> None:
    prediction = aoi["prediction"]
    lon, lat = (sum(c) / len(c) for c in zip(*aoi["geometry"]["coordinates"][0][:-1], strict=True))
    x, y, _, _ = tile_at(lon, lat)
    template = client.get(prediction["tilejson"][layer]).json()["tiles"][0]
    response = client.get(template.replace("{z}", str(ZOOM)).replace("{x}", str(x)).replace("{y}", str(y)))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    served = Image.open(io.BytesIO(response.content))
    assert served.mode == "P"  # one byte per pixel, the colormap as palette

    paths = ProjectPaths.of(settings.home_abs, 1)
    cog = (paths.classes_path if layer == "classes" else paths.confidence_path)(aoi["id"], prediction["version"])
    colormap = client.app.state.services.classes.colormap(1) if layer == "classes" else UNCERTAINTY  # type: ignore[attr-defined]
    tilesize = int(template.split("tilesize=")[1]) if "tilesize=" in template else 256
    with Reader(str(cog)) as src:
        image = src.tile(x, y, ZOOM, tilesize=tilesize)
    titiler_png, _ = render_image(image, colormap=colormap, output_format=ImageType.png)
    expected = rgba(titiler_png)
    assert (expected[..., 3] > 0).any()  # the tile shows the map (not an empty tile that any renderer gets right)
    same_pixels(rgba(response.content), expected)
    if layer == "classes":  # a few flat colours: a third of the bytes of four compressed bands
        assert len(response.content) < len(titiler_png)


def masked_tile(values: np.ndarray) -> ImageData:
    mask = np.ones(values.shape, dtype=bool)
    mask[:4] = False  # the first rows are nodata
    return ImageData(np.ma.MaskedArray(values[None], mask=~mask[None]))


def test_masked_pixels_are_transparent_and_unlisted_values_too() -> None:
    values = np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8) % 12
    colormap = {v: (10 * v, 255 - 10 * v, 7, 255) for v in range(9)}  # 9, 10, 11 have no colour
    png, media = render_class_tile(masked_tile(values), colormap=colormap, output_format=ImageType.png)
    assert media == "image/png" and Image.open(io.BytesIO(png)).mode == "P"
    ours = rgba(png)
    same_pixels(ours, rgba(render_image(masked_tile(values), colormap=colormap, output_format=ImageType.png)[0]))
    assert (ours[:4, :, 3] == 0).all() and (ours[4:][values[4:] >= 9][:, 3] == 0).all()
    assert (ours[4:][values[4:] < 9][:, 3] == 255).all()


def test_what_a_palette_cannot_hold_renders_as_titiler_does() -> None:
    values = (np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8)
    full = {v: (v, v, v, 255) for v in range(256)}  # no transparent entry left for the masked rows
    for image, colormap, kwargs in (
        (masked_tile(values), full, {}),
        (masked_tile(values), {1: (1, 2, 3, 255)}, {"rescale": [(0, 10)]}),
        (ImageData(values[None].astype(np.uint16)), {1: (1, 2, 3, 255)}, {}),
        (masked_tile(values), None, {}),
    ):
        ours, _ = render_class_tile(image, colormap=colormap, output_format=ImageType.png, **kwargs)
        theirs, _ = render_image(image, colormap=colormap, output_format=ImageType.png, **kwargs)
        assert ours == theirs
        assert Image.open(io.BytesIO(ours)).mode != "P"
    jpeg, media = render_class_tile(ImageData(values[None]), colormap={1: (1, 2, 3, 255)}, output_format=ImageType.jpeg)
    assert media == "image/jpeg" and jpeg.startswith(b"\xff\xd8")
