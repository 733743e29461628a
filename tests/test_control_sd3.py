"""ControlSync on SD3: one window with sync off is diffusers' StableDiffusion3ControlNetPipeline's
image (one and several ControlNets, InstantX's zero pooled projections and not), and a synced
panorama follows its condition. Tiny random-weight models, offline."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusion3ControlNetPipeline
from diffusers.models.controlnets.controlnet_sd3 import SD3MultiControlNetModel


from conftest import random_condition, with_a_point_posterior
from panosync.control_sd3 import ControlSync3Pipeline, random_sd3_controlnet_like
from panosync.tiny import tiny_random_sd3_components

ROUNDING = 1e-5


def components_with_a_point_posterior():
    return with_a_point_posterior(tiny_random_sd3_components())


@pytest.mark.parametrize("zero_pooled", [True, False], ids=["instantx", "pooled"])
@pytest.mark.parametrize("count", [1, 2])
def test_one_window_controlsync3_is_sd3_controlnet_pipelines_image(count, zero_pooled):
    components = components_with_a_point_posterior()
    nets = [random_sd3_controlnet_like(components["transformer"], seed=seed,
                                       force_zeros_for_pooled_projection=zero_pooled) for seed in range(1, count + 1)]
    ours = ControlSync3Pipeline(**components, controlnet=nets if count > 1 else nets[0])
    theirs = StableDiffusion3ControlNetPipeline(**components,
                                                controlnet=SD3MultiControlNetModel(nets) if count > 1 else nets[0])
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    conditions = [random_condition(seed) for seed in range(count)]
    scales = [0.7, 1.3][:count]
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(3))
    canvas = dict(width=32, height=32, num_inference_steps=3, guidance_scale=5.0, negative_prompt="blurry")
    for output_type in ("latent", "np"):
        mine = ours("a land", conditions if count > 1 else conditions[0], window=32, latents=noise,
                    controlnet_conditioning_scale=scales if count > 1 else scales[0], sync_weight=20,
                    output_type=output_type, **canvas).images
        torch.manual_seed(0)  # diffusers samples the condition's latent: here a point, whatever the draw
        their = theirs("a land", control_image=conditions if count > 1 else conditions[0], latents=noise,
                       controlnet_conditioning_scale=scales if count > 1 else scales[0], output_type=output_type,
                       **canvas).images
        difference = np.abs(np.asarray(mine, dtype=np.float32) - np.asarray(their, dtype=np.float32)).max()
        print(f"{count} ControlNet(s), zero pooled {zero_pooled}: {output_type} max abs difference {difference:.3g}")
        assert difference <= ROUNDING, (output_type, difference)
    # the ControlNets matter: at scale 0 the image is another
    inputs = dict(window=32, latents=noise, output_type="latent", **canvas)
    controlled = ours("a land", conditions, controlnet_conditioning_scale=scales, **inputs).images
    plain = ours("a land", conditions, controlnet_conditioning_scale=[0.0] * count, **inputs).images
    assert (plain - controlled).abs().max() > 1e-3


@pytest.mark.slow
def test_a_synced_loop_closed_sd3_controlsync_panorama_follows_its_condition():
    components = tiny_random_sd3_components()
    nets = [random_sd3_controlnet_like(components["transformer"], seed=seed) for seed in (1, 2)]
    pipe = ControlSync3Pipeline(**components, controlnet=nets)
    pipe.set_progress_bar_config(disable=True)
    canvas = dict(window=32, stride=8, num_inference_steps=2, seed=1, loop_closure=True, output_type="np")
    conditions = [random_condition(1, 64, 32), random_condition(2, 64, 32)]
    synced = pipe("a land", conditions, **canvas).images[0]
    unsynced = pipe("a land", conditions, sync_weight=0, **canvas).images[0]
    other = pipe("a land", [random_condition(3, 64, 32), random_condition(2, 64, 32)], **canvas).images[0]
    assert synced.shape == (32, 64, 3) and np.isfinite(synced).all()
    assert np.abs(synced - unsynced).max() > 1e-3  # it syncs
    assert np.abs(synced - other).max() > 1e-3  # it follows the conditions
