"""Precision selection: measured, cached per machine, forced by a setting; and training computes in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pearl_pipelines.ml import precision
from pearl_pipelines.ml.data import LabelledRaster
from pearl_pipelines.ml.precision import select_precision, timed_conv_step
from pearl_pipelines.ml.train import TrainConfig, train_model
from tests.ml.conftest import tiny_model


def probe_returning(fp32_s: float, bf16_s: float, calls: list[int] | None = None):
    def probe(device: torch.device) -> tuple[float, float]:
        if calls is not None:
            calls.append(1)
        return fp32_s, bf16_s

    return probe


@pytest.fixture
def bf16_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The backend claims bfloat16, as on AVX512-BF16 CPUs; the probe decides whether it is worth it."""
    monkeypatch.setattr(precision, "bf16_supported", lambda device: True)


@pytest.mark.usefixtures("bf16_claimed")
def test_a_probe_that_finds_bf16_slow_gives_fp32(tmp_path: Path) -> None:
    choice = select_precision("auto", cache_dir=tmp_path, probe=probe_returning(0.010, 0.470))  # emulated: 47x
    assert choice.precision == "fp32" and choice.source == "probe"
    assert (choice.fp32_ms, choice.bf16_ms) == (10.0, 470.0)
    tie = select_precision("auto", cache_dir=tmp_path / "tie", probe=probe_returning(0.010, 0.0095))
    assert tie.precision == "fp32"  # 5 % faster is not worth bfloat16's rounding


@pytest.mark.usefixtures("bf16_claimed")
def test_a_probe_that_finds_bf16_fast_gives_bf16(tmp_path: Path) -> None:
    choice = select_precision("auto", cache_dir=tmp_path, probe=probe_returning(0.010, 0.0045))
    assert choice.precision == "bf16" and choice.bf16 and choice.source == "probe"
    assert "bf16" in choice.describe() and "4.5 ms" in choice.describe()


@pytest.mark.usefixtures("bf16_claimed")
def test_the_choice_is_cached_per_machine_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    first = select_precision("auto", cache_dir=tmp_path, probe=probe_returning(0.010, 0.004, calls))
    again = select_precision("auto", cache_dir=tmp_path, probe=probe_returning(0.010, 0.900, calls))
    assert (first.precision, again.precision, again.source, len(calls)) == ("bf16", "bf16", "cache", 1)
    entry = next(iter(json.loads((tmp_path / precision.CACHE_FILE).read_text()).values()))
    assert entry["fingerprint"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    # Capping oneDNN is another machine as far as bfloat16 goes: the probe runs again.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    capped = select_precision("auto", cache_dir=tmp_path, probe=probe_returning(0.010, 0.900, calls))
    assert (capped.precision, capped.source, len(calls)) == ("fp32", "probe", 2)


def test_a_setting_forces_either_choice_and_bad_values_say_what_is_accepted(tmp_path: Path) -> None:
    def no_probe(device: torch.device) -> tuple[float, float]:
        raise AssertionError("a forced precision must not be probed")

    for forced in ("fp32", "bf16"):
        choice = select_precision(forced, cache_dir=tmp_path, probe=no_probe)
        assert (choice.precision, choice.source) == (forced, "setting")
    with pytest.raises(ValueError, match="unknown precision 'fp16'; accepted: auto, fp32, bf16"):
        select_precision("fp16")


def test_without_native_bf16_the_probe_is_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(precision, "bf16_supported", lambda device: False)
    choice = select_precision("auto", cache_dir=tmp_path, probe=probe_returning(0.010, 0.001))
    assert (choice.precision, choice.source) == ("fp32", "unsupported")


def test_the_real_probe_times_both_precisions() -> None:
    fp32_s, bf16_s = timed_conv_step(torch.device("cpu"), size=16, repeats=1)
    assert 0 < fp32_s < 5 and 0 < bf16_s < 60


def test_a_cpu_capped_to_avx2_trains_in_fp32(tmp_path: Path) -> None:
    """The cap that imitates a CPU without AVX-512: ATen runs AVX2 kernels and bfloat16 is not chosen."""
    code = (
        "import json, torch; from pathlib import Path; from pearl_pipelines.ml.precision import select_precision;"
        f"c = select_precision('auto', cache_dir=Path({str(tmp_path)!r}));"
        "print(json.dumps([torch.backends.cpu.get_cpu_capability(), c.precision]))"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    capability, chosen = json.loads(out.stdout.strip().splitlines()[-1])
    assert capability in {"AVX2", "DEFAULT"} and chosen == "fp32"


@pytest.mark.parametrize(("forced", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_computes_in_the_chosen_precision(forced: str, dtype: torch.dtype) -> None:
    model = tiny_model("fcn")
    seen: list[torch.dtype] = []
    first_conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda mod, inputs, output: seen.append(output.dtype))
    rng = np.random.default_rng(0)
    raster = LabelledRaster(
        name="noise",
        image=rng.integers(0, 255, (4, 48, 48), dtype=np.uint8),
        labels=rng.integers(0, 4, (48, 48), dtype=np.uint8),
    )
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1, patch_size=32, precision=forced, threads=1)
    train_model(model, [raster], config, show_progress=False)
    assert seen == [dtype]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, never bf16 weights
