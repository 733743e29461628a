"""IP-Adapter image prompts, as diffusers gives them, on Stable Diffusion 1/2, SDXL, SD3 and FLUX.1:
`load_ip_adapter` (diffusers' IPAdapterMixin, SD3IPAdapterMixin, FluxIPAdapterMixin) adds the adapter's projection
and attention layers to the denoiser and loads its image encoder; a call's `ip_adapter_image` (or
`ip_adapter_image_embeds`) is encoded once, by diffusers' own `encode_image` and
`prepare_ip_adapter_image_embeds`, and the same image embeddings condition every view. A negative
branch gets a blank image's embeddings, as in diffusers (FLUX's only with true CFG, where a
`negative_ip_adapter_image` may replace it)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline
from diffusers.loaders import FluxIPAdapterMixin, IPAdapterMixin, SD3IPAdapterMixin

from .errors import SettingError


class ImagePromptChecks:
    """The checks every family's image prompt shares."""

    def has_ip_adapter(self) -> bool:
        """Whether an IP-Adapter is loaded: its image projection in the denoiser."""
        return getattr(self.backbone.network, "encoder_hid_proj", None) is not None

    def check_image_prompt(self, ip_adapter_image, ip_adapter_image_embeds, prefix: str = "") -> None:
        """One sentence where an image prompt (or, with `prefix` "negative_", a negative one) cannot
        be used as given, before any model work."""
        image, embeds = f"{prefix}ip_adapter_image", f"{prefix}ip_adapter_image_embeds"
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise SettingError(image, f"Give {image} or {embeds}, not both.")
        if not self.has_ip_adapter():
            raise SettingError(image, f"{image} needs an IP-Adapter: load one first (pipe.load_ip_adapter, or "
                                      f"--ip-adapter on the command).")
        if ip_adapter_image is not None and self.image_encoder is None:
            raise SettingError(image, f"This IP-Adapter was loaded without its image encoder: load it with its "
                                      f"image encoder, or give {embeds}.")


class ImagePromptMixin(ImagePromptChecks, IPAdapterMixin):
    """diffusers' IPAdapterMixin, with the image encoding of its Stable Diffusion pipelines (the same
    functions: they read only image_encoder, feature_extractor and the UNet's encoder_hid_proj)."""

    encode_image = StableDiffusionPipeline.encode_image
    prepare_ip_adapter_image_embeds = StableDiffusionPipeline.prepare_ip_adapter_image_embeds

    def with_image_prompt(self, conditioning, ip_adapter_image, ip_adapter_image_embeds, device, panoramas: int):
        """The prompt's `conditioning` with the image prompt's embeddings for `panoramas` panoramas
        (negative rows first, as the prompt's); unchanged without an image prompt."""
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return conditioning
        embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device, panoramas,
                                                      do_classifier_free_guidance=True)
        return dataclasses.replace(conditioning, image_embeds=embeds)


class FluxImagePromptMixin(ImagePromptChecks, FluxIPAdapterMixin):
    """diffusers' FluxIPAdapterMixin, with FluxPipeline's image encoding."""

    encode_image = FluxPipeline.encode_image
    prepare_ip_adapter_image_embeds = FluxPipeline.prepare_ip_adapter_image_embeds

    def with_image_prompt(self, conditioning, ip_adapter_image, ip_adapter_image_embeds, negative_ip_adapter_image,
                          negative_ip_adapter_image_embeds, device, panoramas: int, width: int, height: int):
        """The prompt's `conditioning` with the image prompt's embeddings for `panoramas` panoramas:
        the image's alone, or with true CFG the negative image's first (a black image of the
        canvas's size where none is given, as FluxPipeline does); unchanged without an image prompt."""
        given = ip_adapter_image is not None or ip_adapter_image_embeds is not None
        negative_given = negative_ip_adapter_image is not None or negative_ip_adapter_image_embeds is not None
        if not given and not negative_given:
            return conditioning
        # one per adapter, with FluxPipeline's order of sides
        blank = [np.zeros((width, height, 3), dtype=np.uint8)] * self.transformer.encoder_hid_proj.num_ip_adapters
        if not given:
            ip_adapter_image = blank
        embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device, panoramas)
        if conditioning.true_cfg:
            if not negative_given:
                negative_ip_adapter_image = blank
            negative = self.prepare_ip_adapter_image_embeds(negative_ip_adapter_image, negative_ip_adapter_image_embeds,
                                                            device, panoramas)
            embeds = [torch.cat([unconditional, conditional]) for unconditional, conditional in zip(negative, embeds)]
        return dataclasses.replace(conditioning, image_embeds=embeds)


class SD3ImagePromptMixin(ImagePromptChecks, SD3IPAdapterMixin):
    """diffusers' SD3IPAdapterMixin, with StableDiffusion3Pipeline's image encoding (SigLIP's
    penultimate hidden states; zeros for the negative branch)."""

    encode_image = StableDiffusion3Pipeline.encode_image
    prepare_ip_adapter_image_embeds = StableDiffusion3Pipeline.prepare_ip_adapter_image_embeds

    def has_ip_adapter(self) -> bool:
        return getattr(self.transformer, "image_proj", None) is not None

    def with_image_prompt(self, conditioning, ip_adapter_image, ip_adapter_image_embeds, device, panoramas: int,
                          guided: bool = True):
        """The prompt's `conditioning` with the image prompt's embeddings for `panoramas` panoramas,
        negative rows first (zeros, as in diffusers; given `ip_adapter_image_embeds` hold both halves
        when `guided`, the image's rows alone when not, as diffusers reads them); unchanged without
        an image prompt, or, as in diffusers, with an image whose adapter scale is 0."""
        if (ip_adapter_image is None or not self.is_ip_adapter_active) and ip_adapter_image_embeds is None:
            return conditioning
        embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device, panoramas,
                                                      do_classifier_free_guidance=guided)
        if not guided:  # a negative half the unguided call never reads, for the rows' layout
            embeds = torch.cat([torch.zeros_like(embeds), embeds])
        return dataclasses.replace(conditioning, image_embeds=embeds)
