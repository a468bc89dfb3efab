"""Label-to-map latency through Dagster: labels written to the label store -> new model version registered in
MLflow and the AOI's predictions materialized (1 km^2 AOI, local mode, the review app's direct trigger).

Each round writes 10 labels, submits `label_to_map_job` with `trigger.submit_label_run` through the running
`dagster dev` webserver, and waits until the run succeeds (label set -> retrained head on cached embeddings
-> registered version, champion gate -> predictions of the AOI's tiles). The AOI is onboarded once first
(embedding cache), as the aoi_registration_sensor would do when a mapper draws it.

Prints per-round figures, then the JSON line {"median_s", "launch_overhead_s", ...}; launch overhead is
the time from submission until the run worker started executing (Dagster's run start time). The project maps
with the registered starter `pearl-starter-chesapeake9` (`--proxy-fcn`: a bench-trained FCN); "model" and
"machine" are in the JSON line.
Target: median_s <= 15.
"""

from __future__ import annotations

import time

from _dagster import STARTER, arguments, bench_services, emit, log, median, reference_labels, run_info, utm_box_lonlat

ROUNDS = 5
LABELS_PER_ROUND = 10
AOI_KM = 1.0


def main() -> None:
    from mlflow import MlflowClient

    from pearl_pipelines.classes import load_schema
    from pearl_pipelines.geo.grid import aoi_to_tile_keys
    from pearl_pipelines.labels.store import LabelStore
    from pearl_pipelines.ml.refs import CURRENT_ALIAS, project_model_name
    from pearl_pipelines.settings import get_settings
    from pearl_pipelines.trigger import submit_label_run

    args = arguments(__doc__.splitlines()[0])
    with bench_services("label_to_map", proxy=args.proxy_fcn) as bench:
        info = run_info(bench, args.proxy_fcn)
        settings = get_settings()
        store = LabelStore(settings.resolved_label_store_url)
        aoi = utm_box_lonlat("demo", (1500.0, 1500.0), AOI_KM * 1000)
        keys = aoi_to_tile_keys(aoi)
        project = store.create_project(
            f"bench-{int(time.time())}",
            {"collections": ["demo"]},
            load_schema("chesapeake9"),
            f"models:/{STARTER}@starter",
        )
        aoi_row = store.add_aoi(project.id, "bench 1 km2", aoi, keys)
        log(f"AOI {AOI_KM:g} km^2 -> {len(keys)} tiles {keys}")
        started = time.perf_counter()
        onboarding = {"ops": {"embeddings": {"config": {"project_id": project.id}}}}
        bench.wait(bench.submit("aoi_onboarding_job", run_config=onboarding))
        onboarding_s = time.perf_counter() - started
        log(f"AOI onboarding (imagery tiles + embedding cache): {onboarding_s:.1f} s")

        totals, launches, executions = [], [], []
        client = MlflowClient(bench.mlflow_uri)
        for round_ in range(1, ROUNDS + 1):
            store.add_labels(
                project.id, reference_labels("demo", aoi, LABELS_PER_ROUND, seed=round_), aoi_id=aoi_row.id
            )
            submitted = time.time()
            run_id = submit_label_run(project.id, port=bench.dagster_port, store=store)
            run = bench.wait(run_id)
            total = time.time() - submitted
            version = client.get_model_version_by_alias(project_model_name(project.id), CURRENT_ALIAS)
            if version.tags.get("dagster_run_id") != run_id:
                raise RuntimeError(f"round {round_}: run {run_id} did not register the project's version")
            launch, execution = run["startTime"] - submitted, run["endTime"] - run["startTime"]
            totals.append(total)
            launches.append(launch)
            executions.append(execution)
            log(
                f"round {round_}: {total:5.2f} s  (launch {launch:4.2f} s, run {execution:5.2f} s, "
                f"{round_ * LABELS_PER_ROUND} labels, version v{version.version})"
            )
        log(f"median {median(totals):.2f} s over {ROUNDS} rounds; target <= 15 s")
        emit(
            {
                "median_s": median(totals),
                "launch_overhead_s": median(launches),
                "run_s": median(executions),
                "onboarding_s": onboarding_s,
                "rounds": ROUNDS,
                "tiles": len(keys),
                "aoi_km2": AOI_KM,
                **info,
            }
        )


if __name__ == "__main__":
    main()
