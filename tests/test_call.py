"""diffusers' call parameters on every family's pipeline: prompt_embeds made by the model's own text
encoders give the prompt's panorama; a list of prompts with num_images_per_prompt=2 gives one
panorama each, each synced to its own anchor (equal to that panorama made alone); output_type
"pt"; callback_on_step_end_tensor_inputs; enable_vae_tiling. Tiny random-weight models (tiny.py)."""

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from panosync.flux import SyncDiffusionFluxPipeline
from panosync.pipeline import SyncDiffusionPipeline
from panosync.sd3 import SyncDiffusion3Pipeline
from panosync.tiny import (tiny_random_components, tiny_random_flux_components, tiny_random_sd3_components,
                           tiny_random_xl_components)
from panosync.xl import SyncDiffusionXLPipeline

FAMILIES = ("sd", "sdxl", "sd3", "flux")
# (our pipeline, the family's diffusers pipeline, its components); windows of 32 pixels (16 latents)
KINDS = {
    "sd": (SyncDiffusionPipeline, StableDiffusionPipeline, lambda: tiny_random_components(window=16, vae_factor=2)),
    "sdxl": (SyncDiffusionXLPipeline, StableDiffusionXLPipeline, lambda: tiny_random_xl_components()),
    "sd3": (SyncDiffusion3Pipeline, StableDiffusion3Pipeline, lambda: tiny_random_sd3_components()),
    "flux": (SyncDiffusionFluxPipeline, FluxPipeline, lambda: tiny_random_flux_components()),
}
SYNCED = dict(num_inference_steps=2, sync_weight=20.0, seed=0, output_type="np")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    ours, theirs, components = KINDS[request.param]
    made = components()
    # float64, so that batching panoramas together changes their results by far less than any
    # mix-up between them would (float32's rounding, amplified by the sync gradient, reaches 4e-3)
    pipe = ours(**made).to(torch.float64)
    pipe.set_progress_bar_config(disable=True)
    required, _ = theirs._get_signature_keys(theirs)
    options = dict(requires_safety_checker=False) if request.param == "sd" else {}
    return request.param, pipe, theirs(**{name: getattr(pipe, name, None) for name in required}, **options)


WINDOW = 32  # pixels: 16 latents at VAE factor 2, every tiny model's


