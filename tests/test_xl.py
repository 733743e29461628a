"""SyncDiffusion on SDXL: synced panoramas (2-D and loop-closed) in every precision, the fast modes,
and an fp16-safe VAE in place of the model's; tiny random-weight SDXL models, offline."""

import numpy as np
import pytest
import torch

from panosync.tiny import tiny_random_xl_components
from panosync.xl import SyncDiffusionXLPipeline

from in_precision import in_precision

# 32-pixel windows (16 latents, VAE factor 2), narrow networks: float16 convolutions are slow on a CPU.
NARROW = dict(window=16, vae_factor=2, unet_channels=(16, 32), vae_channels=8, text_width=16)
CANVASES = {
    "2-D": dict(width=48, height=48, stride=8),  # 2 x 2 views
    "loop-closed": dict(width=64, height=32, stride=8, loop_closure=True),  # 4 views round the circle
}


def xl_pipe(precision="float32"):
    return in_precision(SyncDiffusionXLPipeline(**tiny_random_xl_components(**NARROW)), precision)


@pytest.fixture(scope="module", params=["float32", "float16", "bfloat16"])
def precision_pipe(request):
    return request.param, xl_pipe(request.param)


@pytest.mark.slow
@pytest.mark.parametrize("canvas", CANVASES)
def test_a_synced_xl_panorama_in_each_precision(precision_pipe, canvas):
    name, pipe = precision_pipe
    kwargs = dict(**CANVASES[canvas], num_inference_steps=2, seed=5)
    synced = pipe("a land", output_type="np", **kwargs).images[0]
    unsynced = pipe("a land", output_type="np", sync_weight=0, **kwargs).images[0]
    assert synced.shape == (kwargs["height"], kwargs["width"], 3)
    assert np.isfinite(synced).all() and synced.std() > 0.02, name
    assert np.abs(synced - unsynced).max() > 1e-3, "sync changed nothing"


@pytest.fixture(scope="module")
def full():
    return xl_pipe()


@pytest.mark.slow
@pytest.mark.parametrize("fast", [dict(fast_modes=["reuse_noise"]), dict(fast_modes=["no_unet_backward"]),
                                  dict(fast_modes=["dpm_solver"]), dict(sync_image_scale=0.5)],
                         ids=["reuse_noise", "no_unet_backward", "dpm_solver", "sync_image_scale"])
def test_fast_modes_on_xl(full, fast):
    kwargs = dict(**CANVASES["2-D"], num_inference_steps=3, seed=2, output_type="latent")
    faithful = full("a land", **kwargs).images
    approximate = full("a land", **kwargs, **fast).images
    assert torch.isfinite(approximate).all()
    assert 0 < (approximate - faithful).abs().max() < faithful.abs().max()


def test_the_default_canvas_is_one_window_high_four_wide(full):
    image = full("a land", num_inference_steps=1, sync_weight=0, output_type="np").images[0]
    assert image.shape == (32, 128, 3)
