"""One-thread sections for small, memory-bound numeric work (head fits, head application).

There, intra-op thread barriers cost more than the threads give: on a busy 2-core machine, 10-100x
more. torch's and BLAS's pools are both limited; the BLAS controller scans loaded libraries, so it is
built once per process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
from threadpoolctl import ThreadpoolController


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


@contextmanager
def single_threaded() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with _blas().limit(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)
