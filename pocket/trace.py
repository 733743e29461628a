"""When does each window of a pocket panorama choose its time of day? After every denoising step,
classify each view's foreseen image (the decoded x̂₀ of its next noise prediction) and print one
letter per view (d day, s sunset, n night).

    python -m pocket.trace --seed 0 --sync-weight 0
    python -m pocket.trace --seed 0 --sync-weight 40 --sync-decay-rate 0.98 --fast no_unet_backward
"""

import argparse

import numpy as np
import torch

from panosync.models import load_pipeline
from panosync.views import crop, views_for_canvas

from .classify import classify_time
from .quality import crop_times

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default="pocket")
parser.add_argument("--prompt", default="snowy mountains")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--windows", type=int, default=8)
parser.add_argument("--steps", type=int, default=30)
parser.add_argument("--stride", type=int, default=12)
parser.add_argument("--guidance-scale", type=float, default=7.5)
parser.add_argument("--sync-weight", type=float, default=20.0)
parser.add_argument("--sync-decay-rate", type=float, default=0.95)
parser.add_argument("--fast", action="append", default=[])
args = parser.parse_args()

pipe = load_pipeline(args.model)
pipe.set_progress_bar_config(disable=True)
size = pipe.window * pipe.vae_scale_factor
call = dict(width=args.windows * size, height=size, guidance_scale=args.guidance_scale, sync_weight=args.sync_weight,
            sync_decay_rate=args.sync_decay_rate, num_inference_steps=args.steps, stride=args.stride, seed=args.seed,
            view_batch_size=32, output_type="np", fast_modes=args.fast)
views = views_for_canvas(1, args.windows * pipe.window, pipe.window, args.stride)
embeddings = pipe.backbone.encode_prompt([args.prompt], [""], pipe.device)
print(f"{len(views)} views, anchor {len(views) // 2}")


@torch.no_grad()
def foreseen_times(pipe, step, t, values):
    timesteps = pipe.scheduler.timesteps
    if step + 1 < len(timesteps):
        t_next = timesteps[step + 1]
        alpha = pipe.scheduler.alphas_cumprod[t_next]
        letters = ""
        for view in views:
            x = crop(values["latents"], view)
            noise = pipe.backbone.guided_prediction(x, t_next, embeddings, args.guidance_scale, [view])
            original = (x - (1 - alpha).sqrt() * noise) / alpha.sqrt()
            image = pipe.decode_to_unit(original)[0].permute(1, 2, 0).cpu().numpy()
            letters += classify_time((image * 255).round().astype(np.uint8))[0]
        print(f"after step {step:2d} (sync w {values['sync_weight']:.3g}): {letters}", flush=True)


image = pipe(args.prompt, **call, callback_on_step_end=foreseen_times).images[0]
image = (image * 255).round().astype(np.uint8)
print("final crops:", crop_times(image, size))
