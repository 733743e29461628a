"""Peak memory of the two things that could outgrow a 24 GB GPU on wide panoramas, measured on the
CPU with Stable Diffusion 2 base's architecture (random weights, float32), each in its own process:

1. one view's synced pass (guided UNet forward and backward, VAE decoder forward and backward at
   512 x 512, LPIPS-VGG forward and backward): the most the denoising loop holds at once with one
   view per call, whatever the canvas;
2. the final decode, in one piece and in tiles (decode.py), at growing widths.

    OMP_NUM_THREADS=1 python benchmarks/memory.py        # writes benchmarks/MEMORY.md

The figures are float32 on the CPU; float16 on a GPU holds about half as many bytes per tensor
(plus the kernels' workspaces), so they estimate, not measure, the GPU figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from speed import load_average, machine, reset_peak_memory, resident_memory, sd2_base_components, Setup  # noqa: E402


def child(job: dict) -> dict:
    from panosync.pipeline import SyncDiffusionPipeline
    from panosync.sync import SyncModels, sync_step

    torch.set_num_threads(1)
    pipe = SyncDiffusionPipeline(**sd2_base_components(smoke=False))
    pipe.set_progress_bar_config(disable=True)
    weights = sum(p.numel() * p.element_size() for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
    if job["what"] == "sync pass":
        perceptual = pipe.perceptual_distance()
        embeddings = pipe.backbone.encode_prompt(["a photo of a mountain range"], [""], "cpu")
        pipe.scheduler.set_timesteps(50)
        t = pipe.scheduler.timesteps[0]
        x = torch.randn((1, 4, 64, 64), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            target = perceptual.target_features(pipe.decode_to_unit(x) * 2 - 1)

        models = SyncModels(lambda latent: pipe.backbone.guided_prediction(latent, t, embeddings, 7.5),
                            lambda latent, prediction: pipe.scheduler.step(prediction, t, latent).pred_original_sample,
                            pipe.foreseen_image, lambda images: perceptual(images * 2 - 1, target))

        def work():
            sync_step(x, 1.0, models)
    else:
        latent = torch.randn((1, 4, 64, job["width"] // 8), generator=torch.Generator().manual_seed(0))

        def work():
            with torch.no_grad():
                pipe.decode_panorama(latent, loop_closure=False, tiled=job["tiled"])
    held = reset_peak_memory("cpu")
    started = time.perf_counter()
    work()
    seconds = time.perf_counter() - started
    return dict(peak_bytes=resident_memory()[1] - held, seconds=seconds, weight_bytes=weights)


JOBS = [
    dict(what="sync pass"),
    dict(what="decode", width=512, tiled=False),
    dict(what="decode", width=1024, tiled=False),
    dict(what="decode", width=2048, tiled=False),
    dict(what="decode", width=1024, tiled=True),
    dict(what="decode", width=2048, tiled=True),
    dict(what="decode", width=4096, tiled=True),
]


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(json.loads(sys.argv[2]))), flush=True)
        return 0
    load_before = load_average()
    rows = []
    for job in JOBS:
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
        result = next((json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
        if result is None:
            raise RuntimeError(done.stderr[-3000:])
        label = job["what"] if job["what"] == "sync pass" else (
            f"decode 512×{job['width']}, {'tiled' if job['tiled'] else 'one piece'}")
        rows.append((label, result))
        print(label, f"{result['peak_bytes'] / 2**30:.2f} GiB, {result['seconds']:.0f} s", flush=True)
    weights = rows[0][1]["weight_bytes"]
    lines = [
        "# Peak memory of wide panoramas: measured on the CPU, estimated for a GPU", "",
        f"Machine: {machine(Setup('sd2-random', 'cpu', 'float32', 0, 0, 0, 0, None))}. Load average before: "
        f"{load_before}. SD 2 base architecture, random weights, float32; UNet, VAE and text encoder weights "
        f"{weights / 2**30:.2f} GiB (float16: {weights / 2**31:.2f} GiB). Peak: resident memory above what the process "
        f"held before the work.", "",
        "| work | peak above the weights, float32 (GiB) | float16 estimate (GiB) | s |", "|---|---|---|---|",
        *[f"| {label} | {r['peak_bytes'] / 2**30:.2f} | {r['peak_bytes'] / 2**31:.2f} | {r['seconds']:.0f} |"
          for label, r in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    (HERE / "MEMORY.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
