"""When does a pocket sample settle its time of day (or its terrain, or its ground)? For single
windows of one prompt, classify the foreseen image (the decoded x̂₀ of each DDIM step) and find the
step from which it stays the final image's value. A model that settles it in step 0 leaves the sync
step nothing to steer; an attribute settled later than the time of day can be left alone by a sync
step that stops in between.

    python -m pocket.decision --model pocket --seeds 32 --attribute terrain
"""

import argparse
import json

import numpy as np
import torch

from panosync.models import load_pipeline
from .classify import classify
from .landscapes import ATTRIBUTES

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="pocket")
parser.add_argument("--prompt", default="a landscape")
parser.add_argument("--seeds", type=int, default=32)
parser.add_argument("--first-seed", type=int, default=100)
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--guidance-scale", type=float, default=7.5)
parser.add_argument("--attribute", choices=["time", "terrain", "ground"], default="time")
args = parser.parse_args()
# the traces write each value as its first letter, which names it within an attribute
assert len({value[0] for value in ATTRIBUTES[args.attribute]}) == len(ATTRIBUTES[args.attribute])

pipe = load_pipeline(args.model)
embeddings = pipe.backbone.encode_prompt([args.prompt], [""], pipe.device)
window = pipe.window


def letter(latent):
    image = pipe.decode_to_unit(latent)[0].permute(1, 2, 0).cpu().numpy()
    return classify((image * 255).round().astype(np.uint8))[args.attribute][0]


settled_at, traces = [], []
with torch.no_grad():
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn((1, pipe.unet.config.in_channels, window, window), generator=generator)
        pipe.scheduler.set_timesteps(args.steps)
        x = x * pipe.scheduler.init_noise_sigma
        letters = ""
        for t in pipe.scheduler.timesteps:
            step = pipe.scheduler.step(pipe.backbone.guided_prediction(x, t, embeddings, args.guidance_scale), t, x)
            letters += letter(step.pred_original_sample)
            x = step.prev_sample
        final = letter(x)
        changed = [i for i, c in enumerate(letters) if c != final]
        settled_at.append(changed[-1] + 1 if changed else 0)
        traces.append(letters + " -> " + final)
print("\n".join(traces))
print(json.dumps({"model": args.model, "prompt": args.prompt, "attribute": args.attribute, "steps": args.steps,
                  "mean_settling_step": float(np.mean(settled_at)),
                  "settled_in_step_0": float(np.mean([s == 0 for s in settled_at])),
                  "settling_steps": settled_at}))
