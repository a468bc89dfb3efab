"""'Label here next': the points of an AOI where one more click would teach the project's current model most.

The engine (`ml.suggest`) scores the AOI's cached embeddings with the current head; here the review app finds
that head and cache, keeps the project's existing labels out of the way, and answers GeoJSON.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from pearl_pipelines.classes import ClassSchema
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.layout import cache_complete
from pearl_pipelines.ml.embeddings import EmbeddingCache
from pearl_pipelines.ml.loop import conform
from pearl_pipelines.ml.samples import sample_on_grid, validate_labels
from pearl_pipelines.ml.suggest import MAX_SUGGESTIONS, suggest_clicks
from review_app.services.errors import Conflict
from review_app.services.model_cache import ModelSlot
from review_app.workspace import ProjectWorkspace

SuggestionMethod = Literal["margin", "entropy"]  # = ml.suggest.METHODS
DEFAULT_SUGGESTIONS = 20
__all__ = ["DEFAULT_SUGGESTIONS", "MAX_SUGGESTIONS", "SuggestionCollection", "SuggestionMethod", "aoi_suggestions"]


class SuggestionProperties(BaseModel):
    rank: int = Field(description="1 = the most useful place to label")
    score: float = Field(description="uncertainty of the current model there, 0 (sure) to 1 (a coin toss)")
    predicted_class: str = Field(description="what the current model predicts there")
    row: int = Field(description="pixel row in the AOI's embedding grid")
    col: int = Field(description="pixel column in the AOI's embedding grid")


class SuggestionFeature(BaseModel):
    type: Literal["Feature"] = "Feature"
    geometry: dict[str, Any] = Field(description="a lon/lat Point at the centre of the suggested pixel")
    properties: SuggestionProperties


class SuggestionCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[SuggestionFeature]
    aoi_id: int
    model_version: int | None = Field(description="the project's model version that was scored")
    method: SuggestionMethod
    spacing_px: float = Field(description="minimum distance kept between points and from existing labels (pixels)")


def aoi_suggestions(
    ws: ProjectWorkspace,
    aoi_id: int,
    *,
    model: ModelSlot,
    schema: ClassSchema,
    store: LabelStore,
    n: int,
    method: SuggestionMethod,
) -> SuggestionCollection:
    """Up to `n` points of the project's AOI `aoi_id` (known to exist), most uncertain first, spread out and away
    from the project's labels in `store`; scored by the current model of `model` on the project's class `schema`.

    Raises Conflict (AOI not predicted yet, no model), SuggestionError (bad n/method).
    """
    state = ws.state()
    layer = state.aois.get(aoi_id)
    # Another app process may have made the cache: from the object store's chunks when this disk lacks it.
    directory = (
        ws.ensure_local_cache(aoi_id, state) if layer is not None and layer.embeddings else ws.embeddings_dir(aoi_id)
    )
    if layer is None or layer.version == 0 or not layer.embeddings or not cache_complete(directory):
        raise Conflict(
            f"AOI {aoi_id} has no prediction yet: run inference on it first "
            "(suggestions score the embeddings that inference caches)"
        )
    current = model.require()
    head = conform(current.version, schema)  # classes added since the last retrain: never predicted
    cache = EmbeddingCache.open(directory)
    found = suggest_clicks(
        cache, head.logits, n, method=method, exclude=_label_pixels(store, ws.project_id, cache), needs_xy=head.needs_xy
    )
    collection = found.to_geojson(schema)
    return SuggestionCollection(
        features=[SuggestionFeature.model_validate(f) for f in collection["features"]],
        aoi_id=aoi_id,
        model_version=ws.state().current_model,
        method=method,
        spacing_px=found.spacing_px,
    )


def _label_pixels(store: LabelStore, project_id: int, cache: EmbeddingCache) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the project's live labels on the cache's grid: a place already labelled is not suggested again."""
    labels = store.labels_frame(project_id)
    if not len(labels):
        return np.empty(0, np.int64), np.empty(0, np.int64)
    samples = sample_on_grid(validate_labels(labels), crs=cache.crs, transform=cache.transform, shape=cache.shape)
    return samples.rows, samples.cols
