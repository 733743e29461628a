"""Each backbone pinned to its family's own diffusers pipeline: a canvas of exactly one window with
sync off is one image of the model, so it must be the model's own image for the same initial noise
(docs/algorithm.md, "Other backbones"). Tiny random-weight models built from configs, offline."""

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from panosync.control import ControlSyncPipeline, ControlSyncXLPipeline, random_controlnet_like
from panosync.pipeline import SyncDiffusionPipeline
from panosync.tiny import tiny_random_components, tiny_random_xl_components
from panosync.xl import SyncDiffusionXLPipeline

# 32-pixel windows (16 latents, VAE factor 2); three DDIM steps.
WINDOW = dict(window=16, vae_factor=2)
STEPS = 3
# Rounding only: the same arithmetic, in another order where diffusers batches differently.
ROUNDING = 1e-5


def one_window_noise(pipe, seed=0):
    side = pipe.window
    return torch.randn((1, 4, side, side), generator=torch.Generator().manual_seed(seed))


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def both(ours, theirs, noise, prompt="a land", ours_kwargs=None, theirs_kwargs=None):
    """Our one-window panorama and diffusers' image, as final latents and as decoded images."""
    side = ours.window * ours.vae_scale_factor
    canvas = dict(width=side, height=side, num_inference_steps=STEPS, latents=noise)
    results = {}
    for output_type in ("latent", "np"):
        mine = ours(prompt, sync_weight=20, output_type=output_type, **canvas, **(ours_kwargs or {})).images
        their = theirs(prompt, output_type=output_type, **canvas, **(theirs_kwargs or {})).images
        results[output_type] = (torch.as_tensor(np.asarray(mine)), torch.as_tensor(np.asarray(their)))
    return results


def assert_same_image(results):
    for output_type, (mine, their) in results.items():
        assert mine.shape == their.shape, output_type
        difference = (mine.float() - their.float()).abs().max().item()
        print(f"{output_type}: max abs difference {difference:.3g}")
        assert difference <= ROUNDING, f"{output_type}: {difference}"


# --- Stable Diffusion 1 / 2 ------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_one_window_is_stable_diffusion_pipelines_image(prediction_type):
    components = tiny_random_components(**WINDOW)
    components["scheduler"] = DDIMScheduler.from_config(components["scheduler"].config,
                                                        prediction_type=prediction_type)
    ours = quiet(SyncDiffusionPipeline(**components))
    theirs = quiet(StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                           requires_safety_checker=False))
    assert_same_image(both(ours, theirs, one_window_noise(ours, seed=1)))


# --- ControlSync on Stable Diffusion 1 / 2 -----------------------------------------------------------


def test_one_window_controlsync_is_stable_diffusion_controlnet_pipelines_image():
    components = tiny_random_components(**WINDOW)
    nets = [random_controlnet_like(components["unet"], 2, seed=seed) for seed in (1, 2)]
    ours = quiet(ControlSyncPipeline(**components, controlnet=nets))
    theirs = quiet(StableDiffusionControlNetPipeline(**components, controlnet=MultiControlNetModel(nets),
                                                     safety_checker=None, feature_extractor=None,
                                                     requires_safety_checker=False))
    side = ours.window * ours.vae_scale_factor
    generator = torch.Generator().manual_seed(4)
    conditions = [torch.rand((1, 3, side, side), generator=generator) for _ in nets]
    scales = [0.7, 1.3]
    noise = one_window_noise(ours, seed=2)
    results = both(ours, theirs, noise, ours_kwargs=dict(image=conditions, controlnet_conditioning_scale=scales),
                   theirs_kwargs=dict(image=conditions, controlnet_conditioning_scale=scales))
    assert_same_image(results)
    # the ControlNets matter: without them the image is another
    plain = ours("a land", image=conditions, controlnet_conditioning_scale=[0, 0], width=side, height=side,
                 num_inference_steps=STEPS, latents=noise, output_type="latent").images
    assert (plain - results["latent"][0]).abs().max() > 1e-2


# --- Stable Diffusion XL -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xl_components():
    return tiny_random_xl_components(**WINDOW)


def test_one_window_is_stable_diffusion_xl_pipelines_image(xl_components):
    ours = quiet(SyncDiffusionXLPipeline(**xl_components))
    theirs = quiet(StableDiffusionXLPipeline(**xl_components, add_watermarker=False))
    assert_same_image(both(ours, theirs, one_window_noise(ours, seed=3)))


def test_xl_size_conditioning_and_negative_prompt_are_diffusers(xl_components):
    """Other size and crop conditioning, and a negative prompt, as diffusers takes them."""
    ours = quiet(SyncDiffusionXLPipeline(**xl_components))
    theirs = quiet(StableDiffusionXLPipeline(**xl_components, add_watermarker=False))
    sizes = dict(original_size=(64, 96), crops_coords_top_left=(8, 4), target_size=(48, 48))
    results = both(ours, theirs, one_window_noise(ours, seed=5),
                   ours_kwargs=dict(negative_prompt="blurry", **sizes),
                   theirs_kwargs=dict(negative_prompt="blurry", **sizes))
    assert_same_image(results)
    native = ours("a land", width=32, height=32, num_inference_steps=STEPS, latents=one_window_noise(ours, seed=5),
                  negative_prompt="blurry", output_type="latent").images
    assert (native - results["latent"][0]).abs().max() > 1e-3  # the conditioning reaches the UNet


# --- ControlSync on SDXL ---------------------------------------------------------------------------


def test_one_window_controlsync_xl_is_stable_diffusion_xl_controlnet_pipelines_image(xl_components):
    nets = [random_controlnet_like(xl_components["unet"], 2, seed=seed) for seed in (1, 2)]
    ours = quiet(ControlSyncXLPipeline(**xl_components, controlnet=nets))
    theirs = quiet(StableDiffusionXLControlNetPipeline(**xl_components, controlnet=MultiControlNetModel(nets),
                                                       add_watermarker=False))
    side = ours.window * ours.vae_scale_factor
    generator = torch.Generator().manual_seed(6)
    conditions = [torch.rand((1, 3, side, side), generator=generator) for _ in nets]
    inputs = dict(image=conditions, controlnet_conditioning_scale=[0.7, 1.3], guidance_scale=5.0)
    noise = one_window_noise(ours, seed=7)
    results = both(ours, theirs, noise, ours_kwargs=inputs, theirs_kwargs=inputs)
    assert_same_image(results)
    plain = ours("a land", **{**inputs, "controlnet_conditioning_scale": [0, 0]}, width=side, height=side,
                 num_inference_steps=STEPS, latents=noise, output_type="latent").images
    assert (plain - results["latent"][0]).abs().max() > 1e-2  # the ControlNets matter


def test_synced_controlsync_xl_panorama(xl_components):
    nets = [random_controlnet_like(xl_components["unet"], 2, seed=1)]
    pipe = quiet(ControlSyncXLPipeline(**xl_components, controlnet=nets[0]))
    condition = torch.rand((1, 3, 32, 64), generator=torch.Generator().manual_seed(8))
    image = pipe("a land", image=condition, stride=8, num_inference_steps=2, sync_threshold=2, seed=1,
                 output_type="np").images[0]
    assert image.shape == (32, 64, 3) and np.isfinite(image).all()
