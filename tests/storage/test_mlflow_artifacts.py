"""MLflow's artifacts in the object store: the local MLflow server (pearl_pipelines/services.py) started with the
S3 storage URL keeps every artifact under s3://bucket/prefix/mlflow; clients log and read them through the server
(mlflow-artifacts:/), holding no S3 keys themselves."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from pearl_pipelines.services import mlflow_server
from tests.conftest import free_port
from tests.s3_local import S3Server


@pytest.mark.slow
def test_artifacts_go_to_the_bucket(s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)  # the client has no keys: only the server talks to the store
    port = free_port()
    prefix = f"mlflow-{tmp_path.name}"
    server = mlflow_server(tmp_path, port, storage_url=s3_server.url(prefix), env=s3_server.env())
    assert server.cmd[server.cmd.index("--artifacts-destination") + 1] == f"s3://pearl/{prefix}/mlflow"
    server.start(timeout=120)  # not `with server.start()`: __enter__ starts it again and the first one leaks
    try:
        uri = f"http://127.0.0.1:{port}"
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("object-store"))
        client.log_text(run.info.run_id, "weights of a head", "model/head.txt")
        client.set_terminated(run.info.run_id)
        local = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="model/head.txt", dst_path=str(tmp_path / "dl"), tracking_uri=uri
        )
        assert Path(local).read_text() == "weights of a head"
    finally:
        server.stop()
    keys = [
        o["Key"] for o in s3_server.client().list_objects_v2(Bucket="pearl", Prefix=f"{prefix}/").get("Contents", [])
    ]
    assert any(k.startswith(f"{prefix}/mlflow/") and k.endswith("/model/head.txt") for k in keys), keys
    assert not list((tmp_path / "mlflow").rglob("head.txt"))  # nothing under the local artifacts folder
