"""IP-Adapter image prompts on the UNet families (Stable Diffusion 1/2 and SDXL), as diffusers gives
them: `load_ip_adapter` (diffusers' IPAdapterMixin) adds the adapter's projection and attention
layers to the UNet and loads its image encoder; a call's `ip_adapter_image` (or
`ip_adapter_image_embeds`) is encoded once, by diffusers' own `encode_image` and
`prepare_ip_adapter_image_embeds`, and the same image embeddings condition every view, in both
guidance branches (the negative branch gets the embeddings of a blank image, as in diffusers)."""

from __future__ import annotations

import dataclasses

from diffusers import StableDiffusionPipeline
from diffusers.loaders import IPAdapterMixin

from .errors import SettingError


class ImagePromptMixin(IPAdapterMixin):
    """diffusers' IPAdapterMixin, with the image encoding of its Stable Diffusion pipelines (the same
    functions: they read only image_encoder, feature_extractor and the UNet's encoder_hid_proj)."""

    encode_image = StableDiffusionPipeline.encode_image
    prepare_ip_adapter_image_embeds = StableDiffusionPipeline.prepare_ip_adapter_image_embeds

    def check_image_prompt(self, ip_adapter_image, ip_adapter_image_embeds) -> None:
        """One sentence where an image prompt cannot be used as given, before any model work."""
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return
        if ip_adapter_image is not None and ip_adapter_image_embeds is not None:
            raise SettingError("ip_adapter_image", "Give ip_adapter_image or ip_adapter_image_embeds, not both.")
        if getattr(self.unet, "encoder_hid_proj", None) is None:
            raise SettingError("ip_adapter_image", "ip_adapter_image needs an IP-Adapter: load one first "
                                                   "(pipe.load_ip_adapter, or --ip-adapter on the command).")
        if ip_adapter_image is not None and self.image_encoder is None:
            raise SettingError("ip_adapter_image", "This IP-Adapter was loaded without its image encoder: load it "
                                                   "with image_encoder_folder, or give ip_adapter_image_embeds.")

    def with_image_prompt(self, conditioning, ip_adapter_image, ip_adapter_image_embeds, device, panoramas: int):
        """The prompt's `conditioning` with the image prompt's embeddings for `panoramas` panoramas
        (negative rows first, as the prompt's); unchanged without an image prompt."""
        if ip_adapter_image is None and ip_adapter_image_embeds is None:
            return conditioning
        embeds = self.prepare_ip_adapter_image_embeds(ip_adapter_image, ip_adapter_image_embeds, device, panoramas,
                                                      do_classifier_free_guidance=True)
        return dataclasses.replace(conditioning, image_embeds=embeds)
