"""What region prompts cost, in one run on this machine's CPU: seconds per pocket panorama with and
without a region, for MultiDiffusion (sync_weight 0) and synced, side by side.

    python benchmarks/regions.py        # writes benchmarks/REGIONS.md and REGIONS.json

The case is pocket/regions.py's (docs/regions.md): 512 × 64, background "snowy mountains by day",
a region on the right third "green hills", pocket's recommended settings and the default
region_base. Each setting runs twice (seeds 9300 and 9301) after a warm-up; the faster is kept.
A view inside one prompt's area runs that prompt alone; with region_base above 0 the background's
prompt reaches every view, so the views of the region run two prompts, all in one network call.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent)]

import torch  # noqa: E402

from panosync.files import write_atomically  # noqa: E402
from pocket.image_inputs import load_pipe, recommended  # noqa: E402
from pocket.regions import BACKGROUND, HEIGHT, REGION_BOX, REGION_PROMPT, WIDTH  # noqa: E402

SEEDS = (9300, 9301)
REGIONS = [dict(box=REGION_BOX, prompt=REGION_PROMPT)]
CASES = {"MultiDiffusion, no region": dict(sync_weight=0.0, regions=None),
         "MultiDiffusion, one region": dict(sync_weight=0.0, regions=REGIONS),
         "synced, no region": dict(regions=None),
         "synced, one region": dict(regions=REGIONS)}


def main() -> None:
    threads = int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    pipe = load_pipe()
    settings = recommended()
    pipe(BACKGROUND, width=WIDTH, height=HEIGHT, seed=1, num_inference_steps=2)  # warm-up
    seconds = {}
    for name, case in CASES.items():
        times = []
        for seed in SEEDS:
            started = time.perf_counter()
            pipe(BACKGROUND, width=WIDTH, height=HEIGHT, seed=seed, **{**settings, **case})
            times.append(time.perf_counter() - started)
        seconds[name] = min(times)
        print(f"{name}: {seconds[name]:.2f} s", flush=True)
    results = dict(seconds=seconds, threads=threads, machine=platform.processor() or platform.machine(),
                   torch=torch.__version__, settings=settings, case=dict(width=WIDTH, height=HEIGHT, box=REGION_BOX))
    write_atomically(HERE / "REGIONS.json", json.dumps(results, indent=1))
    plain_md, region_md = seconds["MultiDiffusion, no region"], seconds["MultiDiffusion, one region"]
    plain_sync, region_sync = seconds["synced, no region"], seconds["synced, one region"]
    lines = ["# What region prompts cost (pocket, CPU)", "",
             f"`python benchmarks/regions.py`, {threads} threads, torch {torch.__version__}: seconds per 512 × 64 "
             f"panorama, the faster of two seeds, pocket's recommended settings, one region on the right third "
             f"(docs/regions.md).", "",
             "| | no region | one region | region's cost |", "|---|---|---|---|",
             f"| MultiDiffusion | {plain_md:.2f} | {region_md:.2f} | {region_md / plain_md - 1:+.0%} |",
             f"| synced | {plain_sync:.2f} | {region_sync:.2f} | {region_sync / plain_sync - 1:+.0%} |", ""]
    write_atomically(HERE / "REGIONS.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
