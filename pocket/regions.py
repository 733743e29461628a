"""Region prompts on the bundled pocket model, measured: how a region keeps its prompt and how the
panorama keeps one time of day, for each way of combining regions with sync (docs/regions.md).

    python -m pocket.regions --run runs/regions   # measure; docs/regions.json and the pictures

The case (the issue's): background "snowy mountains by day", a region on the right third "green
hills", 512 x 64. Methods, each on the same seeds:
* multidiffusion      -- the regions with sync_weight 0 (MultiDiffusion's region-based generation)
* sync-<mode>         -- the regions, synced, for each of regions.SYNC_MODES (whole, same_prompt, outside)
* sync-no-regions     -- the background prompt alone, synced (what the regions change)
* *-no-bootstrap      -- multidiffusion and sync-whole without bootstrapping (regions.BOOTSTRAP_SHARE 0)
* *-base, *-base15    -- multidiffusion and sync-whole with the background prompt given a share of
  the region's weight (the region_base parameter, Regional Prompter's base prompt: BASE, or 0.15)

Measured on 64-px crops at stride 32 (pocket's classifier, pocket/classify.py):
* region adherence   -- of the crops wholly inside the region, the share whose ground reads green
* background adherence -- of the crops wholly outside it, the share whose ground reads snow
* snow in the region -- of the region's ground (its lower 40 %), the share of white or blue pixels:
  the background's prompt leaking into it
* one time of day    -- the share of each panorama's crops showing its most common time, and the
  panoramas whose crops all show one time
Every image made is kept under the run folder, so a second run resumes. Seeds: judging 9200 on,
never used before; the tuning seeds 8910-8913 were only looked at.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from panosync.files import write_atomically
from panosync.regions import BOOTSTRAP_SHARE, DEFAULT_SYNC_MODE, SYNC_MODES

from .classify import classify
from .image_inputs import Cache, labelled, load_pipe, recommended, stacked

ROOT = Path(__file__).resolve().parents[1]
JUDGING_SEEDS_FROM = 9200
WIDTH, HEIGHT, WINDOW, CROP_STRIDE = 512, 64, 64, 32
BACKGROUND = "snowy mountains by day"
REGION_PROMPT = "green hills"
REGION_BOX = [WIDTH * 2 // 3, 0, WIDTH, HEIGHT]
METHODS = ("multidiffusion", *(f"sync-{mode}" for mode in SYNC_MODES), "sync-no-regions",
           "multidiffusion-no-bootstrap", "sync-whole-no-bootstrap", "multidiffusion-base", "sync-whole-base",
           "multidiffusion-base15", "sync-whole-base15")
BASE = 0.3  # the background prompt's share inside the region in the -base methods
PICTURED = {"multidiffusion": "MultiDiffusion, region_base 0", "sync-whole": "synced, region_base 0",
            "sync-whole-base15": "synced, region_base 0.15 (the default)", "sync-whole-base": f"synced, region_base {BASE}"}


def make(pipe, method: str, seed: int, settings: dict) -> PIL.Image.Image:
    options = dict(settings)
    regions = [dict(box=REGION_BOX, prompt=REGION_PROMPT)]
    pipe.region_sync, pipe.region_bootstrap = DEFAULT_SYNC_MODE, BOOTSTRAP_SHARE
    options["region_base"] = 0.0  # each region's prompt alone, unless the method says -base (-base15: 0.15)
    method, based, percent = method.partition("-base")
    if based:
        options["region_base"] = int(percent) / 100 if percent else BASE
    if method.endswith("-no-bootstrap"):
        pipe.region_bootstrap = 0.0
        method = method.removesuffix("-no-bootstrap")
    if method == "multidiffusion":
        options["sync_weight"] = 0.0
    elif method == "sync-no-regions":
        regions = None
    else:
        pipe.region_sync = method.removeprefix("sync-")
    return pipe(BACKGROUND, width=WIDTH, height=HEIGHT, seed=seed, regions=regions, **options).images[0]


def crop_lefts() -> list[int]:
    return list(range(0, WIDTH - WINDOW + 1, CROP_STRIDE))


def measure(image: PIL.Image.Image) -> dict:
    x0, x1 = REGION_BOX[0], REGION_BOX[2]
    labels = {left: classify(image.crop((left, 0, left + WINDOW, HEIGHT))) for left in crop_lefts()}
    inside = [labels[left] for left in labels if left >= x0 and left + WINDOW <= x1]
    outside = [labels[left] for left in labels if left + WINDOW <= x0]
    times = [label["time"] for label in labels.values()]
    most_common_share = collections.Counter(times).most_common(1)[0][1] / len(times)
    # the background's snow leaking into the region: its ground's pixels (the lower 40 %) that are
    # white or blue (blue at least green, bright) rather than green
    ground = np.asarray(image, dtype=np.float64)[int(HEIGHT * 0.6):, x0:x1]
    snowlike = (ground[..., 2] >= ground[..., 1]) & (ground.mean(axis=-1) > 120)
    return dict(region_green=float(np.mean([label["ground"] == "green" for label in inside])),
                background_snow=float(np.mean([label["ground"] == "snow" for label in outside])),
                region_snowlike_pixels=float(snowlike.mean()), one_time_share=most_common_share, times=times)


def summary(rows: list[dict], method: str, cache: Cache) -> dict:
    values = [row[method] for row in rows]
    seconds = [cache.seconds.get(f"{method}-{row['seed']}") for row in rows]
    return dict(region_green=float(np.mean([v["region_green"] for v in values])),
                background_snow=float(np.mean([v["background_snow"] for v in values])),
                region_snowlike_pixels=float(np.mean([v["region_snowlike_pixels"] for v in values])),
                one_time_share=float(np.mean([v["one_time_share"] for v in values])),
                panoramas_one_time=sum(v["one_time_share"] == 1 for v in values),
                seconds=float(np.mean([s for s in seconds if s is not None])) if any(seconds) else None)


def with_box(image: PIL.Image.Image) -> PIL.Image.Image:
    """The panorama with the region's box drawn on it."""
    drawn = image.copy()
    x0, y0, x1, y1 = REGION_BOX
    PIL.ImageDraw.Draw(drawn).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 40, 200), width=2)
    return drawn


