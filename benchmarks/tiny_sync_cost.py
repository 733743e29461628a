"""What synchronization costs on the CPU: one 512x1024, 5-step panorama on the tiny random model
(window 64 latents, VAE factor 8, stride 16: 5 views), MultiDiffusion versus SyncDiffusion synced
in every step, timed side by side in one run. Writes benchmarks/tiny_sync_cost.md.

    .venv/bin/python benchmarks/tiny_sync_cost.py
"""

import platform
import time
from pathlib import Path

import torch

from panosync.pipeline import SyncDiffusionPipeline
from panosync.tiny import tiny_random_components


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main():
    pipe = SyncDiffusionPipeline(**tiny_random_components())
    pipe.set_progress_bar_config(disable=True)
    pipe.perceptual_distance()  # load LPIPS before timing
    request = dict(prompt="a photo of a mountain range", width=1024, height=512, num_inference_steps=5, stride=16,
                   seed=0, output_type="np")
    runs = {"MultiDiffusion (sync_weight 0)": dict(sync_weight=0.0), "SyncDiffusion (w 20, every step)": {}}
    seconds = {}
    for name, change in runs.items():
        started = time.perf_counter()
        pipe(**request, **change)
        seconds[name] = time.perf_counter() - started
    base = next(iter(seconds.values()))
    lines = [
        "# Cost of synchronization on the CPU (tiny random model)",
        "",
        f"512x1024 px, 5 DDIM steps, stride 16 (5 views), window 64 latents, VAE factor 8, float32, "
        f"{torch.get_num_threads()} threads, {cpu_name()}, torch {torch.__version__}; one run, side by side.",
        "",
        "| method | seconds | × MultiDiffusion |",
        "|---|---|---|",
        *[f"| {name} | {s:.1f} | {s / base:.1f} |" for name, s in seconds.items()],
        "",
        "A synced step adds, per view but the anchor, a UNet forward and backward, a VAE decoder forward",
        "and backward at 512x512 and LPIPS-VGG forward and backward; on this tiny model the decoder and",
        "LPIPS dominate.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(__file__).with_name("tiny_sync_cost.md").write_text(text)


if __name__ == "__main__":
    main()
