"""ControlSync on FLUX.1: one window with sync off is diffusers' FluxControlNetPipeline's image (one
and several ControlNets, with true CFG too), and a synced loop-closed panorama follows its
conditions; XLabs' and union ControlNets are refused in one sentence. Tiny random-weight models,
offline."""

import numpy as np
import pytest
import torch
from diffusers import FluxControlNetModel, FluxControlNetPipeline
from diffusers.models.controlnets.controlnet_flux import FluxMultiControlNetModel


from conftest import random_condition, with_a_point_posterior
from panosync.backbones.flux import pack
from panosync.control_flux import ControlSyncFluxPipeline, random_flux_controlnet_like
from panosync.tiny import tiny_random_flux_components

ROUNDING = 1e-5


def components_with_a_point_posterior():
    return with_a_point_posterior(tiny_random_flux_components())


@pytest.mark.parametrize("case", ["one", "two", "true-cfg"])
def test_one_window_controlsync_flux_is_flux_controlnet_pipelines_image(case):
    count = 1 if case == "one" else 2
    components = components_with_a_point_posterior()
    nets = [random_flux_controlnet_like(components["transformer"], seed=seed) for seed in range(1, count + 1)]
    ours = ControlSyncFluxPipeline(**components, controlnet=nets if count > 1 else nets[0])
    theirs = FluxControlNetPipeline(**components, controlnet=FluxMultiControlNetModel(nets) if count > 1 else nets[0])
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    conditions = [random_condition(seed) for seed in range(count)]
    images, scales = (conditions, [0.7, 1.3]) if count > 1 else (conditions[0], 0.8)
    options = dict(true_cfg_scale=2.0, negative_prompt="dull") if case == "true-cfg" else {}
    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(3))
    canvas = dict(width=32, height=32, num_inference_steps=3, guidance_scale=4.0, controlnet_conditioning_scale=scales,
                  **options)
    for output_type in ("latent", "np"):
        mine = ours("a land", images, window=32, latents=noise, sync_weight=20, output_type=output_type,
                    **canvas).images
        torch.manual_seed(0)  # diffusers samples the condition's latent: here a point, whatever the draw
        their = theirs("a land", control_image=images, latents=pack(noise), output_type=output_type, **canvas).images
        mine = pack(mine) if output_type == "latent" else mine
        difference = np.abs(np.asarray(mine, dtype=np.float32) - np.asarray(their, dtype=np.float32)).max()
        print(f"FLUX ControlNet {case}: {output_type} max abs difference {difference:.3g}")
        assert difference <= ROUNDING, (output_type, difference)
    inputs = dict(canvas, window=32, latents=noise, output_type="latent")
    controlled = ours("a land", images, **inputs).images
    plain = ours("a land", images, **{**inputs, "controlnet_conditioning_scale": [0.0] * count}).images
    assert (plain - controlled).abs().max() > 1e-3  # the ControlNets matter


def test_a_synced_loop_closed_flux_controlsync_panorama_follows_its_conditions():
    components = tiny_random_flux_components()
    nets = [random_flux_controlnet_like(components["transformer"], seed=seed) for seed in (1, 2)]
    pipe = ControlSyncFluxPipeline(**components, controlnet=nets)
    pipe.set_progress_bar_config(disable=True)
    canvas = dict(window=32, stride=8, num_inference_steps=2, seed=1, loop_closure=True, output_type="np",
                  max_sequence_length=32)
    conditions = [random_condition(1, 64, 32), random_condition(2, 64, 32)]
    synced = pipe("a land", conditions, **canvas).images[0]
    unsynced = pipe("a land", conditions, sync_weight=0, **canvas).images[0]
    other = pipe("a land", [random_condition(3, 64, 32), random_condition(2, 64, 32)], **canvas).images[0]
    assert synced.shape == (32, 64, 3) and np.isfinite(synced).all()
    assert np.abs(synced - unsynced).max() > 1e-3  # it syncs
    assert np.abs(synced - other).max() > 1e-3  # it follows the conditions


@pytest.mark.parametrize("kind, sentence", [("xlabs", "XLabs' kind"), ("union", "union ControlNet")])
def test_controlnets_panosync_does_not_run_are_one_sentence(kind, sentence):
    components = tiny_random_flux_components()
    config = dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=0, attention_head_dim=8,
                  num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=True,
                  axes_dims_rope=(2, 2, 4))
    extra = dict(conditioning_embedding_channels=16) if kind == "xlabs" else dict(num_mode=3)
    with pytest.raises(ValueError, match=sentence):
        ControlSyncFluxPipeline(**components, controlnet=FluxControlNetModel(**config, **extra))
