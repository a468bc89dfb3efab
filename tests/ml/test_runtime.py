"""The CPU runtime of the embedding (ml/runtime.py): ONNX Runtime where it agrees with PyTorch, PyTorch otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from pearl_pipelines.ml.features import DEFAULT_FEATURES
from pearl_pipelines.ml.inference import inference_copy, predict
from pearl_pipelines.ml.models import with_features
from pearl_pipelines.ml.runtime import EXPORT_DIR, chosen_runtime, group_function
from pearl_pipelines.settings import get_settings
from tests.ml.conftest import tiny_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def wide_model():  # type: ignore[no-untyped-def]
    """A U-Net with the wide embedding the registered starters carry (texture + ImageNet Lite0 features)."""
    return with_features(tiny_model("unet"), DEFAULT_FEATURES).eval()


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_onnx_runtime_maps_as_pytorch_does(
    wide_model, image_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    results = {}
    for runtime in ("torch", "onnxruntime"):
        monkeypatch.setenv("PEARL_CPU_RUNTIME", runtime)
        out = tmp_path / runtime
        results[runtime] = predict(wide_model, image_path, out, device=CPU, embeddings_dir=out / "emb")
        assert results[runtime].runtime == runtime
    torch_, onnx_ = results["torch"], results["onnxruntime"]
    classes = read(torch_.classes_path), read(onnx_.classes_path)
    assert (classes[0] == classes[1]).mean() > 0.999
    confidence = read(torch_.confidence_path).astype(int), read(onnx_.confidence_path).astype(int)
    assert np.abs(confidence[0] - confidence[1]).max() <= 2
    caches = [np.load(r.embeddings_dir / "embeddings.npy", mmap_mode="r") for r in (torch_, onnx_)]
    scale = float(np.abs(caches[0]).max())
    assert caches[0].shape == caches[1].shape and float(np.abs(caches[0] - caches[1]).max()) <= 1e-2 * scale
    # The fused path (no cache) computes only the groups the head reads, on ONNX Runtime too.
    fused = predict(wide_model, image_path, tmp_path / "fused", device=CPU)
    assert fused.runtime == "onnxruntime"
    assert (read(fused.classes_path) == classes[1]).mean() > 0.999


def test_the_export_is_kept_and_a_damaged_one_is_made_again(
    wide_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PEARL_CPU_RUNTIME", "auto")
    net = inference_copy(wide_model, CPU)
    _, runtime = group_function(net, CPU, cache_dir=tmp_path)
    (exported,) = (tmp_path / EXPORT_DIR).glob("*.onnx")
    assert runtime == "onnxruntime" and exported.stat().st_size > 1e6
    stamp = exported.stat().st_mtime_ns
    group_function(net, CPU, cache_dir=tmp_path)
    assert exported.stat().st_mtime_ns == stamp  # reused, not exported again
    exported.write_bytes(b"not an onnx graph")
    groups, runtime = group_function(net, CPU, cache_dir=tmp_path)
    assert runtime == "onnxruntime" and exported.stat().st_size > 1e6
    x = torch.randint(0, 256, (2, 4, 96, 160), dtype=torch.uint8)  # another batch size and shape than exported
    with torch.inference_mode():
        expected = net.embed_groups(x)
    got = groups(x)
    assert list(got) == list(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-3, rtol=1e-3)


def test_pytorch_computes_when_onnx_runtime_cannot(
    wide_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the export folder should go")
    net = inference_copy(wide_model, CPU)
    monkeypatch.setenv("PEARL_CPU_RUNTIME", "auto")
    groups, runtime = group_function(net, CPU, cache_dir=blocked)
    assert runtime == "torch" and "PyTorch" in caplog.text
    assert set(groups(torch.zeros(1, 4, 64, 64, dtype=torch.uint8))) == set(net.channel_groups)
    monkeypatch.setenv("PEARL_CPU_RUNTIME", "onnxruntime")  # asked for explicitly: an error, not a quiet fallback
    with pytest.raises(RuntimeError, match=r"FileExistsError|NotADirectoryError"):
        group_function(net, CPU, cache_dir=blocked)
    monkeypatch.setenv("PEARL_CPU_RUNTIME", "tensorrt")
    with pytest.raises(ValueError, match="accepted: torch, onnxruntime, auto"):
        chosen_runtime()


def test_pytorch_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert os.environ["PEARL_CPU_RUNTIME"] == os.environ.get("PEARL_TEST_CPU_RUNTIME", "torch")
    monkeypatch.delenv("PEARL_CPU_RUNTIME")
    assert chosen_runtime() == "torch"
    assert get_settings().cache_dir  # where `auto` and `onnxruntime` keep their exports outside the tests
