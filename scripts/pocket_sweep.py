"""Choose the pocket model's recommended settings: for a prompt without a time of day, the share of
panoramas whose crops disagree on it and their mean Intra-LPIPS, per setting, on a few seeds (the
same seeds for every setting). One JSON line per setting.

    python scripts/pocket_sweep.py runs/pocket/export --seeds 8 --strides 8,12 --weights 0,20 --thresholds 10,30
"""

import argparse
import itertools
import json
import time

import numpy as np

from panosync.lpips import load_lpips
from panosync.models import load_pipeline
from panosync.pocket.classify import classify_time
from panosync.pocket.quality import crops, intra_lpips


def numbers(kind):
    return lambda text: [kind(item) for item in text.split(",")]


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model")
parser.add_argument("--prompt", default="snowy mountains")
parser.add_argument("--seeds", type=int, default=8)
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--guidance", type=numbers(float), default=[7.5])
parser.add_argument("--strides", type=numbers(int), default=[8])
parser.add_argument("--weights", type=numbers(float), default=[0.0, 20.0])
parser.add_argument("--decays", type=numbers(float), default=[0.95])
parser.add_argument("--thresholds", type=numbers(int), default=[10])
args = parser.parse_args()

pipe = load_pipeline(args.model)
pipe.set_progress_bar_config(disable=True)
lpips = load_lpips("vgg")
size = pipe.window * pipe.vae_factor
for stride, guidance, weight, decay, threshold in itertools.product(args.strides, args.guidance, args.weights,
                                                                      args.decays, args.thresholds):
    if weight == 0 and (decay, threshold) != (args.decays[0], args.thresholds[0]):
        continue  # MultiDiffusion does not depend on them
    setting = dict(stride=stride, guidance_scale=guidance, sync_weight=weight, sync_decay_rate=decay,
                   sync_threshold=threshold)
    started, disagree, distances = time.time(), 0, []
    for seed in range(args.seeds):
        image = pipe(args.prompt, width=8 * size, height=size, num_inference_steps=args.steps, seed=seed,
                     view_batch_size=32, output_type="np", **setting).images[0]
        image = (image * 255).round().astype(np.uint8)
        disagree += len({classify_time(tile) for tile in crops(image, size)}) > 1
        distances.append(intra_lpips(image, size, lpips))
    print(json.dumps({**setting, "disagreement": disagree / args.seeds,
                      "intra_lpips": round(float(np.mean(distances)), 4),
                      "seconds_per_panorama": round((time.time() - started) / args.seeds, 1)}), flush=True)
