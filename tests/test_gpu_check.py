"""benchmarks/gpu_check.py, the GPU check (its code in benchmarks/gpu/), stays runnable: its smoke
run (the same code as on the GPU, at a tiny size, on the CPU) completes every part with finite
figures, in its own process as the GPU machine runs it."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu import parts, plans, tables  # noqa: E402


def numbers(value):
    """Every int and float in a JSON value."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)


@pytest.mark.benchmark
def test_smoke_run_measures_every_part(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    data = json.loads((tmp_path / "GPU.json").read_text())
    plan = plans.smoke_plan(0)
    speed = [f"speed {plan.height}x{width}" for width in plan.speed_widths]
    assert list(data["parts"]) == ["setup", "correctness", "gradient", speed[0], "memory", "backbones", *speed[1:],
                                   "offload", "flow transformers"]
    assert data["finished"] and data["environment"]["smoke"]
    for name, part in data["parts"].items():
        assert part["status"] == "done", (name, part["status"])
        assert not part["skipped"], (name, part["skipped"])
        assert part["runs"] or name == "setup"
        for run in part["runs"]:
            assert run["error"] is None, (name, run["run"], run["error"])
            assert run["finite"] is True, (name, run["run"])
            assert all(math.isfinite(value) for value in numbers(run)), (name, run)
    assert all(math.isfinite(value) for value in numbers(data["parts"]["memory"].get("largest_chunk_within_24GB")))

    correctness = {run["run"]: run for run in data["parts"]["correctness"]["runs"]}
    assert correctness["SyncDiffusion, bfloat16"]["not_flat"] is True
    assert 0 <= correctness["MultiDiffusion, bfloat16"]["max_abs_difference_to_float32"] < 1
    for name in speed:
        runs = data["parts"][name]["runs"]
        assert sum(bool(run.get("best_chunk")) for run in runs) == 1
        modes = {run["mode"] for run in runs}
        assert {"faithful", "reference", "multidiffusion", "diffusers", "fast: reuse_noise",
                "fast: reuse_noise + lpips_alex (the fast preset's synced step)"} <= modes
        assert all(run["synced_step_s"] > 0 and run["total_first_10_s"] > 0 and run["total_fast_share_s"] > 0
                   for run in runs if run["syncs"])
    backbones = [run for run in data["parts"]["backbones"]["runs"] if run["what"] == "panorama"]
    canvases = [f"{h}x{w}" for h, w in plan.backbones[0].canvases]
    assert [(run["canvas"], run["mode"]) for run in backbones] == [
        *((canvas, "faithful") for canvas in canvases), (canvases[0], "fast preset")]
    assert all(run["synced_step_s"] > 0 and run["plain_step_s"] > 0 and run["peak_bytes"] > 0 for run in backbones)
    offload = {run["offload"]: run for run in data["parts"]["offload"]["runs"]}
    assert offload["enable_model_cpu_offload"]["max_abs_difference_to_on_device"] == 0  # the hooks change nothing
    flow = data["parts"]["flow transformers"]["runs"]
    assert [(run["family"], run["mode"]) for run in flow] == [
        (family, mode) for family in ("SD3.5 medium", "FLUX.1-dev") for mode in ("faithful", "no_unet_backward")]
    assert all(run["synced_step_s"] > 0 and run["plain_step_s"] > 0 for run in flow)
    text = (tmp_path / "GPU.md").read_text()
    assert text.startswith("# GPU check") and "SMOKE RUN" in text and "3× target" in text
    assert "| FLUX.1-dev | no_unet_backward |" in text


@pytest.mark.benchmark
def test_smoke_run_never_writes_the_gpu_results():
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(SCRIPT.parent)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "never writes benchmarks/GPU.md" in done.stderr


def test_totals_for_50_steps_are_derived_from_the_step_times():
    row = dict(synced_step_s=2.0, plain_step_s=0.5, decode_s=1.0)
    totals = tables.derived_totals(row, syncs=True, step_fraction=1.0)
    assert totals["total_every_step_s"] == 50 * 2.0 + 1 and totals["total_first_10_s"] == 10 * 2.0 + 40 * 0.5 + 1
    assert totals["total_fast_share_s"] == 13 * 2.0 + 37 * 0.5 + 1  # the fast preset: the first quarter, 13 of 50
    half = tables.derived_totals(row, syncs=True, step_fraction=0.5)  # dpm_solver: 25 steps, 5 synced
    assert half["total_every_step_s"] == 25 * 2.0 + 1 and half["total_first_10_s"] == 5 * 2.0 + 20 * 0.5 + 1
    plain = tables.derived_totals(dict(plain_step_s=0.5, decode_s=1.0), syncs=False, step_fraction=1.0)
    assert plain["total_every_step_s"] == plain["total_first_10_s"] == 50 * 0.5 + 1


def test_largest_chunk_within_a_memory_limit():
    runs = [dict(what="synced step", canvas="512x8192", chunk=1, peak_bytes=5 * 2**30, error=None),
            dict(what="synced step", canvas="512x8192", chunk=16, peak_bytes=35 * 2**30, error=None),
            dict(what="decode", canvas="512x8192", chunk=None, peak_bytes=50 * 2**30, error=None)]
    derived = parts.largest_chunk_within(runs, 24 * 2**30)["512x8192"]
    assert derived["bytes_per_view"] == 2 * 2**30 and derived["largest_chunk"] == 10  # 3 + 2·10 = 23 GiB


def test_the_gpu_checks_sdxl_is_sdxl_base_in_size():
    """Random weights cost what the real ones cost only if the architecture is the real one: SDXL
    base's UNet has 2,567,463,684 parameters (built on the meta device: no memory, no time)."""
    import speed

    with torch.device("meta"):
        components = speed.sdxl_base_components(smoke=False)
    assert sum(p.numel() for p in components["unet"].parameters()) == 2_567_463_684
    assert components["unet"].config.sample_size == 128 and components["vae"].config.force_upcast