def canvas(pipe):
    """Two 32-pixel windows wide, one high: 3 views half a window apart (the transformers are given
    the window; a UNet's is its native size)."""
    assert pipe.vae_scale_factor == 2
    unet = pipe.family in ("Stable Diffusion 1.x/2.x", "Stable Diffusion XL")
    chosen = {} if unet else dict(window=WINDOW, max_sequence_length=32)  # the tiny T5's 32 tokens
    return dict(width=2 * WINDOW, height=WINDOW, stride=WINDOW // 4, **chosen)


def embeddings_from_diffusers(name, theirs, prompt):
    """The prompt's and the empty negative prompt's embeddings, as the family's diffusers pipeline
    encodes them with the model's own text encoders."""
    if name == "sd":
        positive, negative = theirs.encode_prompt(prompt, "cpu", 1, True, "")
        return dict(prompt_embeds=positive, negative_prompt_embeds=negative)
    if name == "sdxl":
        positive, negative, pooled, negative_pooled = theirs.encode_prompt(prompt, device="cpu",
                                                                           negative_prompt="")
        return dict(prompt_embeds=positive, pooled_prompt_embeds=pooled)  # an empty negative prompt: zeros
    if name == "sd3":
        positive, negative, pooled, negative_pooled = theirs.encode_prompt(prompt, None, None, device="cpu",
                                                                           negative_prompt="", max_sequence_length=32)
        return dict(prompt_embeds=positive, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                    negative_pooled_prompt_embeds=negative_pooled)
    positive, pooled, _ = theirs.encode_prompt(prompt, None, device="cpu", max_sequence_length=32)
    return dict(prompt_embeds=positive, pooled_prompt_embeds=pooled)


@pytest.mark.slow
def test_prompt_embeds_from_the_models_text_encoders_give_the_prompts_panorama(family):
    name, pipe, theirs = family
    from_text = pipe("a land", **canvas(pipe), **SYNCED).images
    from_embeddings = pipe(**embeddings_from_diffusers(name, theirs, "a land"), **canvas(pipe), **SYNCED).images
    other_prompt = pipe("b sea", **canvas(pipe), **SYNCED).images
    np.testing.assert_allclose(from_embeddings, from_text, rtol=0, atol=1e-9)
    assert np.abs(other_prompt - from_text).max() > 1e-3  # the prompt matters: the check above can fail


@pytest.mark.slow
def test_a_list_of_prompts_gives_one_synced_panorama_per_prompt_and_image(family):
    name, pipe, _ = family
    prompts = ["a land", "b sea"]
    size = canvas(pipe)
    shape = (4, pipe.backbone.latent_channels, size["height"] // 2, size["width"] // 2)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    settings = {**SYNCED, "seed": None}
    together = pipe(prompts, num_images_per_prompt=2, latents=noise, **size, **settings).images
    assert together.shape[0] == 4
    for k in range(4):  # prompt k // 2, its image k % 2
        alone = pipe(prompts[k // 2], latents=noise[k:k + 1], **size, **settings).images
        np.testing.assert_allclose(together[k:k + 1], alone, rtol=0, atol=1e-9)
    assert np.abs(together[0] - together[1]).max() > 1e-2  # two images of one prompt differ


def test_output_type_pt_is_the_np_output_as_a_tensor(family):
    _, pipe, _ = family
    as_np = pipe("a land", **canvas(pipe), **{**SYNCED, "sync_weight": 0.0}).images
    as_pt = pipe("a land", **canvas(pipe), **{**SYNCED, "sync_weight": 0.0, "output_type": "pt"}).images
    assert isinstance(as_pt, torch.Tensor) and as_pt.shape == (1, 3, *as_np.shape[1:3])
    np.testing.assert_allclose(as_pt.permute(0, 2, 3, 1).numpy(), as_np, rtol=0, atol=1e-6)


def test_callback_gets_the_tensors_it_names_and_may_replace_the_latents(small_pipe):
    seen = []

    def callback(pipe, step, timestep, values):
        seen.append(sorted(values))
        return {"latents": torch.zeros_like(values["latents"])} if step == 1 else None

    images = small_pipe("a", width=32, height=16, stride=4, num_inference_steps=2, seed=0, output_type="latent",
                        callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"]).images
    assert seen == [["first_step", "latents", "sync_weight"]] * 2
    assert torch.count_nonzero(images) == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs may name latents"):
        small_pipe("a", width=32, height=16, callback_on_step_end_tensor_inputs=["prompt_embeds"])


def test_enable_vae_tiling_decodes_in_tiles(sync_pipe):
    call = dict(width=96, height=32, stride=8, num_inference_steps=2, seed=4, sync_weight=0.0, output_type="np")
    whole = sync_pipe("a land", tiled_decode=False, **call).images
    tiled = sync_pipe("a land", tiled_decode=True, **call).images
    assert np.abs(whole - tiled).max() > 1e-4  # the two decodes differ, so the test below can tell them apart
    try:
        sync_pipe.enable_vae_tiling()
        np.testing.assert_array_equal(sync_pipe("a land", **call).images, tiled)
        sync_pipe.disable_vae_tiling()
        np.testing.assert_array_equal(sync_pipe("a land", **call).images, whole)
    finally:
        sync_pipe.vae_tiling = None


def test_prompt_and_prompt_embeds_together_are_refused(small_pipe):
    embeds = torch.zeros(1, 77, small_pipe.text_encoder.config.hidden_size)
    with pytest.raises(ValueError, match="Give prompt or prompt_embeds, not both"):
        small_pipe("a", prompt_embeds=embeds, width=32, height=16)
    with pytest.raises(ValueError, match="Give prompt"):
        small_pipe(width=32, height=16)
