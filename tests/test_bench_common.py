"""bench/_common.py: the machine line and the FLOP count the inference benches report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import _common

from pearl_pipelines.classes import load_schema
from pearl_pipelines.ml.models import LandcoverModel, ModelSpec


def test_machine_says_cpu_flags_caps_threads_device_and_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEARL_PRECISION", "fp32")  # no probe in a unit test
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    info = _common.machine("cpu")
    for key in ("cpu", *_common.CPU_FLAGS, "cpu_capability", "ATEN_CPU_CAPABILITY", "threads", "device", "precision"):
        assert key in info
    assert info["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    line = _common.describe_machine(info)
    assert "avx512_bf16" in line and "ONEDNN_MAX_CPU_ISA=AVX2" in line


def test_emit_prints_one_json_line_with_nested_values(capsys: pytest.CaptureFixture[str]) -> None:
    _common.emit({"a": 1.234567, "machine": {"threads": 2, "x": 0.123456}, "model": "proxy-fcn"})
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == {"a": 1.2346, "machine": {"threads": 2, "x": 0.1235}, "model": "proxy-fcn"}


def test_conv_flops_counts_hidden_lite0_and_the_functional_head() -> None:
    torch.manual_seed(0)
    spec = ModelSpec(
        arch="fcn", schema=load_schema("chesapeake4"), embed_dim=8, features=["spectral_texture", "imagenet_lite0"]
    )
    net = LandcoverModel(spec).eval()
    x = torch.randint(0, 256, (1, 4, 64, 64), dtype=torch.uint8)
    run = _common.app_forward(net)
    counted = _common.conv_flops(net, run, x, list(net.channel_groups))
    assert counted["imagenet_lite0"] > 0 and counted["backbone"] > 0 and counted["head"] > 0
    with torch.inference_mode(), FlopCounterMode(display=False) as reference:
        run(x)
    assert sum(counted.values()) == pytest.approx(reference.get_total_flops(), rel=1e-6)


def test_ensure_starters_registers_once_when_missing_and_records_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from pearl_pipelines.ml.models import MODEL_FILE
    from pearl_pipelines.ml.starter import DEFAULT_ARCH, starter_dir
    from pearl_pipelines.settings import Settings

    settings = Settings(home=tmp_path)
    calls: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        assert kwargs["env"]["PEARL_HOME"] == str(tmp_path)  # type: ignore[index]
        lines = []
        for schema in _common.STARTER_SCHEMAS:
            folder = starter_dir(settings, schema, DEFAULT_ARCH[schema])
            folder.mkdir(parents=True)
            (folder / MODEL_FILE).write_bytes(b"")
            lines.append(f"pearl-starter-{schema} v3 ({DEFAULT_ARCH[schema]}, fp32): shipped weights (0 CPU s)")
        return subprocess.CompletedProcess(command, 0, "\n".join(lines) + "\n", "")

    monkeypatch.setattr(_common.subprocess, "run", fake_run)
    found = _common.ensure_starters(settings)
    assert set(found) == set(_common.STARTER_SCHEMAS)
    assert calls and calls[0][-4:] == ["starter", "--schema", "all", "--shipped"]
    assert _common.starter_label("chesapeake9", settings) == "pearl-starter-chesapeake9 v3"
    _common.ensure_starters(settings)  # present now: nothing registered again
    assert len(calls) == 1
