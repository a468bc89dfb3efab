"""Real imagery: the starters zero-shot and after k simulated clicks, next to raw-spectra baselines.

Development set: the three real 1 m RGBN images of Rotterdam that the `solaris==0.4.0` wheel ships (band order
B, G, R, NIR), ingested through `pearl ingest --bands 3,2,1,4`, and the 145 labelled points of
`shared/data/rotterdam/labels.geojson` (water, tree_canopy, low_vegetation, impervious). The same harness runs
on the synthetic `shifted` region (another season and sensor response) with points drawn from its dense
reference labels.

For each starter, as `train_starter` registers it (shipped weights, wide embedding, the zero-shot head fitted on
domain-randomised synthetic patches, the replay set carrying that head as its prior; cached under PEARL_HOME):
the images are predicted through the engine (`ml.inference.predict`, embeddings cached), zero-shot accuracy is
read at the points (9 classes grouped into the 4), then k = 10, 25, 50, 100 random points (10 draws each) go to
the project's own `retrain` (centred on the zero-shot map, replay share chosen by grouped CV; and the variants
full / no replay, not centred, the MLP and spatial-ensemble strategies) and the other points are the test set.
Baselines on the same draws: standardised L2 logistic regression on the raw RGBN of the clicked pixels, and on
RGBN plus the 5x5 mean and standard deviation of each band. Then simulated mappers: random clicks against
"label here next" (min-margin) clicks.

    .venv/bin/python bench/real_imagery.py            # ~20 min on 2 cores; writes real_imagery.png beside the data
    PEARL_BENCH_DRAWS=20 .venv/bin/python bench/real_imagery.py   # more draws: a smaller standard error

With ~95 test points a draw's accuracy varies by several points: 5 draws left a standard error of ~0.015 at
50 clicks, too much to tell 0.88 from 0.90; 10 draws halve its variance.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from scipy.ndimage import uniform_filter
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as `python bench/NAME.py`

from pearl_pipelines.classes import load_schema
from pearl_pipelines.geo.catalog import load_collection_items
from pearl_pipelines.geo.regions import label_asset_key, load_regions
from pearl_pipelines.ml.embeddings import EmbeddingCache, apply_head, backbone_digest, sample_embeddings
from pearl_pipelines.ml.inference import predict
from pearl_pipelines.ml.models import LandcoverModel, load_model, save_model, with_features
from pearl_pipelines.ml.replay import ReplaySet
from pearl_pipelines.ml.retrain import RetrainOptions, make_strategy, retrain
from pearl_pipelines.ml.shipped import load_shipped, shipped_path
from pearl_pipelines.ml.starter import REPLAY_FILE, recipe_for, starter_replay_set, training_regions
from pearl_pipelines.ml.suggest import uncertainty
from pearl_pipelines.ml.versions import ModelVersion
from pearl_pipelines.ml.zero_shot import fit_zero_shot_head
from pearl_pipelines.settings import REPO_ROOT, get_settings
from pearl_pipelines.synthetic.regions import build_region

ROTTERDAM_LABELS = "shared/data/rotterdam/labels.geojson"  # beside the checkout, as in CI
CLICKS = (10, 25, 50, 100)
DRAWS = int(os.environ.get("PEARL_BENCH_DRAWS", "10"))
GROUPS = ("water", "tree_canopy", "low_vegetation", "impervious")
# Each schema's class -> the 4 groups the real labels use (None: no real label says it; counts as wrong).
TO_GROUP: dict[str, dict[str, str | None]] = {
    "chesapeake4": {"water": "water", "tree_canopy": "tree_canopy", "field": "low_vegetation", "built": "impervious"},
    "chesapeake9": {
        "water": "water",
        "emergent_wetlands": "low_vegetation",
        "tree_canopy": "tree_canopy",
        "shrubland": "tree_canopy",
        "low_vegetation": "low_vegetation",
        "barren": None,
        "structures": "impervious",
        "impervious_surfaces": "impervious",
        "impervious_roads": "impervious",
    },
}
# The class a click of each group is given in each schema.
FROM_GROUP: dict[str, dict[str, str]] = {
    "chesapeake4": {"water": "water", "tree_canopy": "tree_canopy", "low_vegetation": "field", "impervious": "built"},
    "chesapeake9": {
        "water": "water",
        "tree_canopy": "tree_canopy",
        "low_vegetation": "low_vegetation",
        "impervious": "impervious_surfaces",
    },
}


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Scene:
    """Labelled points on images: groups, pixel positions per image, and the images' RGBN features."""

    name: str
    images: dict[str, Path]  # item id -> RGBN uint8 GeoTIFF
    points: gpd.GeoDataFrame  # columns: group, item, row, col, geometry (image CRS)
    raw: np.ndarray  # (N, 4) RGBN at the points
    texture: np.ndarray  # (N, 12) RGBN + 5x5 mean and std per band


