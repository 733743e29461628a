"""SyncFluxPipeline: SyncDiffusion panoramas with FLUX.1 (dev and schnell).

The joint diffusion is SyncDiffusionPipeline's, unchanged; the FLUX backbone (backbones/flux.py,
backbones/flow.py) gives it the CLIP and T5 conditioning, each view packed as its own image with
its own position ids, the distilled guidance (dev) or none (schnell), x̂₀ = x − σ·v̂ and the Euler
step of the model's flow-matching scheduler, dynamically shifted for one view's size. The window
is a parameter: by default 1024 pixels, FluxPipeline's image size."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline

from .backbones.flow import check_max_sequence_length
from .backbones.flux import T5_TOKENS, FluxBackbone
from .pipeline import SyncDiffusionPipeline

DEFAULT_FLUX_MODEL = "black-forest-labs/FLUX.1-schnell"
DEFAULT_FLUX_GUIDANCE = 3.5  # diffusers' FluxPipeline's default (dev's distilled guidance; schnell ignores it)


def check_true_cfg_scale(true_cfg_scale) -> None:
    if isinstance(true_cfg_scale, bool) or not isinstance(true_cfg_scale, (int, float)) or \
            not math.isfinite(true_cfg_scale) or true_cfg_scale < 0:
        raise ValueError(f"true_cfg_scale must be a finite number, 0 or more, got {true_cfg_scale!r}.")


class SyncFluxPipeline(SyncDiffusionPipeline):
    """SyncDiffusion panoramas with a FLUX.1 model.

    Components as in diffusers' FluxPipeline: scheduler (its FlowMatchEulerDiscreteScheduler,
    kept), vae, text_encoder (CLIP), tokenizer, text_encoder_2 (T5), tokenizer_2, transformer.
    `from_pretrained` (black-forest-labs/FLUX.1-schnell or -dev, a folder), `from_single_file` and
    `.to()` are diffusers'.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor"]
    backbone_class = FluxBackbone

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None):
        DiffusionPipeline.__init__(self)  # not SyncDiffusionPipeline's: other components
        # image_encoder and feature_extractor (FLUX's IP adapter) are taken so that a model folder
        # that names them loads; panosync does not use them
        self.register_modules(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.set_up(vae, text_encoder, text_encoder_2, transformer)

    @torch.no_grad()
    def __call__(self, prompt: str, *, true_cfg_scale: float = 1.0, max_sequence_length: int = T5_TOKENS,
                 callback_on_step_end: Callable[[Any, int, Any, dict], dict | None] | None = None,
                 return_dict: bool = True, **parameters):
        """Generate one panorama; `parameters` are SyncDiffusionPipeline's (sizes in pixels; the
        default canvas is one window high and four wide: 1024 x 4096; `window` chooses another view
        size, a multiple of 2 latent pixels).

        `guidance_scale` is FLUX.1-dev's distilled guidance, fed to the transformer (default 3.5,
        diffusers' FluxPipeline's; schnell has none and ignores it). `true_cfg_scale` > 1 adds real
        classifier-free guidance with `negative_prompt` ("" by default), a second branch, as
        FluxPipeline's option. `max_sequence_length`: T5's tokens (diffusers' 512).
        """
        check_true_cfg_scale(true_cfg_scale)
        check_max_sequence_length(max_sequence_length)
        parameters.setdefault("guidance_scale", DEFAULT_FLUX_GUIDANCE)
        request = self.make_request(prompt=prompt, **parameters)
        options = dict(max_sequence_length=max_sequence_length, true_cfg_scale=true_cfg_scale)
        return self.generate(dataclasses.replace(request, prompt_options=options), callback_on_step_end, return_dict)
