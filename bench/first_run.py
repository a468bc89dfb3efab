"""First run: from an empty PEARL_HOME, seconds until the review app serves predictions of a registered starter.

`pearl demo` runs twice in this one bench, each time from an empty home and on free ports: once with the CPU
capped to AVX2 (`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`, what a laptop or a cloud VM without AVX-512
has) and once uncapped. The bench acts as a new mapper: as soon as the demo project's imagery and model are
ready it draws an AOI and starts its inference; the clock stops when a prediction tile answers 200 with a PNG.
Before each run a timed probe in the same environment checks that the cap took effect (ATen's kernel level,
bfloat16 vs fp32 conv speed) and says which precision training picks there. Install time is not included
(the venv exists); the README gives a clean-clone `make demo` time. The model is what `pearl demo` registers
in the empty home (`pearl-starter-chesapeake9`, the app's base model). The last line also carries the machine
(uncapped, as this process sees it; each run's own kernel level and precision are in its `*_avx2`/`*_native`
fields).

    .venv/bin/python bench/first_run.py     # ~10 min on 2 cores; target first_map_s_avx2 <= 900
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import morecantile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as `python bench/NAME.py`

from _common import emit, log_machine
from _review import free_port, log

from pearl_pipelines.settings import REPO_ROOT, get_settings

AVX2_CAP = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
TIMEOUT_S = 1800
PROBE = """
import json, torch
from pathlib import Path
from pearl_pipelines.ml.precision import select_precision, timed_conv_step
fp32, bf16 = timed_conv_step(torch.device("cpu"))
choice = select_precision("auto", "cpu", cache_dir=Path({cache!r}))
print(json.dumps({{"capability": torch.backends.cpu.get_cpu_capability(), "fp32_ms": fp32 * 1e3,
                   "bf16_ms": bf16 * 1e3, "precision": choice.precision, "source": choice.source}}))
"""


def probe(env: dict[str, str], cache: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(cache=str(cache))], env=env, capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def square_around(bounds: list[float], side_deg: float = 0.0045) -> dict[str, Any]:
    """A ~0.4 km x 0.5 km GeoJSON square at the centre of lon/lat bounds: what a mapper draws first."""
    lon, lat, d = (bounds[0] + bounds[2]) / 2, (bounds[1] + bounds[3]) / 2, side_deg / 2
    ring = [[lon - d, lat - d], [lon + d, lat - d], [lon + d, lat + d], [lon - d, lat + d], [lon - d, lat - d]]
    return {"type": "Polygon", "coordinates": [ring]}


def prediction_tile(client: httpx.Client, base: str) -> bool:
    """Act as a new mapper: once the demo project's imagery and model are ready, draw an AOI and start its
    inference; true when a classified tile of that AOI answers 200 with a PNG."""
    try:
        projects = client.get(f"{base}/api/projects").json()
        if not projects:
            return False
        api = f"{base}/api/projects/{projects[0]['id']}"
        project = client.get(api).json()
        if project["imagery"]["state"] != "ready" or not project["model"]["ready"]:
            return False
        if not project["aois"]:
            aoi = client.post(
                f"{api}/aois", json={"name": "first", "geometry": square_around(project["imagery"]["bounds"])}
            )
            client.post(f"{api}/aois/{aoi.json()['id']}/inference").raise_for_status()
            return False
        layer = project["aois"][0].get("prediction")
        if not layer or not layer["tilejson"].get("classes"):
            return False
        tilejson = client.get(base + layer["tilejson"]["classes"]).json()
        lon = (tilejson["bounds"][0] + tilejson["bounds"][2]) / 2
        lat = (tilejson["bounds"][1] + tilejson["bounds"][3]) / 2
        tile = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, max(tilejson.get("minzoom", 15), 15))
        url = tilejson["tiles"][0].format(z=tile.z, x=tile.x, y=tile.y)
        response = client.get(url if url.startswith("http") else base + url)
        return response.status_code == 200 and response.content[:4] == b"\x89PNG"
    except (httpx.HTTPError, ValueError, KeyError, IndexError):
        return False


def first_map_seconds(label: str, home: Path, extra_env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    ports = {name: free_port() for name in ("STAC", "MLFLOW", "DAGSTER", "REVIEW")}
    env = {**os.environ, **extra_env, "PEARL_HOME": str(home)}
    env |= {f"PEARL_{name}_PORT": str(port) for name, port in ports.items()}
    checked = probe(env, home / "cache")
    log(
        f"{label}: ATen {checked['capability']}, probe conv step fp32 {checked['fp32_ms']:.1f} ms, "
        f"bf16 {checked['bf16_ms']:.1f} ms -> training precision {checked['precision']} ({checked['source']})"
    )
    shutil.rmtree(home / "cache", ignore_errors=True)  # the demo must start from an empty home
    base = f"http://127.0.0.1:{ports['REVIEW']}"
    log_path = home.parent / f"{label}.log"
    started = time.perf_counter()
    with log_path.open("w") as out:
        demo = subprocess.Popen(
            [str(REPO_ROOT / ".venv" / "bin" / "pearl"), "demo"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(timeout=30) as client:
            while not prediction_tile(client, base):
                if demo.poll() is not None:
                    raise RuntimeError(f"pearl demo exited with {demo.returncode}; see {log_path}")
                if time.perf_counter() - started > TIMEOUT_S:
                    raise TimeoutError(f"no prediction tile after {TIMEOUT_S} s; see {log_path}")
                time.sleep(2)
        seconds = time.perf_counter() - started
    finally:
        os.killpg(demo.pid, signal.SIGTERM)
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(demo.pid, signal.SIGKILL)
    log(f"{label}: first map served after {seconds:.0f} s (log {log_path})")
    return seconds, checked


def main() -> None:
    root = get_settings().home_abs / "bench" / "first_run"
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    log(f"CPU has avx512_bf16: {'avx512_bf16' in flags}, amx_bf16: {'amx_bf16' in flags}; {os.cpu_count()} cores")
    info = log_machine(precision="fp32")
    avx2_s, avx2 = first_map_seconds("avx2", root / "avx2", AVX2_CAP)
    native_s, native = first_map_seconds("native", root / "native", {})
    if avx2["capability"] == native["capability"] and native["capability"] != "AVX2":
        log("warning: the AVX2 cap did not change ATen's kernel level")
    emit(
        {
            "first_map_s_avx2": round(avx2_s, 1),
            "first_map_s_native": round(native_s, 1),
            "precision_avx2": avx2["precision"],
            "precision_native": native["precision"],
            "capability_avx2": avx2["capability"],
            "capability_native": native["capability"],
            "probe_bf16_over_fp32_avx2": round(avx2["bf16_ms"] / avx2["fp32_ms"], 2),
            "probe_bf16_over_fp32_native": round(native["bf16_ms"] / native["fp32_ms"], 2),
            "model": "pearl-starter-chesapeake9 (registered by `pearl demo` in the empty home)",
            "machine": info,
        }
    )


if __name__ == "__main__":
    main()
