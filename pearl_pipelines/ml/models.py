"""Land-cover models split into a backbone (pixels -> per-pixel embeddings) and a 1x1 head.

Input normalisation lives inside the model, and a saved model carries its own description
(architecture, bands, class schema, normalisation), so a checkpoint is all one needs to predict.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.ml.features import build_feature_group

BANDS = ("red", "green", "blue", "nir")
MODEL_FILE = "model.pt"  # a saved model's file name, in a local folder and in a registered version's artifacts


class ModelSpec(BaseModel):
    """Everything needed to rebuild a model, stored next to its weights."""

    arch: str = Field(description="fcn | unet")
    bands: list[str] = Field(default_factory=lambda: list(BANDS))
    schema_: ClassSchema = Field(alias="schema")
    embed_dim: int = 64
    # Per-band mean/std of inputs scaled to 0..1 (uint8 / 255).
    mean: list[float] = Field(default_factory=lambda: [0.5, 0.5, 0.5, 0.5])
    std: list[float] = Field(default_factory=lambda: [0.25, 0.25, 0.25, 0.25])
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    # Feature groups embedded beside the backbone's (ml/features.py), in this order after its channels.
    features: list[str] = Field(default_factory=list)
    # Hidden width of an MLP head (1x1 conv, ReLU, 1x1 conv) set by an MLP retrain; 0: a linear 1x1 head.
    head_hidden: int = 0

    model_config = {"populate_by_name": True}

    @property
    def schema(self) -> ClassSchema:  # type: ignore[override]
        return self.schema_


class FCNBackbone(nn.Module):
    """PEARL's FCN: five 3x3 conv layers of `width` features, ReLU, same-size output."""

    def __init__(self, in_channels: int = 4, width: int = 64, layers: int = 5) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(layers):
            blocks += [nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*blocks)
        self.out_channels: int = width
        self.receptive_field = 2 * layers + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(min(8, cout), cout),
        nn.ReLU(inplace=True),
    )


