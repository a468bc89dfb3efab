"""numpy's .npy/.npz reads, safe from threads on every CPython we run.

numpy parses each array's header with `ast.literal_eval`. CPython 3.11 keeps the AST constructor's recursion depth in
state that all threads share (python/cpython#106905), so two threads parsing at once fail now and then with
"SystemError: AST constructor recursion depth mismatch" (seen here: a chunked cache download decodes with 8 threads,
and the app opens caches and heads from request threads). Reads go through one lock while the header is parsed: the
rest is a memory map or a copy of an uncompressed array, so the lock costs nothing measurable.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import IO, Any

import numpy as np

_HEADERS = threading.Lock()


def load(file: str | Path | IO[bytes], **kwargs: Any) -> Any:
    """`np.load` of a .npy file (e.g. `mmap_mode="r"`), its header parsed under the lock."""
    with _HEADERS:
        return np.load(file, **kwargs)


def load_all(file: str | Path | IO[bytes]) -> dict[str, np.ndarray]:
    """Every array of a .npz file by name, read whole (an .npz parses each array's header when it is read)."""
    with _HEADERS, np.load(file) as archive:
        return {name: archive[name] for name in archive.files}
