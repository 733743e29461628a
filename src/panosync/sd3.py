"""SyncDiffusion3Pipeline: SyncDiffusion panoramas with Stable Diffusion 3 and 3.5.

The joint diffusion is SyncDiffusionPipeline's, unchanged; the SD3 backbone (backbones/sd3.py,
backbones/flow.py) gives it the three text encoders' conditioning, the transformer's velocity with
classifier-free guidance, x̂₀ = x − σ·v̂ and the Euler step of the model's own flow-matching
scheduler. The window is a parameter: by default the transformer's `sample_size` (1024 pixels for
SD3.5 medium)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline

from .backbones.flow import check_max_sequence_length
from .backbones.sd3 import T5_TOKENS, StableDiffusion3Backbone
from .pipeline import SyncDiffusionPipeline

DEFAULT_SD3_MODEL = "stabilityai/stable-diffusion-3.5-medium"
DEFAULT_SD3_GUIDANCE = 7.0  # diffusers' StableDiffusion3Pipeline's default


class SyncDiffusion3Pipeline(SyncDiffusionPipeline):
    """SyncDiffusion panoramas with a Stable Diffusion 3 / 3.5 model.

    Components as in diffusers' StableDiffusion3Pipeline: transformer, scheduler (its
    FlowMatchEulerDiscreteScheduler, kept), vae, text_encoder, tokenizer, text_encoder_2,
    tokenizer_2, text_encoder_3 and tokenizer_3 (T5; both may be None, as diffusers allows: zeros
    in its place). `from_pretrained` (stabilityai/stable-diffusion-3.5-medium, a folder),
    `from_single_file` and `.to()` are diffusers'.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->transformer->vae"
    _optional_components = ["text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor"]
    backbone_class = StableDiffusion3Backbone

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3=None, tokenizer_3=None, image_encoder=None, feature_extractor=None):
        DiffusionPipeline.__init__(self)  # not SyncDiffusionPipeline's: other components
        # image_encoder and feature_extractor (SD3's IP adapter) are taken so that a model folder that
        # names them loads; panosync does not use them
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                              text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3, image_encoder=image_encoder,
                              feature_extractor=feature_extractor)
        self.set_up(*(model for model in (vae, text_encoder, text_encoder_2, text_encoder_3, transformer)
                      if model is not None))

    @torch.no_grad()
    def __call__(self, prompt: str, *, max_sequence_length: int = T5_TOKENS,
                 callback_on_step_end: Callable[[Any, int, Any, dict], dict | None] | None = None,
                 return_dict: bool = True, **parameters):
        """Generate one panorama; `parameters` are SyncDiffusionPipeline's (sizes in pixels; the
        default canvas is one window high and four wide: 1024 x 4096 for SD3.5 medium; `window`
        chooses another view size, a multiple of the patch in pixels).

        `guidance_scale` defaults to 7, diffusers' StableDiffusion3Pipeline's; at 1 or less the
        negative branch is not run, as there. `max_sequence_length`: T5's tokens (diffusers' 256).
        """
        check_max_sequence_length(max_sequence_length)
        parameters.setdefault("guidance_scale", DEFAULT_SD3_GUIDANCE)
        request = self.make_request(prompt=prompt, **parameters)
        options = dict(max_sequence_length=max_sequence_length)
        return self.generate(dataclasses.replace(request, prompt_options=options), callback_on_step_end, return_dict)
