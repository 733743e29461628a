"""SyncDiffusionXLPipeline: SyncDiffusion panoramas with Stable Diffusion XL.

The joint diffusion is SyncDiffusionPipeline's, unchanged; the SDXL backbone
(backbones/sdxl.py) gives it SDXL's prompt conditioning (two text encoders, the pooled embedding,
each view's size conditioning) and its UNet's added inputs. Its VAE overflows in float16: it
decodes in float32 where its config says `force_upcast` (backbones/base.py), or load an
fp16-safe VAE in its place (`vae=AutoencoderKL.from_pretrained(...)`, the command's --vae).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline

from .backbones import StableDiffusionXLBackbone
from .pipeline import SyncDiffusionPipeline

# SDXL base's window is 128 latents (1024 pixels): the default canvas is one window high, four wide.
DEFAULT_XL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
DEFAULT_XL_GUIDANCE = 5.0  # diffusers' StableDiffusionXLPipeline's default


class SyncDiffusionXLPipeline(SyncDiffusionPipeline):
    """SyncDiffusion panoramas with an SDXL model.

    Components as in diffusers' StableDiffusionXLPipeline: vae, text_encoder, text_encoder_2,
    tokenizer, tokenizer_2, unet, scheduler, and its config's force_zeros_for_empty_prompt.
    `from_pretrained` (stabilityai/stable-diffusion-xl-base-1.0, a folder), `from_single_file`
    and `.to()` are diffusers'; loading switches the scheduler to DDIM unless one is passed.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    backbone_class = StableDiffusionXLBackbone

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 force_zeros_for_empty_prompt: bool = True):
        DiffusionPipeline.__init__(self)  # not SyncDiffusionPipeline's: other components
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.set_up(vae, text_encoder, text_encoder_2, unet)

    @torch.no_grad()
    def __call__(self, prompt: str, *, original_size: tuple[int, int] | None = None,
                 crops_coords_top_left: tuple[int, int] = (0, 0), target_size: tuple[int, int] | None = None,
                 callback_on_step_end: Callable[[Any, int, Any, dict], dict | None] | None = None,
                 return_dict: bool = True, **parameters):
        """Generate one panorama; `parameters` are SyncDiffusionPipeline's (sizes in pixels; the
        default canvas is one window high and four wide: 1024 x 4096 for SDXL base).

        SDXL's size conditioning, the same for every view: `original_size` and `target_size`
        (height, width) default to the window in pixels, `crops_coords_top_left` to (0, 0) — what
        diffusers gives one image of the window's size, so that each view is conditioned as the
        model's own image. Give other values as in diffusers' StableDiffusionXLPipeline.

        `guidance_scale` defaults to 5, diffusers' StableDiffusionXLPipeline's (the paper's 7.5 was
        for Stable Diffusion 2); the command and the server take the settings table's defaults.
        """
        parameters.setdefault("guidance_scale", DEFAULT_XL_GUIDANCE)
        request = self.make_request(prompt=prompt, **parameters)
        options = dict(original_size=original_size, crops_coords_top_left=crops_coords_top_left,
                       target_size=target_size)
        return self.generate(dataclasses.replace(request, prompt_options=options), callback_on_step_end, return_dict)
