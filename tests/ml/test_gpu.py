"""GPU inference planning (ml/gpu.py): the arithmetic everywhere, the measured plan where CUDA is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
import torch

from pearl_pipelines.ml.gpu import MAX_BATCH, batch_for_memory, plan_gpu_inference
from pearl_pipelines.ml.inference import inference_copy, predict
from tests.ml.conftest import tiny_model


def test_batch_size_follows_free_memory() -> None:
    gib = 2**30
    assert batch_for_memory(40 * gib, 2 * gib) == 10  # half of 40 GiB at 2 GiB a window
    assert batch_for_memory(80 * gib, gib // 4) == MAX_BATCH  # capped
    assert batch_for_memory(gib, 3 * gib) == 1  # never zero: one window is what the GPU must take anyway
    assert batch_for_memory(0, 0) == 1


def test_the_plan_runs_on_cuda_only() -> None:
    net = inference_copy(tiny_model(), torch.device("cpu"))
    with pytest.raises(AssertionError, match="CUDA"):
        plan_gpu_inference(net, 4, 64, torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_prediction_matches_the_cpu_one(image_path: Path, tmp_path: Path) -> None:  # pragma: no cover
    model = tiny_model("unet")
    cuda = torch.device("cuda")
    plan = plan_gpu_inference(inference_copy(model, cuda), 4, 192, cuda)
    assert plan.batch_size >= 1 and plan.window_bytes > 0 and plan.precision in ("fp32", "bf16")
    gpu = predict(model, image_path, tmp_path / "gpu", device=cuda)
    cpu = predict(model, image_path, tmp_path / "cpu", device="cpu")
    assert gpu.runtime.startswith("torch ") and "windows per batch" in gpu.runtime
    with rasterio.open(gpu.classes_path) as a, rasterio.open(cpu.classes_path) as b:
        assert (a.read(1) == b.read(1)).mean() > 0.98
