"""Domain randomisation of training patches: what changes between sensors, seasons and flights, drawn at random.

The starters train on synthetic scenes; real imagery differs in band response, illumination, haze, season,
resolution, sharpness and noise, and sometimes in band order. Each patch gets a random draw of all of these
(with probability `p`), so the backbone cannot lean on one sensor's absolute colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi


@dataclass(frozen=True)
class DomainRandomisation:
    p: float = 0.8  # share of patches randomised
    gain: tuple[float, float] = (0.6, 1.4)  # per band
    offset: tuple[float, float] = (-0.12, 0.12)  # per band, in 0..1 units
    gamma: tuple[float, float] = (0.7, 1.4)  # per band
    illumination: tuple[float, float] = (0.6, 1.3)  # all bands
    haze: tuple[float, float] = (0.0, 0.35)  # blend towards a bright grey
    vegetation_nir: tuple[float, float] = (0.7, 1.2)  # season: NIR and green of bright-NIR pixels scale together
    zoom: tuple[float, float] = (1.0, 2.0)  # 0.5-1 m from 1 m: enlarge, crop the centre
    coarsen: tuple[float, float] = (1.0, 2.0)  # 1-2 m: down- then up-sample
    blur_sigma: tuple[float, float] = (0.0, 1.2)
    noise_sigma: tuple[float, float] = (0.0, 0.03)
    swap_rgb: float = 0.1  # red <-> blue, a band-order mistake

    def __call__(
        self, image: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """(bands, p, p) uint8 image and (p, p) labels -> randomised copies (labels move only with geometry)."""
        if rng.random() >= self.p:
            return image, labels
        x = image.astype(np.float32) / 255.0
        bands, size = x.shape[0], x.shape[1]

        def u(bounds: tuple[float, float], n: int | None = None) -> Any:  # a float, or n floats
            return rng.uniform(bounds[0], bounds[1], n)

        zoom = u(self.zoom)
        if zoom > 1.01:  # enlarge and crop: finer ground resolution; labels by nearest neighbour
            crop = max(round(size / zoom), 8)
            r0, c0 = rng.integers(0, size - crop + 1, 2)
            x = ndi.zoom(x[:, r0 : r0 + crop, c0 : c0 + crop], (1, size / crop, size / crop), order=1)[:, :size, :size]
            labels = ndi.zoom(labels[r0 : r0 + crop, c0 : c0 + crop], size / crop, order=0)[:size, :size]
        coarse = u(self.coarsen)
        if coarse > 1.05:
            small = ndi.zoom(x, (1, 1 / coarse, 1 / coarse), order=1)
            x = ndi.zoom(small, (1, size / small.shape[1], size / small.shape[2]), order=1)[:, :size, :size]
        sigma = u(self.blur_sigma)
        if sigma > 0.2:
            x = ndi.gaussian_filter(x, (0, sigma, sigma))
        if bands >= 4:  # season: vegetation's NIR plateau and green peak move together
            veg = np.clip((x[3] - x[0]) / (x[3] + x[0] + 1e-3), 0, 1)
            scale = 1 + (u(self.vegetation_nir) - 1) * veg
            x[3] *= scale
            x[1] *= 1 + (scale - 1) * 0.5
        x = x ** u(self.gamma, bands)[:, None, None].astype(np.float32)
        x = x * (u(self.gain, bands) * u(self.illumination))[:, None, None] + u(self.offset, bands)[:, None, None]
        haze = u(self.haze)
        x = (1 - haze) * x + haze * 0.75
        x = x + rng.normal(0, u(self.noise_sigma), x.shape)
        if bands >= 3 and rng.random() < self.swap_rgb:
            x[[0, 2]] = x[[2, 0]]
        out = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
        return out, np.ascontiguousarray(labels)
