"""The local STAC API (rustac serve over the small catalog) searched with pystac-client through StacCatalog."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pystac
import pytest
import rasterio
from shapely.geometry import box, mapping, shape

from pearl_pipelines.geo.regions import label_asset_key
from pearl_pipelines.geo.stac import StacCatalog, StacError
from pearl_pipelines.geo.stac_server import StacServer
from tests.conftest import SmallCatalog, free_port


@pytest.fixture(scope="module")
def catalog(stac_server: StacServer) -> StacCatalog:
    return StacCatalog.from_settings()  # the settings name the server's port: no URL passed around


def _centre(item: pystac.Item, half: float = 0.0005) -> tuple[float, float, float, float]:
    x, y = shape(item.geometry).centroid.coords[0]
    return (x - half, y - half, x + half, y + half)


def _items_of(small_catalog: SmallCatalog, region: str) -> list[pystac.Item]:
    path = small_catalog.catalog_dir / region / "collection.json"
    return list(pystac.Collection.from_file(str(path)).get_items())


def test_from_settings_points_at_the_local_api(catalog: StacCatalog, stac_server: StacServer) -> None:
    assert catalog.url == stac_server.url
    assert not catalog.sign_planetary_computer
    assert set(catalog.collection_ids()) == {"demo", "train-a"}


def test_search_by_bbox_finds_the_item_under_it(catalog: StacCatalog, small_catalog: SmallCatalog) -> None:
    demo_items = _items_of(small_catalog, "demo")
    assert len(demo_items) == 16  # 1.2 km square of 300 m items at 0.3 scale
    target = demo_items[5]
    found = catalog.search(bbox=_centre(target))
    assert [item.id for item in found] == [target.id]
    assert found[0].collection_id == "demo"


def test_search_by_intersects_and_whole_region(catalog: StacCatalog, small_catalog: SmallCatalog) -> None:
    demo_items = _items_of(small_catalog, "demo")
    footprint = shape(demo_items[0].geometry).union(shape(demo_items[-1].geometry)).convex_hull.buffer(-0.0002)
    found = catalog.search(intersects=mapping(footprint))
    assert {demo_items[0].id, demo_items[-1].id} <= {item.id for item in found}
    assert all(item.collection_id == "demo" for item in found)
    whole = box(*shape(demo_items[0].geometry).union(shape(demo_items[-1].geometry)).bounds)
    assert {item.id for item in catalog.search(intersects=mapping(whole))} == {item.id for item in demo_items}


def test_datetime_filter(catalog: StacCatalog, small_catalog: SmallCatalog) -> None:
    # demo is dated 2021-07-16, train-a 2021-07-14; one bbox over both regions.
    both = (-76.72, 38.94, -76.38, 39.0)
    assert {item.collection_id for item in catalog.search(bbox=both)} == {"demo", "train-a"}
    july_16 = catalog.search(bbox=both, datetime="2021-07-16T00:00:00Z/2021-07-16T23:59:59Z")
    assert july_16 and {item.collection_id for item in july_16} == {"demo"}
    assert catalog.search(bbox=both, datetime="2019-01-01/2019-12-31") == []


def test_collection_filter(catalog: StacCatalog, small_catalog: SmallCatalog) -> None:
    both = (-76.72, 38.94, -76.38, 39.0)
    found = catalog.search(bbox=both, collections=["train-a"])
    assert {item.id for item in found} == {item.id for item in _items_of(small_catalog, "train-a")}
    only_demo = StacCatalog(url=catalog.url, collections=["demo"]).search(bbox=both)
    assert {item.collection_id for item in only_demo} == {"demo"}


def test_items_carry_image_and_label_assets_that_open(catalog: StacCatalog, small_catalog: SmallCatalog) -> None:
    items = catalog.search(bbox=_centre(_items_of(small_catalog, "train-a")[0]))
    ((item, href),) = list(catalog.image_hrefs(items))
    assert {"image", label_asset_key("chesapeake9"), label_asset_key("chesapeake4")} <= set(item.assets)
    with rasterio.open(href) as src:
        assert src.count == 4 and src.dtypes[0] == "uint8"
        assert src.descriptions == ("red", "green", "blue", "nir")
        assert src.read(window=((0, 8), (0, 8))).any()
    with rasterio.open(item.assets[label_asset_key("chesapeake9")].href) as src:
        assert src.count == 1 and src.nodata == 255
        assert np.unique(src.read(1)).size > 1


def test_unreachable_stac_api_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(StacError, match=url.replace(".", r"\.")):
        StacCatalog(url=url).search(bbox=(-76.5, 38.9, -76.4, 39.0))


def test_item_without_image_asset_is_reported() -> None:
    item = pystac.Item("bare", geometry=None, bbox=None, datetime=dt.datetime(2021, 1, 1, tzinfo=dt.UTC), properties={})
    with pytest.raises(StacError, match="no 'image' asset"):
        list(StacCatalog(url="http://unused").image_hrefs([item]))