def pixel_features(images: dict[str, Path], points: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    raw = np.zeros((len(points), 4), np.float32)
    texture = np.zeros((len(points), 12), np.float32)
    for item, path in images.items():
        at = np.flatnonzero(points["item"].to_numpy() == item)
        if not len(at):
            continue
        with rasterio.open(path) as src:
            bands = src.read().astype(np.float32)
        rows, cols = points["row"].to_numpy()[at], points["col"].to_numpy()[at]
        mean = np.stack([uniform_filter(b, 5, mode="reflect") for b in bands])
        std = np.sqrt(np.maximum(np.stack([uniform_filter(b * b, 5, mode="reflect") for b in bands]) - mean**2, 0))
        raw[at] = bands[:, rows, cols].T
        texture[at] = np.concatenate([bands[:, rows, cols], mean[:, rows, cols], std[:, rows, cols]]).T
    return raw, texture


def locate(points: gpd.GeoDataFrame, images: dict[str, Path]) -> gpd.GeoDataFrame:
    """Item, row and col of each point: the image it falls in (points outside every image are dropped)."""
    out = []
    for item, path in images.items():
        with rasterio.open(path) as src:
            local = points.to_crs(src.crs)
            rows, cols = rasterio.transform.rowcol(src.transform, local.geometry.x, local.geometry.y)
            rows, cols = np.asarray(rows), np.asarray(cols)
            inside = (rows >= 0) & (rows < src.height) & (cols >= 0) & (cols < src.width)
            mask = src.read_masks(1)
            inside[inside] &= mask[rows[inside], cols[inside]] > 0
            found = local[inside].copy()
            found["item"], found["row"], found["col"] = item, rows[inside], cols[inside]
            out.append(found.to_crs(points.crs))
    return gpd.GeoDataFrame(pd.concat(out, ignore_index=True), crs=points.crs)


def rotterdam_scene(home: Path) -> Scene:
    spec = importlib.util.find_spec("solaris")
    if spec is None or spec.origin is None:
        raise SystemExit("the solaris wheel is not installed: `make install` installs it (--no-deps)")
    tifs = [Path(spec.origin).parent / "data" / "preproc_tutorial" / f"ms{i}.tif" for i in (1, 2, 3)]
    labels_path = Path(os.environ.get("PEARL_ROTTERDAM_LABELS", REPO_ROOT.parent / ROTTERDAM_LABELS))
    catalog = home / "catalog" / "rotterdam"
    if not (catalog / "collection.json").is_file():
        log("ingesting the Rotterdam images through `pearl ingest` ...")
        env = {**os.environ, "PEARL_HOME": str(home)}
        cmd = [str(REPO_ROOT / ".venv/bin/pearl"), "ingest", *map(str, tifs), "--bands", "3,2,1,4"]
        cmd += ["--collection", "rotterdam"]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    images = {t.stem: catalog / t.stem / "image.tif" for t in tifs}
    labels = gpd.read_file(labels_path)
    points = locate(gpd.GeoDataFrame({"group": labels["class"]}, geometry=labels.geometry, crs=labels.crs), images)
    return Scene("rotterdam", images, points, *pixel_features(images, points))


def shifted_scene(settings, n: int = 400) -> Scene:
    """Points drawn uniformly from the synthetic `shifted` region's dense 4-class reference labels."""
    if not (settings.catalog_dir / "shifted" / "collection.json").is_file():
        build_region(load_regions(settings.assets_dir)["shifted"], settings.catalog_dir, show_progress=True)
    names = [TO_GROUP["chesapeake4"][c] for c in load_schema("chesapeake4").names]
    images, frames = {}, []
    rng = np.random.default_rng(0)
    items = load_collection_items(settings.catalog_dir, "shifted")
    for item in items:
        images[item.id] = Path(item.assets["image"].href)
        with rasterio.open(item.assets[label_asset_key("chesapeake4")].href) as src:
            rows, cols = rng.integers(0, src.height, n // len(items)), rng.integers(0, src.width, n // len(items))
            values = src.read(1)[rows, cols]
            keep = values < len(names)
            xs, ys = rasterio.transform.xy(src.transform, rows[keep], cols[keep])
            groups = [names[v] for v in values[keep]]
            columns = {"group": groups, "item": item.id, "row": rows[keep], "col": cols[keep]}
            frames.append(gpd.GeoDataFrame(columns, geometry=gpd.points_from_xy(xs, ys), crs=src.crs))
    points = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    return Scene("shifted", images, points, *pixel_features(images, points))


def starter(settings, schema_id: str) -> tuple[LandcoverModel, ReplaySet]:
    """The shipped weights as `train_starter` registers them: wide embedding, zero-shot head, replay set (cached)."""
    from pearl_pipelines.ml.data import load_labelled_rasters
    from pearl_pipelines.ml.starter import ensure_regions

    recipe = recipe_for(schema_id)
    model = with_features(load_shipped(shipped_path(settings.assets_dir, schema_id, recipe.arch))[0], recipe.features)
    cached = settings.home_abs / "bench" / "real_imagery" / f"starter-{schema_id}-{backbone_digest(model)}"
    if (cached / "model.pt").is_file() and (cached / REPLAY_FILE).is_file():
        return load_model(cached / "model.pt"), ReplaySet.load(cached / REPLAY_FILE)
    names = training_regions(settings)
    ensure_regions(settings, names)
    train = load_labelled_rasters(settings.catalog_dir, names, schema_id)
    fit = fit_zero_shot_head(model, train, recipe.zero_shot, seed=recipe.train.seed)
    log(f"{schema_id}: zero-shot head fitted in {fit.seconds:.0f} s" if fit else f"{schema_id}: trained head")
    replay = starter_replay_set(model, train, recipe, with_prior=fit is not None)  # as train_starter registers it
    replay.save(cached / REPLAY_FILE)
    save_model(model, cached / "model.pt")
    return model, replay


def embed_scene(model: LandcoverModel, scene: Scene, out: Path) -> tuple[dict[str, EmbeddingCache], np.ndarray]:
    """Each image through the engine (classes + embedding cache); returns the caches and the zero-shot classes."""
    caches, predicted = {}, np.zeros(len(scene.points), np.int64)
    for item, path in scene.images.items():
        result = predict(model, path, out / item / "pred", embeddings_dir=out / item / "emb")
        caches[item] = EmbeddingCache.open(out / item / "emb")
        at = np.flatnonzero(scene.points["item"].to_numpy() == item)
        with rasterio.open(result.classes_path) as src:
            classes = src.read(1)
        predicted[at] = classes[scene.points["row"].to_numpy()[at], scene.points["col"].to_numpy()[at]]
    return caches, predicted


def grouped(schema_id: str, names: list[str], classes: np.ndarray) -> np.ndarray:
    table = np.array([TO_GROUP[schema_id].get(n) or "-" for n in names] + ["-"])
    return table[np.minimum(classes, len(names))]


def draws(scene: Scene, k: int) -> list[np.ndarray]:
    """DRAWS random k-point click sets (each with at least two groups), the same for every method."""
    groups, out = scene.points["group"].to_numpy(), []
    for seed in range(DRAWS):
        rng = np.random.default_rng(1000 * k + seed)
        pick = rng.choice(len(groups), size=k, replace=False)
        while len(set(groups[pick])) < 2:
            pick = rng.choice(len(groups), size=k, replace=False)
        out.append(pick)
    return out


def logistic(features: np.ndarray) -> Callable[[Scene, np.ndarray, np.ndarray], np.ndarray]:
    def fit_predict(scene: Scene, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        clf.fit(features[train], scene.points["group"].to_numpy()[train])
        return clf.predict(features[test])

    return fit_predict


class EngineRetrain:
    """The project's own `retrain` on clicked points: fit a version, then classify points from the caches.

    Callable as a method of the table (scene, train, test) -> predicted groups; keeps the seconds of every fit.
    """

    def __init__(
        self,
        schema_id: str,
        model: LandcoverModel,
        caches: dict[str, EmbeddingCache],
        replay: ReplaySet | None,
        options: RetrainOptions,
        strategy: str = "logistic_regression",
    ) -> None:
        self.schema_id, self.caches, self.replay, self.options = schema_id, caches, replay, options
        self.parent = ModelVersion.from_model(model)
        self.strategy = make_strategy(strategy)
        self.seconds: list[float] = []

    def fit(self, scene: Scene, train: np.ndarray) -> ModelVersion:
        clicks = scene.points.iloc[train]
        labels = gpd.GeoDataFrame(
            {
                "label_id": np.arange(len(clicks)),
                "class_name": [FROM_GROUP[self.schema_id][g] for g in clicks["group"]],
            },
            geometry=clicks.geometry.to_numpy(),
            crs=scene.points.crs,
        )
        started = time.perf_counter()
        version = retrain(
            self.parent,
            list(self.caches.values()),
            labels,
            replay=self.replay,
            strategy=self.strategy,
            options=self.options,
        )
        self.seconds.append(time.perf_counter() - started)
        return version

    def logits(self, scene: Scene, version: ModelVersion, idx: np.ndarray) -> np.ndarray:
        points = scene.points.iloc[idx]
        out = np.zeros((len(idx), len(version.schema)), np.float32)
        for item, cache in self.caches.items():
            at = np.flatnonzero(points["item"].to_numpy() == item)
            rows, cols = points["row"].to_numpy()[at], points["col"].to_numpy()[at]
            out[at] = version.logits(sample_embeddings(cache, rows, cols), cache.xy(rows, cols))
        return out

    def predict(self, scene: Scene, version: ModelVersion, idx: np.ndarray) -> np.ndarray:
        return grouped(self.schema_id, version.schema.names, np.argmax(self.logits(scene, version, idx), axis=1))

    def __call__(self, scene: Scene, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        return self.predict(scene, self.fit(scene, train), test)


def spread_pick(scene: Scene, candidates: np.ndarray, scores: np.ndarray, n: int, spacing_m: float) -> np.ndarray:
    """Up to n candidates, most uncertain first, none closer than `spacing_m` to another one picked."""
    xy = np.column_stack([scene.points.geometry.x.to_numpy(), scene.points.geometry.y.to_numpy()])
    picked: list[int] = []
    for i in candidates[np.argsort(-scores, kind="stable")]:
        if all(np.hypot(*(xy[i] - xy[j])) >= spacing_m for j in picked):
            picked.append(int(i))
            if len(picked) == n:
                break
    return np.array(picked, dtype=np.int64)


def active_vs_random(scene: Scene, method: EngineRetrain, ks: tuple[int, ...], batch: int = 5) -> dict[str, dict]:
    """Simulated mappers on a fixed half of the points (the other half is the test set): one clicks random points,
    the other clicks where `ml.suggest.uncertainty` (min-margin) is highest, spread out, `batch` at a time."""
    truth = scene.points["group"].to_numpy()
    result: dict[str, dict[str, list[float]]] = {"random clicks": {}, "label here next (margin)": {}}
    for seed in range(DRAWS):
        order = np.random.default_rng(7000 + seed).permutation(len(truth))
        pool, test = order[: len(order) // 2], order[len(order) // 2 :]
        for k in ks:
            clicks = pool[:k]
            acc = float((method(scene, clicks, test) == truth[test]).mean())
            result["random clicks"].setdefault(f"k={k}", []).append(acc)
        clicks = pool[: ks[0]]
        while True:
            version = method.fit(scene, clicks)
            if len(clicks) in ks:
                acc = float((method.predict(scene, version, test) == truth[test]).mean())
                result["label here next (margin)"].setdefault(f"k={len(clicks)}", []).append(acc)
            if len(clicks) >= max(ks):
                break
            rest = np.setdiff1d(pool, clicks)
            scores = uncertainty(method.logits(scene, version, rest), "margin")
            step = min(batch, min(k for k in ks if k > len(clicks)) - len(clicks))
            clicks = np.concatenate([clicks, spread_pick(scene, rest, scores, step, spacing_m=10.0)])
    return {name: {k: float(np.mean(v)) for k, v in row.items()} for name, row in result.items()}


def run_scene(settings, scene: Scene, work: Path) -> dict[str, dict[str, float]]:
    """Accuracy per method: zero-shot, and mean over the draws at each click count."""
    truth = scene.points["group"].to_numpy()
    log(f"\n== {scene.name}: {len(truth)} points ({', '.join(f'{g} {int((truth == g).sum())}' for g in GROUPS)})")
    methods: dict[str, Callable[[Scene, np.ndarray, np.ndarray], np.ndarray]] = {
        "raw RGBN logistic": logistic(scene.raw),
        "RGBN + 5x5 texture logistic": logistic(scene.texture),
    }
    table: dict[str, dict[str, float]] = {}
    for schema_id in ("chesapeake4", "chesapeake9"):
        model, replay = starter(settings, schema_id)
        caches, zero = embed_scene(model, scene, work / scene.name / schema_id)
        zero_acc = float((grouped(schema_id, model.spec.schema.names, zero) == truth).mean())
        name = f"{schema_id} {model.spec.arch}"
        variants = {
            "replay chosen by CV": (replay, RetrainOptions(evaluate=False)),
            "full replay": (replay, RetrainOptions(evaluate=False, replay_scale=1.0)),
            "no replay": (replay, RetrainOptions(evaluate=False, replay_scale=0.0)),
            "not centred on the zero-shot map": (replay, RetrainOptions(evaluate=False, prior=False)),
        }
        for variant, (replay_set, options) in variants.items():
            table[f"{name} + retrain ({variant})"] = {"zero_shot": zero_acc}
            methods[f"{name} + retrain ({variant})"] = EngineRetrain(schema_id, model, caches, replay_set, options)
        if schema_id == "chesapeake9":  # the other strategies, on the review app's starter
            for strategy in ("mlp", "spatial_ensemble"):
                table[f"{name} + {strategy} (replay chosen by CV)"] = {"zero_shot": zero_acc}
                methods[f"{name} + {strategy} (replay chosen by CV)"] = EngineRetrain(
                    schema_id, model, caches, replay, RetrainOptions(evaluate=False), strategy
                )
    for k in CLICKS:
        picks = draws(scene, k)
        for method, fit_predict in methods.items():
            accs = []
            for pick in picks:
                test = np.setdiff1d(np.arange(len(truth)), pick)
                accs.append(float((fit_predict(scene, pick, test) == truth[test]).mean()))
            table.setdefault(method, {})[f"k={k}"] = float(np.mean(accs))
            table[method][f"se_k={k}"] = float(np.std(accs) / np.sqrt(len(accs)))  # standard error over draws
    timings = {m: f.seconds[-DRAWS:] for m, f in methods.items() if isinstance(f, EngineRetrain)}  # the k=100 fits
    main = methods["chesapeake9 unet + retrain (replay chosen by CV)"]
    assert isinstance(main, EngineRetrain)
    pool_ks = tuple(k for k in CLICKS if k <= len(truth) // 2)
    for name, row in active_vs_random(scene, main, pool_ks).items():
        table[f"9-class, half the points as pool: {name}"] = row
    columns = ["zero_shot", *(f"k={k}" for k in CLICKS)]
    width = max(map(len, table))
    log(f"{'method':<{width}}  " + "  ".join(f"{c:>9}" for c in columns))
    for method, row in table.items():
        log(f"{method:<{width}}  " + "  ".join(f"{row[c]:9.3f}" if c in row else f"{'-':>9}" for c in columns))
    log("seconds per retrain at 100 clicks (fit, incl. the replay share's grouped CV; then re-prediction of 1 km^2):")
    for method, seconds in timings.items():
        version = methods[method].fit(scene, draws(scene, 100)[0])  # type: ignore[attr-defined]
        cache = max(methods[method].caches.values(), key=lambda c: c.shape[0] * c.shape[1])  # type: ignore[attr-defined]
        started = time.perf_counter()
        apply_head(cache, version.weight, version.bias, version.schema, work / "repredict", extra=version.head_extra)
        per_km2 = (time.perf_counter() - started) * 1e6 / (cache.shape[0] * cache.shape[1])
        table[method]["fit_s"], table[method]["repredict_s_per_km2"] = float(np.mean(seconds)), per_km2
        log(f"  {method:<{width}}  fit {np.mean(seconds):6.2f} s   re-predict {per_km2:6.2f} s/km^2")
    return table


def plot(tables: dict[str, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 6.5), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for ax, (scene, table) in zip(axes[0], tables.items(), strict=True):
        for i, (method, row) in enumerate(table.items()):
            style = "--" if "logistic" in method else ":" if "pool" in method else "-"
            ks = [k for k in CLICKS if f"k={k}" in row]
            ax.plot(ks, [row[f"k={k}"] for k in ks], style, marker="o", color=colours[i % 20], label=method)
        ax.set(title=f"{scene}: accuracy vs clicks", xlabel="clicks (random labelled points)", ylabel="accuracy")
        ax.set_xscale("log")
        ax.set_xticks(CLICKS, [str(k) for k in CLICKS])
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.3, 1, 1))  # the shared legend below the plots, not over the lines
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    settings = get_settings()
    work = settings.home_abs / "bench" / "real_imagery"
    work.mkdir(parents=True, exist_ok=True)
    tables = {
        "rotterdam": run_scene(settings, rotterdam_scene(settings.home_abs), work),
        "shifted": run_scene(settings, shifted_scene(settings), work),
    }
    plot(tables, work / "real_imagery.png")
    log(f"plot: {work / 'real_imagery.png'}")
    real = tables["rotterdam"]
    best = "chesapeake9 unet + retrain (replay chosen by CV)"  # the review app's starter
    four = "chesapeake4 fcn + retrain (replay chosen by CV)"
    result = {
        "zero_shot_acc": real[best]["zero_shot"],
        "zero_shot_acc_4": real[four]["zero_shot"],
        **{f"acc_at_{k}": real[best][f"k={k}"] for k in CLICKS},
        "acc_at_50_se": real[best]["se_k=50"],
        "draws": DRAWS,
        **{f"acc_4_at_{k}": real[four][f"k={k}"] for k in CLICKS},
        **{f"no_replay_acc_at_{k}": real["chesapeake9 unet + retrain (no replay)"][f"k={k}"] for k in CLICKS},
        **{f"full_replay_acc_at_{k}": real["chesapeake9 unet + retrain (full replay)"][f"k={k}"] for k in CLICKS},
        **{
            f"not_centred_acc_at_{k}": real["chesapeake9 unet + retrain (not centred on the zero-shot map)"][f"k={k}"]
            for k in CLICKS
        },
        **{f"baseline_raw_acc_at_{k}": real["raw RGBN logistic"][f"k={k}"] for k in CLICKS},
        **{f"baseline_tex_acc_at_{k}": real["RGBN + 5x5 texture logistic"][f"k={k}"] for k in CLICKS},
        **{
            f"{key}_acc_at_{k}": real[f"9-class, half the points as pool: {name}"][f"k={k}"]
            for key, name in (("pool_random", "random clicks"), ("label_here_next", "label here next (margin)"))
            for k in (25, 50)
        },
        **{
            f"{s}_fit_s": real[f"chesapeake9 unet + {s} (replay chosen by CV)"]["fit_s"]
            for s in ("mlp", "spatial_ensemble")
        },
        "shifted_zero_shot_acc": tables["shifted"][best]["zero_shot"],
        **{f"shifted_acc_at_{k}": tables["shifted"][best][f"k={k}"] for k in CLICKS},
        **{
            f"shifted_baseline_tex_acc_at_{k}": tables["shifted"]["RGBN + 5x5 texture logistic"][f"k={k}"]
            for k in CLICKS
        },
    }
    print(json.dumps({k: round(v, 4) for k, v in result.items()}), flush=True)


if __name__ == "__main__":
    main()