class UNetBackbone(nn.Module):
    """Small U-Net (GroupNorm, as in the landcover research harness); output = last decoder features."""

    def __init__(self, in_channels: int = 4, base: int = 32, depth: int = 3, out_channels: int = 64) -> None:
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, chans[0])])
        self.down.extend(_double_conv(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
        self.dec = nn.ModuleList(_double_conv(chans[i] * 2, chans[i]) for i in reversed(range(depth)))
        self.proj = nn.Sequential(nn.Conv2d(chans[0], out_channels, 1), nn.ReLU(inplace=True))
        self.out_channels: int = out_channels
        self.multiple = 2**depth  # input sides must be multiples of this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.proj(x)


ARCHITECTURES: dict[str, type[nn.Module]] = {"fcn": FCNBackbone, "unet": UNetBackbone}


class LandcoverModel(nn.Module):
    """normalise -> backbone -> 1x1 head. `embed()` and `head` are exposed for cached-embedding retrains."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        if spec.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {spec.arch!r}; known: {', '.join(ARCHITECTURES)}")
        self.spec = spec
        kwargs = dict(spec.arch_kwargs)
        if spec.arch == "unet":
            kwargs.setdefault("out_channels", spec.embed_dim)
        else:
            kwargs.setdefault("width", spec.embed_dim)
        self.backbone = ARCHITECTURES[spec.arch](in_channels=len(spec.bands), **kwargs)
        self.extras = nn.ModuleList(build_feature_group(name, spec.bands) for name in spec.features)
        self.channel_groups: dict[str, tuple[int, int]] = {"backbone": (0, int(self.backbone.out_channels))}  # type: ignore[arg-type]
        for name, extra in zip(spec.features, self.extras, strict=True):
            start = max(stop for _, stop in self.channel_groups.values())
            self.channel_groups[name] = (start, start + int(extra.out_channels))  # type: ignore[arg-type]
        self.embed_dim: int = max(stop for _, stop in self.channel_groups.values())
        # Any: a 1x1 conv (linear head) or conv-ReLU-conv (MLP head); callers that need the conv check for it.
        self.head: Any = (
            nn.Sequential(
                nn.Conv2d(self.embed_dim, spec.head_hidden, 1),
                nn.ReLU(),
                nn.Conv2d(spec.head_hidden, len(spec.schema), 1),
            )
            if spec.head_hidden
            else nn.Conv2d(self.embed_dim, len(spec.schema), 1)
        )
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..255 float) imagery -> standardised float."""
        return (x.float() / 255.0 - self.mean) / self.std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        groups = self.embed_groups(x)
        return next(iter(groups.values())) if len(groups) == 1 else torch.cat(list(groups.values()), dim=1)

    def embed_groups(self, x: torch.Tensor, skip: frozenset[str] = frozenset()) -> dict[str, torch.Tensor]:
        """Each feature group's channels, in embedding order, without the groups in `skip`."""
        groups = {} if "backbone" in skip else {"backbone": self.backbone(self.normalise(x))}
        scaled = x.float() / 255.0
        for name, extra in zip(self.spec.features, self.extras, strict=True):
            if name not in skip:
                groups[name] = extra(scaled)
        return groups

    def group_logits(self, groups: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The head's logits from each group's features. A linear head's are the sum of each group's share: no
        concatenated embedding is needed, and a group it does not read (absent from `groups`) costs nothing; any
        other head reads the whole embedding."""
        if not isinstance(self.head, nn.Conv2d):
            return self.head(torch.cat(list(groups.values()), dim=1))
        bias = self.head.bias
        logits = torch.zeros(()) if bias is None else bias.view(1, -1, 1, 1)
        for name, features in groups.items():
            lo, hi = self.channel_groups[name]
            logits = logits + nn.functional.conv2d(features, self.head.weight[:, lo:hi])
        return logits

    @property
    def receptive_field(self) -> int | None:
        """Widest receptive field of the embedding's parts (None: not finite, or too wide to tile exactly)."""
        fields = [getattr(m, "receptive_field", None) for m in (self.backbone, *self.extras)]
        return None if None in fields else max(fields)  # type: ignore[type-var]

    @property
    def multiple(self) -> int:
        """Input sides must be multiples of this."""
        return math.lcm(*(int(getattr(m, "multiple", 1)) for m in (self.backbone, *self.extras)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:  # every group is computed, so a zero-initialised group still gets its gradient
            return self.head(self.embed(x))
        # A linear head with no weight on some groups skips computing them: a starter's zero-padded head never
        # reads the extra groups, and its zero-shot head never reads the learned backbone (the U-Net is ~half a
        # wide embedding's cost). The logits are the sum of each group's share, so the full embedding is never
        # concatenated either (on CPU that copy cost as much as the ImageNet features).
        return self.group_logits(self.embed_groups(x, skip=frozenset(self._unused_groups())))

    def _unused_groups(self) -> set[str]:
        """Groups a linear head gives no weight (never all of them: an all-zero head still reads the backbone)."""
        if not isinstance(self.head, nn.Conv2d):
            return set()
        weight = self.head.weight
        unused = {name for name, (lo, hi) in self.channel_groups.items() if not weight[:, lo:hi].any()}
        return unused - {"backbone"} if unused == set(self.channel_groups) else unused

    def digest_parts(self) -> list[bytes]:
        """What shapes the embeddings beyond the spec and state dict (frozen weights kept outside it)."""
        return [part for extra in self.extras for part in extra.digest_parts()]  # type: ignore[operator]

    def replace_head(self, schema: ClassSchema, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Swap in a head for a (possibly larger) class schema, e.g. after a retrain that added classes."""
        head = nn.Conv2d(self.embed_dim, len(schema), 1)
        assert head.bias is not None
        with torch.no_grad():
            head.weight.copy_(weight.reshape(head.weight.shape))
            head.bias.copy_(bias.reshape(head.bias.shape))
        self.set_head(schema, head)

    def set_head(self, schema: ClassSchema, head: nn.Module) -> None:
        """Swap in a head module: a 1x1 conv, or an MLP head (ml/heads.py) whose width the spec records."""
        hidden = int(head[0].out_channels) if isinstance(head, nn.Sequential) else 0  # type: ignore[arg-type]
        self.head = head.to(self.mean.device)
        self.spec = self.spec.model_copy(update={"schema_": schema, "head_hidden": hidden})


def with_features(model: LandcoverModel, features: Sequence[str]) -> LandcoverModel:
    """The same model embedding `features` beside its backbone, its head zero-padded over the new channels:
    every prediction is unchanged until a retrain gives those channels weight."""
    if model.spec.head_hidden:
        raise ValueError("only a model with a linear head can be widened")
    if list(features[: len(model.spec.features)]) != model.spec.features:
        raise ValueError(f"features {list(features)} must extend the model's own {model.spec.features}")
    spec = model.spec.model_copy(update={"features": list(features)})
    wide = LandcoverModel(spec).to(model.mean.device)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = wide.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    with torch.no_grad():
        wide.head.weight.zero_()
        wide.head.weight[:, : model.embed_dim].copy_(model.head.weight[:, : model.embed_dim])
        assert wide.head.bias is not None and model.head.bias is not None
        wide.head.bias.copy_(model.head.bias)
    return wide.train(model.training)


def save_model(model: LandcoverModel, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """One self-describing file: spec JSON + state dict (+ optional extra metadata).

    Only tensors and plain JSON-like values (str, numbers, bools, None, lists, dicts) go into the file, so that
    `load_model` reads it with `weights_only=True`; `extra` holding anything else is a TypeError."""
    try:
        plain_extra = json.loads(json.dumps(extra or {}))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"a model file's extra must hold plain JSON-like values only: {exc}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "spec": model.spec.model_dump(mode="json", by_alias=True),
        "state_dict": model.state_dict(),
        "extra": plain_extra,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _unpickling_reason(exc: BaseException) -> str:
    """The line of torch's weights-only refusal that says what was refused (not its advice to unpickle anyway)."""
    advice = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch")
    lines = [line.strip() for line in str(exc).splitlines()]
    reasons = [line for line in lines if line and not line.startswith(advice)]
    return (reasons[0] if reasons else lines[0] if lines else type(exc).__name__)[:300]


def read_model_file(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A model file's payload, read as data: `torch.load(weights_only=True)` unpickles tensors and plain values
    only, never an object that runs code. ValueError (saying what is wrong) for anything that is not such a dict;
    OSError (a missing or unreadable file) passes through."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # UnpicklingError (a refused global, not a torch file), RuntimeError (a broken zip)
        raise ValueError(
            f"{path} is not a valid model file (tensors and plain values only): {_unpickling_reason(exc)}"
        ) from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path} is not a valid model file: it holds a {type(payload).__name__}, not a dict")
    return payload


def load_model(path: Path, map_location: str | torch.device = "cpu") -> LandcoverModel:
    """The model saved by `save_model` at `path`, in eval mode, read without unpickling code (`read_model_file`).
    ValueError, saying what is wrong, for a file that is not such a model."""
    payload = read_model_file(path, map_location)
    try:
        model = LandcoverModel(ModelSpec.model_validate(payload.get("spec")))
    except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise ValueError(f"{path} is not a valid model file: its spec is missing or invalid: {exc}") from None
    state = payload.get("state_dict")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a valid model file: its state_dict is not a mapping of tensors")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a valid model file: its state_dict does not fit its spec: {exc}") from None
    model.eval()
    return model


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
