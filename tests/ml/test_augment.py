"""Domain randomisation: photometric draws change pixel values only; geometric ones move labels with the image."""

from __future__ import annotations

import numpy as np

from pearl_pipelines.ml.augment import DomainRandomisation

NEUTRAL = {
    "gain": (1.0, 1.0),
    "offset": (0.0, 0.0),
    "gamma": (1.0, 1.0),
    "illumination": (1.0, 1.0),
    "haze": (0.0, 0.0),
    "vegetation_nir": (1.0, 1.0),
    "zoom": (1.0, 1.0),
    "coarsen": (1.0, 1.0),
    "blur_sigma": (0.0, 0.0),
    "noise_sigma": (0.0, 0.0),
    "swap_rgb": 0.0,
}


def squares(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((size, size), np.uint8)
    labels[8:30, 10:40] = 1
    labels[40:60, 20:50] = 2
    image = np.stack([labels * 100 + 20] * 4).astype(np.uint8)
    return image, labels


def test_neutral_draw_is_the_identity() -> None:
    image, labels = squares()
    out, out_labels = DomainRandomisation(p=1.0, **NEUTRAL)(image, labels, np.random.default_rng(0))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(out_labels, labels)


def test_zoom_moves_labels_with_the_image() -> None:
    image, labels = squares()
    dr = DomainRandomisation(p=1.0, **{**NEUTRAL, "zoom": (1.6, 1.9)})
    for seed in range(5):
        out, out_labels = dr(image, labels, np.random.default_rng(seed))
        assert out.shape == image.shape and out_labels.shape == labels.shape
        inner = out_labels[1:-1, 1:-1]  # away from edges where bilinear and nearest round differently
        expected = np.round((out[0, 1:-1, 1:-1].astype(int) - 20) / 100)
        assert (inner == expected).mean() > 0.97


def test_photometric_draws_vary_values_not_labels() -> None:
    image, labels = squares()
    dr = DomainRandomisation(p=1.0, zoom=(1.0, 1.0))
    outs = [dr(image, labels, np.random.default_rng(seed)) for seed in range(4)]
    for out, out_labels in outs:
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out_labels, labels)
    band_means = np.array([[o[b].mean() for b in range(4)] for o, _ in outs])
    assert band_means.std(axis=0).min() > 2  # every band's level changes between draws


def test_p_zero_leaves_patches_alone() -> None:
    image, labels = squares()
    out, out_labels = DomainRandomisation(p=0.0)(image, labels, np.random.default_rng(0))
    assert out is image and out_labels is labels
