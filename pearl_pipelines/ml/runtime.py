"""Which runtime computes a model's feature groups on CPU: PyTorch (the default), or ONNX Runtime where asked for
and where it agrees with PyTorch.

ONNX Runtime runs the same graph with convolutions fused with their activations and blocked memory layouts. For
the registered 9-class starter on 2 cores capped at AVX2 it is *not* faster on a quiet machine (1 km^2 with the
embedding cache: 11.1 s against PyTorch's 8.0 s; zero-shot map 3.5 against 3.3 s, bench/inference.py prints
both), but it degrades far less when other processes share the cores (2.7x faster than PyTorch at a load
average of 5, where PyTorch's OpenMP barriers wait on descheduled threads). So PyTorch stays the default and
`PEARL_CPU_RUNTIME=onnxruntime` (or `auto`: ONNX Runtime where usable, else PyTorch) is there for machines that
serve many things at once. `group_function` exports the groups a forward pass needs to ONNX once per backbone
(cached under PEARL_HOME/cache/onnx; ~5-10 s), opens a session with this process's thread count and no spinning,
and checks it against PyTorch on a test window before using it: if the outputs differ by more than `TOLERANCE`
of their scale, or anything in the export fails, `auto` falls back to PyTorch with a log line (`onnxruntime`
fails loudly). Heads, blending and everything after the groups stay in PyTorch; GPUs always run PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pearl_pipelines.ml.embeddings import backbone_digest
from pearl_pipelines.ml.models import LandcoverModel

log = logging.getLogger(__name__)

Runtime = Literal["auto", "torch", "onnxruntime"]
RUNTIMES: tuple[str, ...] = ("torch", "onnxruntime", "auto")
DEFAULT_RUNTIME: Runtime = "torch"  # measured faster on a quiet machine (see above)
EXPORT_DIR = "onnx"  # under the machine cache (Settings.cache_dir)
OPSET = 17
# Largest |ONNX - PyTorch| allowed on the test window, relative to the largest |output| of each group (float32
# rounding of differently ordered sums gives ~1e-6; a wrong graph gives O(1)).
TOLERANCE = 1e-4
CHECK_SIDE = 128  # px of the test window (a multiple of every model's `multiple`: 32)

Groups = Callable[[torch.Tensor], dict[str, torch.Tensor]]


class _GroupsModule(nn.Module):
    """The groups of `net.embed_groups(x, skip)` as a tuple: what the ONNX graph computes."""

    def __init__(self, net: LandcoverModel, skip: frozenset[str]) -> None:
        super().__init__()
        self.net, self.skip = net, skip

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.net.embed_groups(x, skip=self.skip).values())


class OnnxGroups:
    """`embed_groups` on an ONNX Runtime session: uint8 (B, bands, H, W) -> {group: float32 (B, C, H, W)}."""

    def __init__(self, session: Any, names: Sequence[str]) -> None:
        self.session, self.names = session, list(names)

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(None, {"x": np.ascontiguousarray(x.cpu().numpy())})
        return {name: torch.from_numpy(out) for name, out in zip(self.names, outputs, strict=True)}


def chosen_runtime() -> Runtime:
    value = os.environ.get("PEARL_CPU_RUNTIME", DEFAULT_RUNTIME).strip().lower() or DEFAULT_RUNTIME
    if value not in RUNTIMES:
        raise ValueError(f"PEARL_CPU_RUNTIME={value!r}; accepted: {', '.join(RUNTIMES)}")
    return value  # type: ignore[return-value]


def _export(net: LandcoverModel, skip: frozenset[str], path: Path) -> None:
    """Write the groups' ONNX graph (dynamic batch, height and width) to `path`, atomically."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    module = _GroupsModule(net, skip).eval()
    example = torch.zeros(1, len(net.spec.bands), CHECK_SIDE, CHECK_SIDE, dtype=torch.uint8)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shapes read as Python numbers: covered by the check
        torch.onnx.export(
            module,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=OPSET,
            input_names=["x"],
            dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}},
        )
    tmp.replace(path)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # No busy-waiting between operators: the review app and other workers share these cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _disagreement(net: LandcoverModel, groups: OnnxGroups, skip: frozenset[str]) -> str | None:
    """Why the session must not be used (its outputs differ from PyTorch's on a test window), or None."""
    generator = torch.Generator().manual_seed(0)
    shape = (1, len(net.spec.bands), CHECK_SIDE, CHECK_SIDE)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    with torch.inference_mode():
        expected = net.embed_groups(x, skip=skip)
    got = groups(x)
    if list(got) != list(expected):
        return f"groups {list(got)} instead of {list(expected)}"
    for name, want in expected.items():
        if got[name].shape != want.shape:
            return f"group {name}: shape {tuple(got[name].shape)} instead of {tuple(want.shape)}"
        error = float((got[name] - want).abs().max()) / max(float(want.abs().max()), 1.0)
        if not error <= TOLERANCE:
            return f"group {name}: relative difference {error:.2g} > {TOLERANCE}"
    return None


def onnx_groups(net: LandcoverModel, skip: frozenset[str], cache_dir: Path) -> OnnxGroups:
    """The checked ONNX Runtime version of `net.embed_groups(·, skip)`; raises RuntimeError saying why not."""
    names = [name for name in net.channel_groups if name not in skip]
    torch_tag = torch.__version__.split("+")[0]
    path = Path(cache_dir) / EXPORT_DIR / f"{backbone_digest(net)}-{'+'.join(names)}-torch{torch_tag}-{OPSET}.onnx"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            _export(net, skip, path)
        try:
            groups = OnnxGroups(_session(path), names)
        except Exception:  # a cached file cut short or written by another version: export it again
            _export(net, skip, path)
            groups = OnnxGroups(_session(path), names)
        problem = _disagreement(net, groups, skip)
    except Exception as exc:  # onnxruntime missing, an operator it lacks, a read-only cache, ...
        raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
    if problem:
        raise RuntimeError(f"ONNX Runtime disagrees with PyTorch ({problem})")
    return groups


def group_function(
    net: LandcoverModel, device: torch.device, *, skip: frozenset[str] = frozenset(), cache_dir: Path | None = None
) -> tuple[Groups, str]:
    """(x -> {group: features}, the runtime's name) for `net` in eval mode on `device`: ONNX Runtime on CPU
    where chosen and checked (`cache_dir`: where exported graphs are kept; None: the settings' machine cache),
    else PyTorch."""

    def in_torch(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return net.embed_groups(x, skip=skip)

    runtime = chosen_runtime()
    if device.type != "cpu" or runtime == "torch":
        return in_torch, "torch"
    if cache_dir is None:
        from pearl_pipelines.settings import get_settings

        cache_dir = get_settings().cache_dir
    try:
        return onnx_groups(net, skip, cache_dir), "onnxruntime"
    except RuntimeError as exc:
        if runtime == "onnxruntime":
            raise
        log.warning("computing the embedding with PyTorch: ONNX Runtime is not usable here (%s)", exc)
        return in_torch, "torch"
