"""Retrain loop: labels -> updated classified raster, from cached embeddings vs re-running the model.

A 1 km^2 area at 1 m (1000 x 1000 px) of a domain-shifted scene, predicted once with its embeddings cached.
Labels: 50 points per class the area holds + 10 polygons. The first retrain fits them all from the starter (`cold_s`).
Then, per repetition, what the review app does after a mapper's burst of clicks, through the engine's loop API
(`ml/loop.py`): BURST more labels -> samples read from the cache -> one logistic head fit from the previous version
(with the replay set at the share the previous retrain chose) -> head applied to the cached embeddings -> classes +
confidence COGs. Baseline: the same fit, then the full model re-run over the area (what PEARL does after each retrain).
Also timed: the background pass that follows in the app (grouped CV of the replay share and metrics).
The model is the registered starter the app maps with, `pearl-starter-chesapeake9` (registered from the
shipped weights when missing), with its replay set; `--proxy-fcn` runs the bench-trained 4-class FCN instead.
Last line: {"median_s", "baseline_median_s", "speedup", "cold_s", "background_cv_s", "model", "machine"}.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
from _common import (
    CRS,
    ORIGIN,
    bench_model,
    emit,
    log,
    log_machine,
    median,
    model_arguments,
    replay_path,
    scene_cog,
    timed,
    use_all_cores,
)
from scipy import ndimage as ndi
from shapely.geometry import Point, box

from pearl_pipelines.ml import loop
from pearl_pipelines.ml.embeddings import EmbeddingCache
from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.replay import ReplaySet
from pearl_pipelines.ml.versions import ModelVersion

REPEATS = 7
BASELINE_REPEATS = 3
POINTS_PER_CLASS = 50
POLYGONS = 10
POLYGON_SIDE = 16
BURST = 10  # labels a mapper adds between two retrains


def make_labels(reference: np.ndarray, class_names: list[str], seed: int = 0) -> gpd.GeoDataFrame:
    """50 points per class present and 10 square polygons inside homogeneous patches, from the reference labels."""
    rng = np.random.default_rng(seed)
    geoms, names = [], []
    # Classes the area holds enough of (a 9-class schema has classes a 1 km^2 scene may lack).
    present = [i for i in range(len(class_names)) if np.count_nonzero(reference == i) >= 4 * POINTS_PER_CLASS]
    for index in present:
        name = class_names[index]
        rows, cols = np.nonzero(reference == index)
        for i in rng.choice(len(rows), POINTS_PER_CLASS, replace=False):
            geoms.append(Point(ORIGIN[0] + cols[i] + 0.5, ORIGIN[1] - rows[i] - 0.5))
            names.append(name)
    # top-left corners of side x side patches holding a single class
    same = ndi.minimum_filter(reference, POLYGON_SIDE, origin=-(POLYGON_SIDE // 2)) == ndi.maximum_filter(
        reference, POLYGON_SIDE, origin=-(POLYGON_SIDE // 2)
    )
    patchy = [i for i in present if np.any(same & (reference == i))]
    for k in range(POLYGONS):
        index = patchy[k % len(patchy)]
        rows, cols = np.nonzero(same & (reference == index))
        i = rng.integers(len(rows))
        x, y = ORIGIN[0] + cols[i], ORIGIN[1] - rows[i]
        geoms.append(box(x, y - POLYGON_SIDE, x + POLYGON_SIDE, y))
        names.append(class_names[index])
    return gpd.GeoDataFrame({"class_name": names, "label_id": range(len(names))}, geometry=geoms, crs=CRS)


def main() -> None:
    args = model_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()
    threads = use_all_cores()
    info = log_machine(precision="fp32")
    bench = bench_model("chesapeake9", proxy=args.proxy_fcn)
    model, model_path = bench.model, bench.path
    replay_file = replay_path(model_path)
    replay = ReplaySet.load(replay_file) if replay_file else None
    schema_id = "chesapeake4" if args.proxy_fcn else "chesapeake9"
    image, reference = scene_cog("scene-1km-shifted", 1000, seed=31, shifted=True, schema_id=schema_id)
    labels = make_labels(reference, model.spec.schema.names)
    parent = ModelVersion.from_model(model)
    schema = model.spec.schema
    live_scale = 1.0  # the app's live fit reuses the share its last background pass chose (1.0 before any)
    log(f"{threads} threads; 1 km^2 area; {len(labels)} labels; replay set: {len(replay) if replay else 0} samples")

    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as tmp:
        root = Path(tmp)
        [first] = timed(lambda: predict(model, image, root / "initial", embeddings_dir=root / "emb"), 1)
        log(f"initial prediction with embeddings cached: {first:.2f} s")
        cache = EmbeddingCache.open(root / "emb")

        # The clicks arrive in bursts: the last (REPEATS + BASELINE_REPEATS) * BURST labels come one burst at a time.
        order = np.random.default_rng(1).permutation(len(labels))
        later = (REPEATS + BASELINE_REPEATS) * BURST
        state = {"parent": parent, "known": len(labels) - later}

        def fit(
            labelled: gpd.GeoDataFrame,
            *,
            evaluate: bool,
            replay_scale: float | None = None,
            start: ModelVersion = parent,
        ) -> ModelVersion:
            return loop.retrain_version(
                start, schema, [cache], labelled, replay, evaluate=evaluate, replay_scale=replay_scale
            )

        def next_burst() -> ModelVersion:
            """The previous version refitted with BURST more labels (the live loop's fit)."""
            state["known"] += BURST
            labelled = labels.iloc[order[: state["known"]]]
            state["parent"] = fit(labelled, evaluate=False, replay_scale=live_scale, start=state["parent"])
            return state["parent"]

        first = labels.iloc[order[: state["known"]]]
        cold = timed(lambda: fit(first, evaluate=False, replay_scale=live_scale), 3)
        state["parent"] = fit(first, evaluate=False, replay_scale=live_scale)
        loop.repredict(cache, state["parent"], schema, root / "updated")  # warm-up
        times = timed(lambda: loop.repredict(cache, next_burst(), schema, root / "updated"), REPEATS)
        baseline_times = timed(
            lambda: predict(next_burst().to_model(model), image, root / "baseline"), BASELINE_REPEATS
        )
        [with_cv] = timed(lambda: fit(labels, evaluate=True), 1)
        version = fit(labels, evaluate=True)

    result = {"median_s": median(times), "baseline_median_s": median(baseline_times), "cold_s": median(cold)}
    result["speedup"] = result["baseline_median_s"] / result["median_s"]
    log(f"first retrain, every label fitted from the starter: median {result['cold_s']:.3f} s (fit only)")
    log(f"{BURST} labels more -> updated raster (cached embeddings): median {result['median_s']:.3f} s")
    log(f"  each: {np.round(times, 3)}")
    log(f"baseline (fit + full model over the area):   median {result['baseline_median_s']:.2f} s")
    result["background_cv_s"] = with_cv
    log(f"speedup {result['speedup']:.1f}x; the background pass (CV of the replay share + metrics) {with_cv:.2f} s")
    if version.metrics:
        log(f"cross-validated macro F1 of the retrained head: {version.metrics.macro_f1:.3f}")
    emit({**result, "labels": len(labels), "model": bench.name, "machine": info})


if __name__ == "__main__":
    main()
