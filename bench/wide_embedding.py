"""What the wide embedding costs: the 9-class starter with and without spectra/texture + ImageNet Lite0 features.

On one 1 km^2 item of the synthetic `demo` region (generated if missing), in the same run, for the narrow starter
(the shipped U-Net, learned features only) and the wide one, the registered `pearl-starter-chesapeake9` (the
same U-Net + ml/features.py DEFAULT_FEATURES, registered from the shipped weights when missing): inference with
the embedding cache (seconds, cache MB), a live retrain on 50 point labels (the head fit with the replay set,
replay share fixed as on the live path), and the head-only re-prediction from the cache (the live-retrain path).

    .venv/bin/python bench/wide_embedding.py       # ~2 min on 2 cores

Last line: {"infer_s_narrow", "infer_s_wide", "cache_mb_narrow", "cache_mb_wide", "fit_s_*", "repredict_s_*", ratios,
"model", "machine"}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from shapely.geometry import Point

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as `python bench/NAME.py`

from _common import emit, log, log_machine, starter_model

from pearl_pipelines.geo.catalog import load_collection_items
from pearl_pipelines.geo.regions import load_regions
from pearl_pipelines.ml.data import read_item
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head
from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.replay import build_replay_set
from pearl_pipelines.ml.retrain import RetrainOptions, retrain
from pearl_pipelines.ml.shipped import load_shipped, shipped_path
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.settings import get_settings
from pearl_pipelines.synthetic.regions import build_region

REGION = "demo"


def labels_on(reference: np.ndarray, names: list[str], src, n: int = 50) -> gpd.GeoDataFrame:  # type: ignore[no-untyped-def]
    """n random points on the reference label raster, as a mapper's point labels."""
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, reference.shape[0], n * 4), rng.integers(0, reference.shape[1], n * 4)
    keep = reference[rows, cols] < len(names)
    rows, cols = rows[keep][:n], cols[keep][:n]
    points = [Point(*(src.transform * (c + 0.5, r + 0.5))) for r, c in zip(rows, cols, strict=True)]
    classes = [names[v] for v in reference[rows, cols]]
    return gpd.GeoDataFrame({"label_id": np.arange(len(points)), "class_name": classes}, geometry=points, crs=src.crs)


def main() -> None:
    settings = get_settings()
    info = log_machine("cpu", precision="fp32")
    if not (settings.catalog_dir / REGION / "collection.json").is_file():
        build_region(load_regions(settings.assets_dir)[REGION], settings.catalog_dir, show_progress=True)
    stac_item = sorted(load_collection_items(settings.catalog_dir, REGION), key=lambda i: i.id)[0]
    image_path = Path(stac_item.assets["image"].href)
    raster = read_item(stac_item, "chesapeake9")
    narrow, _ = load_shipped(shipped_path(settings.assets_dir, "chesapeake9", "unet"))
    starter = starter_model("chesapeake9")
    if starter.model.spec.arch != narrow.spec.arch:
        raise RuntimeError(
            f"the registered starter is a {starter.model.spec.arch}, the shipped narrow a {narrow.spec.arch}"
        )
    models = {"narrow": narrow, "wide": starter.model}
    work = settings.home_abs / "bench" / "wide_embedding"
    with rasterio.open(image_path) as src:
        labels = labels_on(raster.labels, narrow.spec.schema.names, src)
    figures: dict[str, float] = {}
    for name, model in models.items():
        started = time.perf_counter()
        predict(model, image_path, work / name / "pred", embeddings_dir=work / name / "emb", device="cpu")
        figures[f"infer_s_{name}"] = time.perf_counter() - started
        cache = EmbeddingCache.open(work / name / "emb")
        figures[f"cache_mb_{name}"] = (work / name / "emb" / "embeddings.npy").stat().st_size / 2**20
        replay = build_replay_set(model, [raster.image], [raster.labels], per_class=500, device="cpu")
        parent = ModelVersion.from_model(model)
        fits = []
        for _ in range(3):
            started = time.perf_counter()
            version = retrain(
                parent, cache, labels, replay=replay, options=RetrainOptions(evaluate=False, replay_scale=0.3)
            )
            fits.append(time.perf_counter() - started)
        figures[f"fit_s_{name}"] = min(fits)
        started = time.perf_counter()
        apply_head(cache, version.weight, version.bias, version.schema, work / name / "head")
        figures[f"repredict_s_{name}"] = time.perf_counter() - started
        log(
            f"{name:>6}: {cache.meta.channels} channels, inference {figures[f'infer_s_{name}']:.1f} s, cache "
            f"{figures[f'cache_mb_{name}']:.0f} MB, fit {figures[f'fit_s_{name}']:.2f} s, "
            f"re-predict {figures[f'repredict_s_{name}']:.2f} s ({cache.shape[0]}x{cache.shape[1]} px)"
        )
    for key in ("infer_s", "cache_mb", "fit_s", "repredict_s"):
        figures[f"{key}_wide_over_narrow"] = figures[f"{key}_wide"] / figures[f"{key}_narrow"]
    emit({**figures, "model": f"{starter.name} (wide) vs shipped chesapeake9-unet (narrow)", "machine": info})


if __name__ == "__main__":
    main()
