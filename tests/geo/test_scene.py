"""The synthetic NAIP-like scene generator: determinism, class balance, spectra, label/image alignment, speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pearl_pipelines.classes import load_schema
from pearl_pipelines.geo import render
from pearl_pipelines.synthetic.scene import SHIFTED, Scene, Shift, generate_scene
from pearl_pipelines.synthetic.spectra import CHESAPEAKE9, endmembers

SEED = 11
C = {name: i for i, name in enumerate(CHESAPEAKE9)}
VEGETATION = ("tree_canopy", "low_vegetation")
BUILT_AND_WATER = ("water", "structures", "impervious_surfaces", "impervious_roads")


@pytest.fixture(scope="module")
def summer() -> Scene:
    return generate_scene(2000, 2000, SEED)


@pytest.fixture(scope="module")
def autumn() -> Scene:
    return generate_scene(2000, 2000, SEED, SHIFTED)


def ndvi_by_class(scene: Scene) -> dict[str, float]:
    red, nir = scene.image[0].astype(np.float32), scene.image[3].astype(np.float32)
    ndvi = (nir - red) / np.maximum(nir + red, 1)
    return {name: float(ndvi[scene.labels == i].mean()) for name, i in C.items() if (scene.labels == i).any()}


def test_class_order_is_the_chesapeake9_schema() -> None:
    assert list(CHESAPEAKE9) == load_schema("chesapeake9").names


def test_shape_dtype_and_determinism() -> None:
    a = generate_scene(256, 320, seed=3)
    b = generate_scene(256, 320, seed=3)
    c = generate_scene(256, 320, seed=4)
    assert a.image.shape == (4, 256, 320) and a.image.dtype == np.uint8
    assert a.labels.shape == (256, 320) and a.labels.dtype == np.uint8
    assert a.labels.max() < len(CHESAPEAKE9)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert (a.labels != c.labels).mean() > 0.1
    assert np.abs(a.image.astype(int) - c.image.astype(int)).mean() > 5


def test_every_class_present_and_balance_plausible(summer: Scene) -> None:
    share = np.bincount(summer.labels.ravel(), minlength=len(C)) / summer.labels.size
    for name, i in C.items():
        assert share[i] >= 0.005, f"{name} covers only {share[i]:.2%} of a 2 km scene"
    # mixed rural/suburban: canopy and low vegetation dominate, built land is a minority
    top_two = {CHESAPEAKE9[i] for i in np.argsort(share)[-2:]}
    assert top_two == set(VEGETATION)
    assert share[C["tree_canopy"]] > 0.25 and share[C["low_vegetation"]] > 0.2
    built = share[C["structures"]] + share[C["impervious_surfaces"]] + share[C["impervious_roads"]]
    assert 0.03 < built < 0.3


def test_one_km_scenes_have_water_and_built_land() -> None:
    for seed in (0, 1, 2):
        labels = generate_scene(1000, 1000, seed).labels
        present = set(np.unique(labels).tolist())
        assert C["water"] in present and C["structures"] in present and C["impervious_roads"] in present


def test_vegetation_is_greener_than_water_and_built_land(summer: Scene) -> None:
    ndvi = ndvi_by_class(summer)
    for name in VEGETATION:
        assert ndvi[name] > 0.3, ndvi
    for name in BUILT_AND_WATER:
        assert ndvi[name] < 0.15, ndvi
    assert min(ndvi[n] for n in VEGETATION) > max(ndvi[n] for n in BUILT_AND_WATER) + 0.15


def test_shifted_domain_changes_the_image_not_the_labels(summer: Scene, autumn: Scene) -> None:
    np.testing.assert_array_equal(summer.labels, autumn.labels)
    assert np.abs(summer.image.astype(int) - autumn.image.astype(int)).mean() > 8
    before, after = ndvi_by_class(summer), ndvi_by_class(autumn)
    for name in VEGETATION:
        assert after[name] < before[name] - 0.1  # leaf-off, harvested
        assert after[name] > max(after[n] for n in BUILT_AND_WATER) + 0.05
    assert generate_scene(64, 64, 1, Shift()).image.tobytes() == generate_scene(64, 64, 1).image.tobytes()


def test_labels_line_up_with_the_image(summer: Scene) -> None:
    nir = summer.image[3]
    water = summer.labels == C["water"]
    trees = summer.labels == C["tree_canopy"]
    assert nir[water].mean() < 50
    assert nir[trees].mean() > 110
    dark = nir < 50  # between open water (~30) and the darkest shadows on asphalt
    iou = (dark & water).sum() / (dark | water).sum()
    assert iou > 0.9, f"water from a NIR threshold vs labels: IoU {iou:.3f}"
    # roofs and roads are grey: the visible bands agree within a few DN
    for name in ("structures", "impervious_roads"):
        rgb = summer.image[:3, summer.labels == C[name]].mean(axis=1)
        assert rgb.max() - rgb.min() < 15, (name, rgb)


def test_earthlib_endmembers_are_physically_sensible() -> None:
    em = endmembers()
    for veg in ("broadleaf", "grass", "crop"):
        red, green, blue, nir = em[veg].mean
        assert nir > 5 * red and green > red and green > blue  # red edge; green peak
    assert em["soil"].mean[0] > em["soil"].mean[2]  # soils redder than blue
    assert em["concrete"].mean.mean() > em["asphalt"].mean.mean()
    assert all(em[f"water_{k}"].mean[3] < 0.015 for k in ("clear", "turbid", "algal"))


def test_speed_one_km2() -> None:
    start = time.perf_counter()
    generate_scene(1000, 1000, seed=5)
    assert time.perf_counter() - start < 10


def test_render_pngs(tmp_path: Path) -> None:
    scene = generate_scene(300, 200, seed=2)
    schema = load_schema("chesapeake9")
    tc = render.true_color_png(scene.image, tmp_path / "tc.png", max_size=150)
    fc = render.false_color_png(scene.image, tmp_path / "fc.png", max_size=150)
    lb = render.labels_png(scene.labels, schema, tmp_path / "lb.png", max_size=150)
    assert Image.open(tc).size == (100, 150) and Image.open(fc).size == (100, 150)
    # false colour: vegetation is red (NIR shown as red)
    false = np.asarray(Image.open(fc)).astype(int)
    assert (false[..., 0] > false[..., 1]).mean() > 0.5
    labels = np.asarray(Image.open(lb).convert("RGB"))
    assert labels.shape[0] >= 150 and labels.shape[1] > 100  # map plus legend panel
    map_colours = {tuple(c) for c in labels[:150, :100].reshape(-1, 3)}
    assert map_colours <= {c.rgb for c in schema.classes}