def pictures(cache: Cache, seeds: list[int], out: Path) -> None:
    rows = []
    for seed in seeds:
        for method, label in PICTURED.items():
            rows.append(labelled(with_box(cache.get(f"{method}-{seed}", lambda: None)), f"{label}, seed {seed}"))
    stacked(rows).save(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/regions")
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--first-seed", type=int, default=JUDGING_SEEDS_FROM)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "regions.json"))
    parser.add_argument("--picture", default=str(ROOT / "docs" / "regions.png"))
    parser.add_argument("--picture-seeds", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load_pipe()
    settings = recommended()
    cache = Cache(Path(args.run))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    methods = args.methods.split(",")
    rows = []
    for seed in seeds:
        row = dict(seed=seed)
        for method in methods:
            row[method] = measure(cache.get(f"{method}-{seed}", lambda: make(pipe, method, seed, settings)))
        rows.append(row)
        print(seed, {method: (row[method]["region_green"], row[method]["background_snow"],
                              round(row[method]["one_time_share"], 2)) for method in methods}, flush=True)
    results = dict(case=dict(background=BACKGROUND, region=REGION_PROMPT, box=REGION_BOX, width=WIDTH,
                             height=HEIGHT, crop=WINDOW, crop_stride=CROP_STRIDE),
                   settings=settings, seeds=seeds, rows=rows,
                   summary={method: summary(rows, method, cache) for method in methods})
    print(json.dumps(results["summary"], indent=1))
    write_atomically(Path(args.out), json.dumps(results, indent=1))
    if args.picture_seeds:
        pictures(cache, seeds[:args.picture_seeds], Path(args.picture))


if __name__ == "__main__":
    main()
