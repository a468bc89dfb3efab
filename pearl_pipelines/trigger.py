"""Direct run submission for the review app: new labels -> `label_to_map_job` now, not at the next sensor tick.

Submits through the running Dagster webserver's GraphQL API (`DagsterGraphQLClient` on 127.0.0.1), the
same run the `label_submission_sensor` would request: missing tile keys are registered as partitions,
the run targets the range covering the project's tiles, and its predictions step re-predicts exactly
those tiles. The run is tagged with the project's last label event, so the sensor does not submit it again.
"""

from __future__ import annotations

from typing import Any

import httpx

from pearl_pipelines.http_probe import probe
from pearl_pipelines.labels.store import LabelStore
from pearl_pipelines.settings import Settings, get_settings

LOCATION = "pearl_pipelines"  # workspace.yaml's location_name
REPOSITORY = "__repository__"  # the repository a Definitions object becomes

_PARTITIONS_QUERY = """
query TileKeys($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode { partitionKeys }
  }
}
"""

_ADD_PARTITION_MUTATION = """
mutation AddTileKey($repositorySelector: RepositorySelector!, $partitionsDefName: String!, $partitionKey: String!) {
  addDynamicPartition(
    repositorySelector: $repositorySelector, partitionsDefName: $partitionsDefName, partitionKey: $partitionKey
  ) {
    __typename
    ... on PythonError { message }
    ... on UnauthorizedError { message }
  }
}
"""


class TriggerError(RuntimeError):
    """The label run could not be submitted; the message says why and what happens instead."""


def _client(host: str, port: int) -> Any:
    from dagster_graphql import DagsterGraphQLClient

    return DagsterGraphQLClient(host, port_number=port, timeout=30)


def tile_key_order(client: Any) -> list[str]:
    """The `tile_keys` partitions in the instance's order (what partition ranges refer to)."""
    result = client._execute(_PARTITIONS_QUERY, {"assetKey": {"path": ["predictions"]}})
    node = result["assetNodeOrError"]
    if node["__typename"] != "AssetNode":
        raise TriggerError(f"the Dagster code location has no `predictions` asset ({node['__typename']})")
    return list(node["partitionKeys"])


def add_tile_key(client: Any, key: str, location: str = LOCATION) -> None:
    from pearl_pipelines.defs.partitions import TILE_KEYS

    result = client._execute(
        _ADD_PARTITION_MUTATION,
        {
            "repositorySelector": {"repositoryLocationName": location, "repositoryName": REPOSITORY},
            "partitionsDefName": TILE_KEYS,
            "partitionKey": key,
        },
    )["addDynamicPartition"]
    if result["__typename"] not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        raise TriggerError(f"could not register tile key {key}: {result.get('message', result['__typename'])}")


def submit_label_run(
    project_id: int,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    settings: Settings | None = None,
    store: LabelStore | None = None,
    location: str = LOCATION,
) -> str:
    """Submit `label_to_map_job` for a project through the running webserver; returns the Dagster run id."""
    from dagster_graphql import DagsterGraphQLClientError

    from pearl_pipelines.defs.jobs import label_run_config, label_run_tags, project_tile_keys
    from pearl_pipelines.defs.partitions import keys_to_add

    settings = settings or get_settings()
    port = port or settings.dagster_port
    store = store or LabelStore(settings.resolved_label_store_url)
    keys = project_tile_keys(store, project_id)
    if not keys:
        raise TriggerError(f"project {project_id} has no AOI: draw one before retraining")
    try:  # a quick probe first: a refused connection would otherwise surface as an opaque GraphQL error
        probe(f"http://{host}:{port}/server_info", 3.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise TriggerError(
            f"Dagster webserver at http://{host}:{port} is not reachable ({exc.__class__.__name__}); "
            "the label_submission_sensor will pick these labels up when Dagster runs"
        ) from exc
    client = _client(host, port)
    try:
        order = tile_key_order(client)
        for key in keys_to_add(order, keys):
            add_tile_key(client, key, location)
            order.append(key)
        return client.submit_job_execution(
            "label_to_map_job",
            repository_location_name=location,
            repository_name=REPOSITORY,
            run_config=label_run_config(project_id, keys),
            tags={
                **label_run_tags(project_id, order, keys, store.max_event_id(project_id)),
                "pearl/submitted_by": "trigger",
            },
        )
    except DagsterGraphQLClientError as exc:
        raise TriggerError(f"Dagster at http://{host}:{port} refused the label run: {exc}") from exc
