"""Out-of-process entrypoints run through Dagster Pipes: `python -m pearl_pipelines.worker <task>`.

The same command runs as a local subprocess (`GpuCompute(mode="local")`) or as a Kubernetes pod on a
GPU node (`mode="k8s"`). Parameters arrive as Pipes extras; results go back as asset materializations,
asset checks and per-tile custom messages. Paths in the extras are relative to the worker's PEARL_HOME.
"""
