"""Model files are data, never code: every loader refuses a pickle that would run code when read (`torch.load` with
`weights_only=True`), says what is wrong with a file that is not a model, and still loads the models it saves.

Each malicious file below would create `marker` when unpickled with `weights_only=False`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pearl_pipelines.ml.base_model import BaseModel, load_base_model, registry_cache_dir
from pearl_pipelines.ml.features import DEFAULT_FEATURES
from pearl_pipelines.ml.models import MODEL_FILE, LandcoverModel, load_model, save_model, with_features
from pearl_pipelines.ml.registry import MODEL_ARTIFACT_PATH, READY_FILE, ModelRegistry, load_registered, model_dir
from pearl_pipelines.ml.shipped import load_shipped
from pearl_pipelines.settings import Settings
from tests.conftest import free_port
from tests.ml.conftest import tiny_model


class RunsCode:
    """Unpickling this calls os.system: it touches `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path, *, how: str = "torch") -> Path:
    """A model-looking file at `path` whose spec is a code-running object (torch.save'd, or plainly pickled)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"spec": RunsCode(marker), "state_dict": {}, "extra": {}}
    if how == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def test_the_planted_payload_does_run_code_when_unpickled(tmp_path: Path, marker: Path) -> None:
    """The payload is live: without weights_only it would have run (so the refusals below mean something)."""
    torch.load(plant(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("how", ["torch", "pickle"])
def test_load_model_refuses_a_pickle_that_runs_code(tmp_path: Path, marker: Path, how: str) -> None:
    path = plant(tmp_path / "evil.pt", marker, how=how)
    with pytest.raises(ValueError, match=r"evil.pt is not a valid model file"):
        load_model(path)
    assert not marker.exists()


def test_base_model_folder_with_a_planted_pickle_is_refused(tmp_path: Path, marker: Path) -> None:
    plant(tmp_path / "base" / MODEL_FILE, marker)
    with pytest.raises(ValueError, match="not a valid model file"):
        BaseModel.load(tmp_path / "base")
    assert not marker.exists()


def test_shipped_loader_refuses_a_pickle_that_runs_code(tmp_path: Path, marker: Path) -> None:
    with pytest.raises(ValueError, match="not a shipped starter model"):
        load_shipped(plant(tmp_path / "chesapeake9-unet.pt", marker))
    assert not marker.exists()


def test_a_pickle_planted_in_the_local_registry_copy_is_refused(tmp_path: Path, marker: Path) -> None:
    """A registered version downloaded before (READY_FILE written) is read from disk: a file swapped in is refused."""
    cache = tmp_path / "registry-cache"
    local = model_dir(cache, "pearl-starter-chesapeake9", 1)
    plant(local / MLFLOW_MODEL_KEY, marker)
    (local / READY_FILE).write_text(MLFLOW_MODEL_KEY)
    with pytest.raises(ValueError, match="not a valid model file"):
        load_registered(f"http://127.0.0.1:{free_port()}", "pearl-starter-chesapeake9", 1, cache)
    assert not marker.exists()


MLFLOW_MODEL_KEY = f"{MODEL_ARTIFACT_PATH}/{MODEL_FILE}"


def test_a_local_copy_of_a_reference_with_a_planted_pickle_is_refused(tmp_path: Path, marker: Path) -> None:
    """MLflow down: a `models:/` reference falls back to PEARL_HOME/models/<name>/<alias>; a pickle there is refused."""
    settings = Settings(home=tmp_path / "home", mlflow_port=free_port())
    plant(settings.models_dir / "pearl-project-7" / "current" / MODEL_FILE, marker)
    with pytest.raises(ValueError, match="not a valid model file"):
        load_base_model("models:/pearl-project-7@current", settings)
    assert not marker.exists()


def test_a_registered_version_whose_artifact_is_a_pickle_is_refused(
    mlflow_uri: str, tmp_path: Path, marker: Path
) -> None:
    """The file MLflow hands back is no more trusted than any other: download, load, base model all refuse it."""
    name = "pearl-starter-evil"
    client = MlflowClient(mlflow_uri)
    run = client.create_run(client.create_experiment("pearl-evil"))
    plant(tmp_path / "upload" / MODEL_FILE, marker)
    client.log_artifact(run.info.run_id, str(tmp_path / "upload" / MODEL_FILE), MODEL_ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    registry = ModelRegistry(mlflow_uri)
    registry.register(name, run.info.run_id, aliases=["starter"])

    with pytest.raises(ValueError, match="not a valid model file"):
        load_registered(mlflow_uri, name, 1, tmp_path / "cache")
    with pytest.raises(ValueError, match="not a valid model file"):
        registry.load_model(name, "starter")
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri=mlflow_uri)
    base, why = load_base_model(f"models:/{name}@starter", settings)  # MLflow's copy refused, no local copy
    assert base is None and why
    assert not marker.exists()


def test_a_registered_base_model_is_read_from_one_shared_copy(mlflow_uri: str, tmp_path: Path) -> None:
    """Every reference to one registered version (alias or number) reads the same folder under the registry cache,
    the one Dagster's workers download into: one copy on disk, whatever the number of projects on it."""
    name = "pearl-starter-shared"
    client = MlflowClient(mlflow_uri)
    run = client.create_run(client.create_experiment("pearl-shared"))
    save_model(tiny_model(), tmp_path / "upload" / MODEL_FILE, extra={"schema_id": "chesapeake4"})
    client.log_artifact(run.info.run_id, str(tmp_path / "upload" / MODEL_FILE), MODEL_ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    ModelRegistry(mlflow_uri).register(name, run.info.run_id, aliases=["starter"])
    settings = Settings(home=tmp_path / "home", mlflow_tracking_uri=mlflow_uri)
    by_alias, _ = load_base_model(f"models:/{name}@starter", settings)
    by_number, _ = load_base_model(f"models:/{name}/1", settings)
    assert by_alias is not None and by_number is not None
    assert by_alias.source == by_number.source == f"models:/{name}/1"
    assert by_alias.folder == by_number.folder == model_dir(registry_cache_dir(settings), name, 1) / MODEL_ARTIFACT_PATH
    assert len(list(settings.models_dir.rglob(MODEL_FILE))) == 1


@pytest.mark.parametrize(
    "ref", ["/abs/model.pt", "starter-chesapeake9-fcn", "starter/model.pt", "../model.pt", "file:///x/model.pt"]
)
def test_load_base_model_takes_no_paths(tmp_path: Path, marker: Path, ref: str) -> None:
    settings = Settings(home=tmp_path / "home", mlflow_port=free_port())
    for where in (settings.models_dir / "starter-chesapeake9-fcn", settings.models_dir / "starter", tmp_path / "home"):
        plant(where / MODEL_FILE, marker)
    with pytest.raises(ValueError, match=r"models:/<name>@<alias> or models:/<name>/<version>"):
        load_base_model(ref.replace("/abs", str(tmp_path / "home")), settings)
    assert not marker.exists()


def test_saved_models_round_trip(tmp_path: Path) -> None:
    model = with_features(tiny_model("fcn", "chesapeake9"), DEFAULT_FEATURES)
    extra = {"schema_id": "chesapeake9", "recipe": {"arch": "fcn", "lr": 0.01}, "regions": ["a"], "f1": 0.8, "n": None}
    path = save_model(model, tmp_path / MODEL_FILE, extra=extra)
    loaded = load_model(path)
    assert isinstance(loaded, LandcoverModel) and not loaded.training
    assert loaded.spec == model.spec
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.load(path, weights_only=True)["extra"] == extra  # plain data, readable without unpickling code


def test_extra_that_is_not_plain_data_is_refused_on_save(tmp_path: Path) -> None:
    """Only JSON-like values go into a model file, so every saved file loads with weights_only=True."""
    with pytest.raises(TypeError, match="extra"):
        save_model(tiny_model(), tmp_path / MODEL_FILE, extra={"when": object()})
    assert not (tmp_path / MODEL_FILE).exists()


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"not a torch file", "not a valid model file"),
        ("tensor", "not a dict"),
        ({"state_dict": {}}, "spec"),
        ({"spec": {"arch": "nope", "schema": None}, "state_dict": {}}, "spec"),
        ("bad-state", "state_dict"),
    ],
)
def test_a_file_that_is_not_a_model_says_what_is_wrong(tmp_path: Path, content: object, what: str) -> None:
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "bad-state":
        model = tiny_model()
        torch.save(
            {"spec": model.spec.model_dump(mode="json", by_alias=True), "state_dict": {"x": torch.zeros(1)}}, path
        )
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=what):
        load_model(path)
