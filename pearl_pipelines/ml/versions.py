"""Model versions: a head (weights + schema) on a fixed backbone, with its lineage, saved as a checkpoint.

A version never copies the backbone: `base_model_id` is the backbone's digest, and `to_model(base)`
refuses a base model with another backbone. A checkpoint directory holds version.json (lineage,
schema, strategy, metrics), head.npz, and, when given, the labels it was trained on (GeoParquet),
so a retrain can be reproduced from the checkpoint alone.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.ml import npy
from pearl_pipelines.ml.embeddings import backbone_digest
from pearl_pipelines.ml.heads import head_kind, head_logits, head_module
from pearl_pipelines.ml.metrics import MetricsReport
from pearl_pipelines.ml.models import LandcoverModel

VERSION_FILE = "version.json"
HEAD_FILE = "head.npz"
LABELS_FILE = "labels.parquet"
EXTRA_PREFIX = "extra_"


def new_version_id() -> str:
    """Sortable by creation time, unique without coordination."""
    return f"v{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}"


def label_set_digest(labels: gpd.GeoDataFrame) -> str:
    """Stable hash of a label set: independent of row order, sensitive to geometry, class, group and CRS."""
    geoms = shapely.normalize(np.asarray(labels.geometry.values, dtype=object))
    wkb = shapely.to_wkb(geoms, hex=True)
    ids = labels["label_id"] if "label_id" in labels.columns else labels.index.to_series()
    rows = sorted(zip(ids.astype(str), labels["class_name"].astype(str), wkb, strict=True))
    h = hashlib.sha256(str(labels.crs.to_string() if labels.crs else None).encode())
    for row in rows:
        h.update("\x1f".join(row).encode() + b"\x1e")
    return "ls-" + h.hexdigest()[:16]


@dataclass
class ModelVersion:
    id: str
    parent_id: str | None
    base_model_id: str
    schema: ClassSchema
    weight: np.ndarray  # (K, C) float32
    bias: np.ndarray  # (K,) float32
    strategy: str
    strategy_params: dict[str, Any] = field(default_factory=dict)
    label_set_digest: str | None = None
    metrics: MetricsReport | None = None
    info: dict[str, Any] = field(default_factory=dict)  # sample counts, seed, notes
    # What the fit chose, which both loops read back (the live refit reuses the replay share, Dagster's adoption
    # too): the replay share (None: a root version or no replay), the scale of the parent's prior a centred fit
    # chose (None: not centred), and the classes this version added to its parent's schema.
    replay_scale: float | None = None
    prior_scale: float | None = None
    new_classes: list[str] = field(default_factory=list)
    created: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    # Arrays of a non-linear head (ml/heads.py: MLP hidden layer, spatial ensemble); empty for a linear head.
    head_extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        self.head_extra = {k: np.asarray(v, dtype=np.float32) for k, v in self.head_extra.items()}
        self.replay_scale = None if self.replay_scale is None else float(self.replay_scale)
        self.prior_scale = None if self.prior_scale is None else float(self.prior_scale)
        self.new_classes = [str(name) for name in self.new_classes]
        if self.weight.shape[0] != len(self.schema) or self.bias.shape != (len(self.schema),):
            raise ValueError(f"head {self.weight.shape} + {self.bias.shape} does not match {len(self.schema)} classes")

    @property
    def head_kind(self) -> str:
        return head_kind(self.head_extra)

    @property
    def needs_xy(self) -> bool:
        """Whether the head needs each pixel's map coordinates (a spatial ensemble)."""
        return self.head_kind == "spatial"

    def logits(self, x: np.ndarray, xy: np.ndarray | None = None) -> np.ndarray:
        """(N, K) logits of (N, C) embeddings (`xy`: the pixels' map coordinates, for a spatial head)."""
        return head_logits(self.weight, self.bias, self.head_extra, np.asarray(x, np.float32), xy)

    @classmethod
    def from_model(cls, model: LandcoverModel, version_id: str | None = None) -> ModelVersion:
        """The root version of a starter model: its own head, no parent."""
        k = len(model.spec.schema)
        return cls(
            id=version_id or new_version_id(),
            parent_id=None,
            base_model_id=backbone_digest(model),
            schema=model.spec.schema,
            weight=model.head.weight.detach().cpu().reshape(k, -1).numpy(),
            bias=np.zeros(k) if model.head.bias is None else model.head.bias.detach().cpu().numpy(),
            strategy="starter",
        )

    def to_model(self, base: LandcoverModel) -> LandcoverModel:
        """A copy of `base` carrying this version's head and schema."""
        digest = backbone_digest(base)
        if digest != self.base_model_id:
            raise ValueError(
                f"version {self.id} was trained on backbone {self.base_model_id}; "
                f"the given model's backbone is {digest}"
            )
        head = head_module(self.weight, self.bias, self.head_extra)  # a clear error for a spatial head
        model = copy.deepcopy(base)
        model.set_head(self.schema, head)
        return model.eval()

    def _manifest(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent_id": self.parent_id,
            "base_model_id": self.base_model_id,
            "schema": self.schema.model_dump(mode="json", by_alias=True, exclude_none=True),
            "strategy": self.strategy,
            "strategy_params": self.strategy_params,
            "label_set_digest": self.label_set_digest,
            "metrics": self.metrics.model_dump(mode="json") if self.metrics else None,
            "info": self.info,
            "replay_scale": self.replay_scale,
            "prior_scale": self.prior_scale,
            "new_classes": self.new_classes,
            "created": self.created.isoformat(),
        }

    def save(self, directory: Path, labels: gpd.GeoDataFrame | None = None) -> Path:
        """Write the checkpoint into `directory` (created); version.json last, so its presence means complete."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / HEAD_FILE).open("wb") as f:
            arrays = {"weight": self.weight, "bias": self.bias}
            arrays.update({EXTRA_PREFIX + k: v for k, v in self.head_extra.items()})
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        if labels is not None:
            labels.to_parquet(directory / LABELS_FILE)
        tmp = directory / (VERSION_FILE + ".tmp")
        tmp.write_text(json.dumps(self._manifest(), indent=2, default=str))
        tmp.replace(directory / VERSION_FILE)
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelVersion:
        directory = Path(directory)
        if not (directory / VERSION_FILE).is_file():
            raise FileNotFoundError(f"no model version checkpoint in {directory} (missing {VERSION_FILE})")
        manifest = json.loads((directory / VERSION_FILE).read_text())
        head = npy.load_all(directory / HEAD_FILE)
        weight, bias = head["weight"], head["bias"]
        extra = {k.removeprefix(EXTRA_PREFIX): v for k, v in head.items() if k.startswith(EXTRA_PREFIX)}
        metrics = manifest.pop("metrics")
        schema = ClassSchema.model_validate(manifest.pop("schema"))
        created = dt.datetime.fromisoformat(manifest.pop("created"))
        # Checkpoints written before these were fields kept them in `info`.
        for key in ("replay_scale", "prior_scale", "new_classes"):
            if key not in manifest and key in manifest["info"]:
                manifest[key] = manifest["info"].pop(key)
        return cls(
            **manifest,
            schema=schema,
            created=created,
            weight=weight,
            bias=bias,
            head_extra=extra,
            metrics=MetricsReport.model_validate(metrics) if metrics else None,
        )

    @staticmethod
    def load_labels(directory: Path) -> gpd.GeoDataFrame | None:
        path = Path(directory) / LABELS_FILE
        return gpd.read_parquet(path) if path.is_file() else None
