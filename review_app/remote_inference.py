"""The AOI forward pass, run where the compute runs: the worker's `predict-aoi` task, not the web process.

The backbone is the expensive part of live mapping; Dagster already runs it through `GpuCompute` (a warm fork
of the worker server locally, a GPU pod in k8s mode). The review app hands it the same way, through the
session launcher (`pearl_pipelines.worker.session`): the worker loads the project's base model and current
head from the workspace and writes the COGs and the embedding cache there. Head-only work stays in the app.

With `first_out_dir`, the worker predicts the AOI's first block (the window nearest the mapper's view) before the
whole AOI and says so on the task's one message channel, the Pipes custom messages that carry its progress: the
`first_block` message reaches `on_first_block` while the task runs on (unless the AOI is small: no such message).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pearl_pipelines.ml.base_model import project_base_file
from pearl_pipelines.ml.versions import VERSION_FILE, ModelVersion
from pearl_pipelines.settings import Settings
from pearl_pipelines.worker.contracts import AoiProgress, AoiSummary, FirstBlockResult, PredictAoiInput
from review_app.workspace import ProjectWorkspace

TASK = "predict-aoi"
Progress = Callable[[int, int, str], None]  # (windows done, total, stage: "first_block" | "aoi")


@dataclass(frozen=True)
class AoiPrediction:
    """The worker's summary of one AOI forward pass."""

    seconds: float
    pid: int
    forked: bool
    windows: int
    height: int
    width: int

    @classmethod
    def of(cls, summary: Mapping[str, Any]) -> AoiPrediction:
        parsed = AoiSummary.model_validate(summary)
        return cls(
            seconds=parsed.seconds,
            pid=parsed.pid,
            forked=parsed.forked_from_warm_server,
            windows=parsed.windows,
            height=parsed.height,
            width=parsed.width,
        )


def version_folder(ws: ProjectWorkspace, version: ModelVersion) -> Path:
    """The saved folder of the head the project maps with: its checkpoint, or a copy when none on disk is it
    (a retrain that failed between taking effect and saving)."""
    number = ws.state().current_model
    if number is not None:
        manifest = ws.paths.version_dir(number) / VERSION_FILE
        if manifest.is_file() and json.loads(manifest.read_text()).get("id") == version.id:
            return ws.paths.version_dir(number)
    folder = ws.paths.session_version_dir(version.id)
    if not (folder / VERSION_FILE).is_file():
        version.save(folder)
    return folder


def predict_aoi(
    settings: Settings,
    ws: ProjectWorkspace,
    geometry: Mapping[str, Any],
    version: ModelVersion,
    *,
    out_dir: Path,
    embeddings_dir: Path,
    progress: Progress | None = None,
    first_out_dir: Path | None = None,
    view: tuple[float, float, float, float] | None = None,
    on_first_block: Callable[[FirstBlockResult], None] | None = None,
) -> AoiPrediction:
    """Full forward pass over the AOI (lon/lat GeoJSON) in the worker: classes + confidence COGs in `out_dir`,
    the AOI's embedding cache in `embeddings_dir`. Raises WorkerTaskError with the worker's message.

    With `first_out_dir`: first the block nearest the centre of `view` (lon/lat west, south, east, north; default
    the AOI's centre) into that folder, announced to `on_first_block` as soon as it is written. `progress` gets the
    windows done and their total per stage (first block, then the AOI)."""
    from pearl_pipelines.worker.session import WorkerTaskError, run_task  # Dagster Pipes: loaded on first use

    key = settings.layout.key  # worker paths are keys under PEARL_HOME (a pod mounts it elsewhere)
    task = PredictAoiInput(
        base_model=key(project_base_file(settings, ws.paths.base_model_dir)),  # the copy it maps with
        version_dir=key(version_folder(ws, version)),
        # Not fetched: a mosaic another process published is read in place by the worker (only the AOI's windows).
        imagery=key(ws.states.imagery_path(ws.project_id)),
        aoi=dict(geometry),
        out_dir=key(out_dir),
        embeddings_dir=key(embeddings_dir),
        model_id=version.id,
        first_out_dir=key(first_out_dir) if first_out_dir is not None else None,
        view=view,
    )

    def on_message(message: Any) -> None:
        kind = message.get("kind") if isinstance(message, dict) else None
        if kind == "progress" and progress is not None:
            step = AoiProgress.model_validate(message)
            progress(step.done, step.total, step.stage)
        elif kind == "first_block" and on_first_block is not None:
            on_first_block(FirstBlockResult.model_validate(message))

    messages = run_task(TASK, task.extras(), on_message=on_message, settings=settings)
    summaries = [m for m in messages if isinstance(m, dict) and m.get("kind") == "summary"]
    if not summaries:
        raise WorkerTaskError(f"worker task {TASK!r} finished without a summary")
    return AoiPrediction.of(summaries[-1])
