"""Choose the pocket model's recommended settings: for a prompt without a time of day, the share of
panoramas whose crops disagree on it and their mean Intra-LPIPS, per setting, on a few seeds (the
same seeds for every setting). One JSON line per setting, with each panorama's crop times
(d day, s sunset, n night).

    python -m pocket.sweep pocket --seeds 8 --steps 30 --strides 12 --weights 0,40 --decays 0.95,0.98 \
        --fast no_unet_backward
"""

import argparse
import itertools
import json
import time

import numpy as np

from panosync.eval.perceptual import intra_lpips
from panosync.lpips import load_lpips
from panosync.models import load_pipeline
from .quality import crop_times


def numbers(kind):
    return lambda text: [kind(item) for item in text.split(",")]


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model")
parser.add_argument("--prompt", default="snowy mountains")
parser.add_argument("--seeds", type=int, default=8)
parser.add_argument("--windows", type=int, default=8, help="panorama width in windows")
parser.add_argument("--steps", type=numbers(int), default=[30])
parser.add_argument("--guidance", type=numbers(float), default=[7.5])
parser.add_argument("--strides", type=numbers(int), default=[12])
parser.add_argument("--weights", type=numbers(float), default=[0.0, 20.0])
parser.add_argument("--decays", type=numbers(float), default=[0.95])
parser.add_argument("--thresholds", type=numbers(int), default=[None],
                    help="sync in the first n steps (default: every step)")
parser.add_argument("--fast", type=lambda text: sorted(text.split(",")), action="append", default=None,
                    help="comma-separated fast modes of the synced runs, repeatable to compare (none: faithful)")
args = parser.parse_args()

pipe = load_pipeline(args.model)
pipe.set_progress_bar_config(disable=True)
lpips = load_lpips("vgg")
size = pipe.window * pipe.vae_scale_factor
fast_choices = [[mode for mode in modes if mode != "none"] for modes in (args.fast or [["none"]])]
for steps, stride, guidance, weight, decay, threshold, fast in itertools.product(
        args.steps, args.strides, args.guidance, args.weights, args.decays, args.thresholds, fast_choices):
    if weight == 0 and (decay, threshold, fast) != (args.decays[0], args.thresholds[0], fast_choices[0]):
        continue  # MultiDiffusion does not depend on them
    setting = dict(num_inference_steps=steps, stride=stride, guidance_scale=guidance, sync_weight=weight,
                   sync_decay_rate=decay, sync_threshold=threshold, fast_modes=fast if weight else [])
    started, disagree, distances, times = time.time(), 0, [], []
    for seed in range(args.seeds):
        image = pipe(args.prompt, width=args.windows * size, height=size, seed=seed, view_batch_size=32,
                     output_type="np", **setting).images[0]
        image = (image * 255).round().astype(np.uint8)
        times.append(crop_times(image, size))
        disagree += len(set(times[-1])) > 1
        distances.append(intra_lpips(image, size, lpips))
    print(json.dumps({**setting, "disagreement": disagree / args.seeds,
                      "intra_lpips": round(float(np.mean(distances)), 4),
                      "seconds_per_panorama": round((time.time() - started) / args.seeds, 1), "crop_times": times}),
          flush=True)
