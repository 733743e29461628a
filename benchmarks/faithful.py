"""Faithful mode against the reference order on an SD-shaped model, side by side in one run (issue 31,
part 5): a random-weight Stable Diffusion 2-shaped pipeline (512-pixel windows, VAE factor 8), a
512 × 1024 canvas (5 views, stride 16), every step synced, on the CPU. Times the reference's loop
(tests/reference_loop.py: one view at a time, the anchor's image decoded again for every view, its
gradient computed and discarded) and panosync's faithful mode, each after a warm-up call, and
optionally profiles each (cProfile, the functions with the most time of their own).

    OMP_NUM_THREADS=1 python benchmarks/faithful.py --steps 4 --threads 1 [--profile] [--out benchmarks/FAITHFUL]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent / "tests")]

from panosync.files import write_atomically  # noqa: E402

PROMPT = "snowy mountains"
WIDTH, HEIGHT, STRIDE = 1024, 512, 16


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="also profile one call of each (cProfile)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from conftest import make_pipe
    from panosync.lpips import load_lpips
    from reference_loop import reference_panorama

    pipe = make_pipe(window=64, vae_factor=8)
    lpips = load_lpips("vgg")
    pipe.perceptual_distance()  # loaded before timing, as the reference's LPIPS is
    factor = pipe.vae_scale_factor
    noise = torch.randn((1, 4, HEIGHT // factor, WIDTH // factor), generator=torch.Generator().manual_seed(0))
    common = dict(width=WIDTH, height=HEIGHT, stride=STRIDE, num_inference_steps=args.steps, guidance_scale=7.5)
    ways = {
        "reference order": lambda: reference_panorama(pipe, PROMPT, "", noise=noise, sync_weight=20.0,
                                                      sync_decay_rate=0.95, sync_freq=1, sync_threshold=args.steps,
                                                      lpips=lpips, **common),
        "faithful mode": lambda: pipe(PROMPT, latents=noise, sync_weight=20.0, output_type="latent",
                                      **common).images,
    }
    report = {"steps": args.steps, "threads": args.threads, "canvas": f"{HEIGHT}x{WIDTH}", "ways": {}}
    for name, call in ways.items():
        call()  # warm-up: first calls allocate and pick kernels
        started = time.perf_counter()
        call()
        seconds = time.perf_counter() - started
        entry = {"seconds": round(seconds, 2)}
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(call)
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
            entry["profile"] = text.getvalue()
        report["ways"][name] = entry
        print(f"{name}: {seconds:.2f} s", flush=True)
    ratio = report["ways"]["reference order"]["seconds"] / report["ways"]["faithful mode"]["seconds"]
    report["faithful_speedup"] = round(ratio, 3)
    print(f"faithful mode is {ratio:.2f}× the reference order's speed")
    if args.out is not None:
        write_atomically(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
