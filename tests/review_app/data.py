"""Test data for the review app, made by code: a small demo region and a tiny starter model in a PEARL_HOME.

The tiny model (FCN, 8 features, 3 layers) trains for a few seconds on the region's reference labels, so
its predictions have structure (water, trees, fields) while staying fast enough for tests on two cores.
It is stored where the app looks when MLflow is not reachable: the starter models' local folder
(`ml.starter.starter_dir`, PEARL_HOME/models/starter-chesapeake9-fcn/).
"""

from __future__ import annotations

import json
from pathlib import Path

from pearl_pipelines.classes import load_schema
from pearl_pipelines.geo.regions import load_regions
from pearl_pipelines.settings import Settings
from pearl_pipelines.synthetic.regions import build_region

REGION_SCALE = 0.3  # 1.2 x 1.2 km instead of 4 x 4 km, same layout and seed


def build_demo_region(settings: Settings, scale: float = REGION_SCALE) -> Path:
    """The `demo` collection in settings.catalog_dir (idempotent)."""
    if not (settings.catalog_dir / "demo" / "collection.json").is_file():
        region = load_regions(settings.assets_dir)["demo"]
        build_region(region, settings.catalog_dir, scale=scale)
    return settings.catalog_dir / "demo"


def build_tiny_model(settings: Settings, *, seed: int = 0, steps: int = 40) -> Path:
    """Train and store the tiny starter model + replay set (idempotent); returns its folder.

    A dozen lines of plain PyTorch rather than `ml.train`: test data should not move with the trainer's recipe.
    """
    import numpy as np
    import torch

    from pearl_pipelines.classes import NODATA_CLASS
    from pearl_pipelines.ml.data import band_stats, load_labelled_rasters
    from pearl_pipelines.ml.models import LandcoverModel, ModelSpec, save_model
    from pearl_pipelines.ml.replay import build_replay_set
    from pearl_pipelines.ml.starter import starter_dir

    folder = starter_dir(settings, "chesapeake9", "fcn")
    if (folder / "model.pt").is_file():
        return folder
    rasters = load_labelled_rasters(settings.catalog_dir, ["demo"], "chesapeake9")
    mean, std = band_stats(rasters)
    schema = load_schema("chesapeake9", settings.assets_dir)
    spec = ModelSpec(arch="fcn", schema=schema, embed_dim=8, mean=mean, std=std, arch_kwargs={"layers": 3})
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LandcoverModel(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=NODATA_CLASS)
    size = 64
    for _ in range(steps):
        images, labels = [], []
        for _ in range(8):
            raster = rasters[rng.integers(len(rasters))]
            r, c = (rng.integers(0, n - size + 1) for n in raster.shape)
            images.append(raster.image[:, r : r + size, c : c + size])
            labels.append(raster.labels[r : r + size, c : c + size])
        x = torch.from_numpy(np.stack(images))
        y = torch.from_numpy(np.stack(labels).astype(np.int64))
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    replay = build_replay_set(model, [r.image for r in rasters], [r.labels for r in rasters], per_class=40, seed=seed)
    save_model(model, folder / "model.pt", extra={"tiny": True})
    replay.save(folder / "replay.npz")
    (folder / "README.json").write_text(json.dumps({"what": "tiny test starter model", "steps": steps}))
    return folder


def region_center(settings: Settings) -> tuple[float, float]:
    """lon/lat centre of the built demo collection."""
    import pystac

    collection = pystac.Collection.from_file(str(settings.catalog_dir / "demo" / "collection.json"))
    west, south, east, north = collection.extent.spatial.bboxes[0]
    return (west + east) / 2, (south + north) / 2


def _label_items(settings: Settings) -> list[tuple[Path, object]]:
    from pearl_pipelines.geo.catalog import load_collection_items
    from pearl_pipelines.geo.regions import label_asset_key

    items = load_collection_items(settings.catalog_dir, "demo")
    return [(Path(i.assets[label_asset_key("chesapeake9")].get_absolute_href() or ""), i) for i in items]


def class_places(
    settings: Settings, bounds: tuple[float, float, float, float], class_name: str, *, n: int = 3, size_px: int = 1
) -> list[list[tuple[float, float]]]:
    """Up to `n` places inside lon/lat `bounds` whose reference label is `class_name` over a size_px x size_px block.

    size_px == 1: each place is one lon/lat point; otherwise the corners of a square polygon (closed ring).
    Places are spread out (a coarse grid over the bounds), and kept away from the bounds' edges.
    """
    import numpy as np
    import rasterio
    from rasterio.warp import transform, transform_bounds
    from scipy.ndimage import minimum_filter

    index = load_schema("chesapeake9", settings.assets_dir).index(class_name)
    places: list[list[tuple[float, float]]] = []
    for path, _ in _label_items(settings):
        with rasterio.open(path) as src:
            left, bottom, right, top = transform_bounds("EPSG:4326", src.crs, *bounds)
            labels = src.read(1)
            rows, cols = np.indices(labels.shape)
            xs, ys = src.transform @ (cols + 0.5, rows + 0.5)
            margin = 10 + size_px
            inside = (xs > left + margin) & (xs < right - margin) & (ys > bottom + margin) & (ys < top - margin)
            solid = minimum_filter((labels == index).astype(np.uint8), size=size_px + 4) > 0
            found = np.argwhere(inside & solid)
            if not len(found):
                continue
            step = max(1, len(found) // (n * 3))
            for r, c in found[::step]:
                x0, y0 = src.transform @ (c - size_px / 2, r - size_px / 2)
                if size_px == 1:
                    corners = [(x0 + 0.5, y0 - 0.5)]
                else:
                    x1, y1 = x0 + size_px, y0 - size_px
                    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
                lon, lat = transform(src.crs, "EPSG:4326", [p[0] for p in corners], [p[1] for p in corners])
                places.append(list(zip(lon, lat, strict=True)))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(places))[:n]
    return [places[i] for i in sorted(order)]


def water_and_tree_points(
    settings: Settings, lon: float, lat: float, d: float = 0.0015
) -> list[tuple[str, tuple[float, float]]]:
    """(class name, lon/lat point) label places of water and tree canopy within `d` degrees of lon/lat: two classes a
    retrain can fit, by the reference labels."""
    box = (lon - d, lat - d, lon + d, lat + d)
    return [(name, place[0]) for name in ("water", "tree_canopy") for place in class_places(settings, box, name, n=3)]
