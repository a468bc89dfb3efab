"""Class and confidence tiles as palette PNGs: one byte per pixel and the colormap as the PNG's palette.

titiler renders a colormapped tile as four bands (RGB + alpha) and compresses all four: 22 ms for a 512 px class tile
on one core, where a palette PNG of the same pixels takes 2.4 ms and is a third smaller. A browser shows both alike
(the palette's alpha is the PNG's tRNS chunk). Anything else (no colormap, rescaling, other formats or dtypes)
renders as titiler does."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image
from rio_tiler.models import ImageData
from titiler.core.resources.enums import ImageType
from titiler.core.utils import render_image


def palette(colormap: dict[int, Any]) -> np.ndarray | None:
    """(256, 4) RGBA of every byte value (values the colormap leaves out are transparent, as titiler draws them);
    None when the colormap is not one of byte values."""
    lut = np.zeros((256, 4), dtype=np.uint8)
    for value, colour in colormap.items():
        if not isinstance(value, int | np.integer) or not 0 <= value <= 255 or len(colour) not in (3, 4):
            return None
        lut[value] = (*colour, 255) if len(colour) == 3 else colour
    return lut


def render_class_tile(
    image: ImageData,
    *,
    colormap: Any = None,
    output_format: ImageType | None = None,
    add_mask: bool = True,
    rescale: Any = None,
    color_formula: str | None = None,
    **options: Any,
) -> tuple[bytes, str]:
    """titiler's `render_func` for single-band byte layers with a colormap: a palette PNG where the request is a PNG,
    masked pixels on a transparent palette entry; titiler's own rendering otherwise."""
    lut = palette(colormap) if isinstance(colormap, dict) else None
    plain = rescale is None and color_formula is None and not options
    if lut is None or not plain or output_format != ImageType.png or image.count != 1 or image.data.dtype != np.uint8:
        return render_image(
            image,
            colormap=colormap,
            output_format=output_format,
            add_mask=add_mask,
            rescale=rescale,
            color_formula=color_formula,
            **options,
        )
    data = image.data[0]
    masked = np.asarray(image.mask) == 0
    if add_mask and masked.any():
        clear = np.flatnonzero(lut[:, 3] == 0)
        if not clear.size:  # every byte value has a colour: no palette entry left for masked pixels
            return render_image(image, colormap=colormap, output_format=output_format, add_mask=add_mask)
        data = np.where(masked, np.uint8(clear[0]), data)
    tile = Image.fromarray(np.ascontiguousarray(data, dtype=np.uint8))
    tile.putpalette(lut[:, :3].tobytes())  # "L" -> "P"
    out = io.BytesIO()
    tile.save(out, format="PNG", transparency=lut[:, 3].tobytes())
    return out.getvalue(), ImageType.png.mediatype
