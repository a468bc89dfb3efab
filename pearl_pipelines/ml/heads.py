"""Heads a retrain can produce, applied to (N, C) embeddings: linear, a one-hidden-layer MLP, or a spatial
ensemble of local linear heads blended by distance.

Every head is an output layer `weight` (K, C or H) + `bias` (K,) and, for the non-linear kinds, a few named
arrays (`extra`): this keeps checkpoints plain npz files and lets a schema grow by appending output rows.

- linear:  logits = x W^T + b
- mlp:     logits = relu(x W1^T + b1) W^T + b                        extra: hidden_weight (H, C), hidden_bias (H,)
- spatial: logits = sum_j a_j(p) (x W_j^T + b_j) + a_0(p) (x W^T + b)  extra: centres (J, 2), local_weight (J, K, C),
           local_bias (J, K), bandwidth ();  a_j(p) = k_j(p) / (prior + sum k), k_j = exp(-|p - c_j|^2 / 2 bw^2),
           a_0 = prior / (prior + sum k): far from every labelled neighbourhood the global head takes over.
  `p` are the pixels' map coordinates in the embedding cache's CRS, so a spatial head needs them (`needs_xy`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

HeadArrays = Mapping[str, np.ndarray]
# Weight of the global head in the spatial blend, in units of one local head at its centre.
SPATIAL_PRIOR = 0.05


def head_kind(extra: HeadArrays) -> str:
    if "hidden_weight" in extra:
        return "mlp"
    if "centres" in extra:
        return "spatial"
    return "linear"


def input_channels(weight: np.ndarray, extra: HeadArrays) -> int:
    return int(extra["hidden_weight"].shape[1]) if "hidden_weight" in extra else int(weight.shape[1])


def spatial_blend(extra: HeadArrays, xy: np.ndarray) -> np.ndarray:
    """(N, J + 1) blend weights: the J local heads, then the global one; rows sum to 1."""
    d2 = ((xy[:, None, :] - extra["centres"][None].astype(np.float64)) ** 2).sum(axis=-1)
    k = np.exp(-d2 / (2.0 * float(extra["bandwidth"]) ** 2))
    total = SPATIAL_PRIOR + k.sum(axis=1, keepdims=True)
    return np.concatenate([k, np.full((len(xy), 1), SPATIAL_PRIOR)], axis=1) / total


def head_logits(
    weight: np.ndarray, bias: np.ndarray, extra: HeadArrays, x: np.ndarray, xy: np.ndarray | None = None
) -> np.ndarray:
    """(N, K) float32 logits of (N, C) float32 embeddings; `xy` (N, 2) map coordinates for a spatial head."""
    kind = head_kind(extra)
    if kind == "mlp":
        hidden = np.maximum(x @ extra["hidden_weight"].T + extra["hidden_bias"], 0.0)
        return hidden @ weight.T + bias
    logits = x @ weight.T + bias
    if kind == "spatial":
        if xy is None:
            raise ValueError("a spatial-ensemble head needs the pixels' map coordinates")
        blend = spatial_blend(extra, xy).astype(np.float32)
        logits = logits * blend[:, -1:]
        for j in range(len(extra["centres"])):
            logits += blend[:, j : j + 1] * (x @ extra["local_weight"][j].T + extra["local_bias"][j])
    return logits.astype(np.float32, copy=False)


def pad_classes(
    weight: np.ndarray, bias: np.ndarray, extra: HeadArrays, n: int, fill_bias: float
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The head with `n` output rows: appended classes get zero weight and `fill_bias` (never predicted)."""
    pad = n - len(bias)
    if pad < 0:
        raise ValueError(f"cannot shrink a head of {len(bias)} classes to {n}")
    weight = np.vstack([weight, np.zeros((pad, weight.shape[1]), np.float32)])
    bias = np.concatenate([bias, np.full(pad, fill_bias, np.float32)])
    extra = dict(extra)
    if "local_weight" in extra:
        j, _, c = extra["local_weight"].shape
        extra["local_weight"] = np.concatenate([extra["local_weight"], np.zeros((j, pad, c), np.float32)], axis=1)
        extra["local_bias"] = np.concatenate([extra["local_bias"], np.full((j, pad), fill_bias, np.float32)], axis=1)
    return weight, bias, extra


def head_module(weight: np.ndarray, bias: np.ndarray, extra: HeadArrays) -> nn.Module:
    """The head as 1x1 convolutions for a full forward pass (linear and MLP heads)."""
    kind = head_kind(extra)
    if kind == "spatial":
        raise ValueError(
            "a spatial-ensemble head depends on where each pixel is, so it applies to cached embeddings only "
            "(ml.embeddings.apply_head); predict the area with the base model, then re-predict from its cache"
        )
    layers: list[nn.Module] = []
    if kind == "mlp":
        layers += [_conv(extra["hidden_weight"], extra["hidden_bias"]), nn.ReLU()]
    layers.append(_conv(weight, bias))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def _conv(weight: np.ndarray, bias: np.ndarray) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)).reshape(conv.weight.shape))
        assert conv.bias is not None
        conv.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
    return conv
