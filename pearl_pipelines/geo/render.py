"""Quick-look PNGs of 4-band imagery (R, G, B, NIR) and class rasters, for people and reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pearl_pipelines.classes import NODATA_CLASS, ClassSchema


def _fit(size: tuple[int, int], max_size: int) -> tuple[int, int]:
    """(width, height) scaled down so the longer side is at most max_size; never scaled up."""
    w, h = size
    scale = min(1.0, max_size / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def _composite(image: np.ndarray, bands: tuple[int, int, int], path: Path | str, max_size: int) -> Path:
    if image.ndim != 3 or image.shape[0] <= max(bands):
        raise ValueError(f"expected a (bands, H, W) array with band {max(bands)}, got shape {image.shape}")
    rgb = np.stack([image[b] for b in bands], axis=-1)
    if rgb.dtype != np.uint8:
        rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    pil = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    pil = pil.resize(_fit(pil.size, max_size), Image.Resampling.BOX)  # area average: no aliasing
    small = np.asarray(pil).astype(np.float32)
    # one stretch for all three bands keeps the colour balance (vegetation stays green, roads grey)
    lo, hi = np.percentile(small, (0.5, 99.5))
    stretched = np.clip((small - lo) / max(hi - lo, 1.0) * 255.0, 0, 255).astype(np.uint8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stretched, "RGB").save(out)
    return out


def true_color_png(image: np.ndarray, path: Path | str, max_size: int = 512) -> Path:
    """Bands 1-3 (R, G, B) with a percentile stretch, area-downsampled to max_size."""
    return _composite(image, (0, 1, 2), path, max_size)


def false_color_png(image: np.ndarray, path: Path | str, max_size: int = 512) -> Path:
    """Colour infrared: NIR, R, G shown as R, G, B (healthy vegetation is red)."""
    return _composite(image, (3, 0, 1), path, max_size)


def labels_png(labels: np.ndarray, schema: ClassSchema, path: Path | str, max_size: int = 512) -> Path:
    """Class raster in the schema's colours (nodata black), nearest-neighbour downsampled, with a legend."""
    if labels.ndim != 2:
        raise ValueError(f"expected an (H, W) class raster, got shape {labels.shape}")
    rgb = schema.palette()[labels.astype(np.uint8)]
    pil = Image.fromarray(rgb, "RGB")
    pil = pil.resize(_fit(pil.size, max_size), Image.Resampling.NEAREST)
    present = set(np.unique(labels).tolist()) - {NODATA_CLASS}
    canvas = _with_legend(pil, schema, present)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def _with_legend(pil: Image.Image, schema: ClassSchema, present: set[int]) -> Image.Image:
    """The map with a legend panel on its right: one swatch per class (greyed text if absent)."""
    font = ImageFont.load_default()
    row, swatch, pad = 16, 11, 6
    text_w = max(int(font.getlength(c.title)) for c in schema.classes)
    panel_w = pad * 3 + swatch + text_w
    height = max(pil.height, pad * 2 + row * len(schema))
    canvas = Image.new("RGB", (pil.width + panel_w, height), (255, 255, 255))
    canvas.paste(pil, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, c in enumerate(schema.classes):
        y = pad + i * row
        x = pil.width + pad
        draw.rectangle([x, y, x + swatch, y + swatch], fill=c.rgb, outline=(0, 0, 0))
        draw.text((x + swatch + pad, y - 1), c.title, fill=(0, 0, 0) if i in present else (160, 160, 160), font=font)
    return canvas
