"""Choose the pocket model's recommended sync settings: for a prompt without a time of day, the
share of panoramas whose crops disagree on it and their Intra-LPIPS, per setting, on a few seeds.

    python scripts/pocket_sweep.py runs/pocket/export
"""

import itertools
import json
import sys
import time

import numpy as np

from panosync.lpips import load_lpips
from panosync.models import load_pipeline
from panosync.pocket.classify import classify_time
from panosync.pocket.quality import crops, intra_lpips

model = sys.argv[1]
seeds = range(int(sys.argv[2]) if len(sys.argv) > 2 else 8)
pipe = load_pipeline(model)
pipe.set_progress_bar_config(disable=True)
lpips = load_lpips("vgg")
size = pipe.window * pipe.vae_factor
base = dict(prompt="snowy mountains", width=8 * size, height=size, num_inference_steps=30, stride=8,
            view_batch_size=32, output_type="np")
settings = [dict(sync_weight=0.0)] + [dict(sync_weight=w, sync_threshold=k, guidance_scale=g)
                                       for w, k, g in itertools.product([5.0, 20.0, 60.0], [10], [7.5])]
for setting in settings:
    started, disagree, distances = time.time(), 0, []
    for seed in seeds:
        image = (pipe(seed=seed, **{**base, **setting}).images[0] * 255).round().astype(np.uint8)
        disagree += len({classify_time(tile) for tile in crops(image, size)}) > 1
        distances.append(intra_lpips(image, size, lpips))
    print(json.dumps({**setting, "disagreement": disagree / len(seeds), "intra_lpips": round(float(np.mean(distances)), 4),
                      "seconds_per_panorama": round((time.time() - started) / len(seeds), 1)}), flush=True)
