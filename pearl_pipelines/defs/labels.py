"""Labels: `label_set`, a versioned GeoParquet snapshot of a project's live labels in the label store."""

import dagster as dg

from pearl_pipelines.defs.resources import LabelStoreResource, RasterStore


class ProjectConfig(dg.Config):
    """Which review-app project a run works on (label store id)."""

    project_id: int


def get_project_or_fail(label_store: LabelStoreResource, project_id: int):  # -> ProjectRow
    try:
        return label_store.store().get_project(project_id)
    except KeyError:
        known = ", ".join(f"{p.id} ({p.name})" for p in label_store.store().list_projects()) or "none"
        raise dg.Failure(
            description=f"no project with id {project_id} in the label store; known projects: {known}",
            allow_retries=False,
        ) from None


@dg.asset(group_name="labels", kinds={"geoparquet"})
def label_set(
    context: dg.AssetExecutionContext, config: ProjectConfig, label_store: LabelStoreResource, rasters: RasterStore
) -> dg.MaterializeResult:
    """The project's live labels (points and polygons, EPSG:4326), snapshotted under their content digest.

    The digest is the version: the same labels give the same file and the same data version.
    """
    project = get_project_or_fail(label_store, config.project_id)
    store = label_store.store()
    frame = store.labels_frame(config.project_id)
    digest = store.label_set_digest(config.project_id)
    path = rasters.label_set_path(config.project_id, digest)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        frame.to_parquet(tmp)
        tmp.replace(path)
        rasters.files.publish(path)
    elif rasters.files.remote and not rasters.files.stored(path):
        rasters.files.publish(path)  # written before this PEARL_HOME had an object store
    counts = frame["class_name"].value_counts().sort_index()
    table = "\n".join(["| class | labels |", "|---|---|", *(f"| {name} | {n} |" for name, n in counts.items())])
    context.log.info(f"project {project.name}: {len(frame)} labels in {len(counts)} classes -> {path}")
    return dg.MaterializeResult(
        metadata={
            "project_id": config.project_id,
            "project": project.name,
            "label_set_digest": digest,
            "uri": dg.MetadataValue.path(str(path)),
            "n_labels": len(frame),
            "n_points": int((frame.geom_type == "Point").sum()),
            "n_polygons": int((frame.geom_type == "Polygon").sum()),
            "n_classes": len(counts),
            "labels_per_class": dg.MetadataValue.md(table),
            "max_event_id": store.max_event_id(config.project_id),
        },
        data_version=dg.DataVersion(digest),
    )
