"""SyncDiffusionXLPipeline: SyncDiffusion panoramas with Stable Diffusion XL.

The call's steps are SyncDiffusionPipeline's; the SDXL backbone (backbones/sdxl.py) gives them
SDXL's prompt conditioning (two text encoders, the pooled embedding, each view's size
conditioning) and its UNet's added inputs. Its VAE overflows in float16: it decodes in float32
where its config says `force_upcast` (backbones/base.py), or load an fp16-safe VAE in its place
(`vae=AutoencoderKL.from_pretrained(...)`, the command's --vae).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import FromSingleFileMixin, StableDiffusionXLLoraLoaderMixin, TextualInversionLoaderMixin

from .backbones.sdxl import StableDiffusionXLBackbone
from .families import FAMILY_DEFAULTS, SDXL
from .image_prompt import ImagePromptMixin
from .pipeline_base import PanoramaPipelineBase, check_pooled

# SDXL base's window is 128 latents (1024 pixels): the default canvas is one window high, four wide.
DEFAULT_XL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


class SyncDiffusionXLPipeline(PanoramaPipelineBase, FromSingleFileMixin, StableDiffusionXLLoraLoaderMixin,
                              TextualInversionLoaderMixin, ImagePromptMixin):
    """SyncDiffusion panoramas with an SDXL model.

    Components as in diffusers' StableDiffusionXLPipeline: vae, text_encoder, text_encoder_2,
    tokenizer, tokenizer_2, unet, scheduler, its config's force_zeros_for_empty_prompt, and
    optionally image_encoder and feature_extractor (an IP-Adapter's). diffusers' loaders:
    load_lora_weights (and set_adapters, fuse_lora ...), load_textual_inversion, load_ip_adapter.
    `from_pretrained` (stabilityai/stable-diffusion-xl-base-1.0, a folder), `from_single_file`
    and `.to()` are diffusers'; loading switches the scheduler to DDIM unless one is passed.
    """

    family = SDXL
    backbone_class = StableDiffusionXLBackbone
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->unet->vae"
    _optional_components = ["image_encoder", "feature_extractor"]

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt: bool = True):
        DiffusionPipeline.__init__(self)
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, image_encoder=image_encoder,
                              feature_extractor=feature_extractor)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.set_up(vae, text_encoder, text_encoder_2, unet)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = FAMILY_DEFAULTS[SDXL]["guidance_scale"],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        image=None,
        mask_image=None,
        strength: float | None = None,
        *,
        sync_weight: float = 20.0,
        sync_decay_rate: float = 0.95,
        sync_freq: int = 1,
        sync_threshold: int | None = None,
        stride: int | None = None,
        seed: int | None = None,
        loop_closure: bool = False,
        tile: str | None = None,
        anchor: int | None = None,
        view_batch_size: int | None = None,
        fast_modes: Iterable[str] = (),
        sync_image_scale: float = 1.0,
        sync_decoder=None,
        tiled_decode: bool | None = None,
        regions: list | None = None,
        region_base: float = 0.15,
        window: int | None = None,
        image_at: tuple[int, int] | None = None,
        resize_image: bool = False,
        mask_feather: int | None = None,
        paste_back: bool = True,
    ):
        """Generate one panorama per prompt and image; the parameters are SyncDiffusionPipeline's
        (sizes in pixels; the default canvas is one window high and four wide: 1024 x 4096 for SDXL
        base), with SDXL's: `pooled_prompt_embeds` / `negative_pooled_prompt_embeds` beside the
        embeddings given in place of texts (both encoders' penultimate hidden states, side by side),
        and the size conditioning, the same for every view: `original_size` and `target_size`
        (height, width) default to the window in pixels, `crops_coords_top_left` to (0, 0) — what
        diffusers gives one image of the window's size, so that each view is conditioned as the
        model's own image. `guidance_scale` defaults to 5 (families.py). `ip_adapter_image` /
        `ip_adapter_image_embeds`: an IP-Adapter's image prompt for every view.
        An image to start from (`image`, `mask_image`, `strength`, `image_at`, `resize_image`,
        `mask_feather`, `paste_back`): as SyncDiffusionPipeline's, docs/images.md.
        """
        # 1. Check inputs (a ValueError that says what to change, before any model work)
        values = self.check_inputs(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, output_type,
            callback_on_step_end_tensor_inputs,
            dict(width=width, height=height, guidance_scale=guidance_scale, sync_weight=sync_weight,
                 sync_decay_rate=sync_decay_rate, sync_freq=sync_freq, sync_threshold=sync_threshold,
                 num_inference_steps=num_inference_steps, stride=stride, seed=seed, loop_closure=loop_closure, tile=tile,
                 anchor=anchor, view_batch_size=view_batch_size, fast_modes=fast_modes,
                 sync_image_scale=sync_image_scale, sync_decoder=sync_decoder, tiled_decode=tiled_decode,
                 regions=regions, region_base=region_base, window=window, image=image, mask_image=mask_image, strength=strength, image_at=image_at,
                 resize_image=resize_image, mask_feather=mask_feather, paste_back=paste_back))
        check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds)
        self.check_image_prompt(ip_adapter_image, ip_adapter_image_embeds)
        fast = self.fast_modes(values["fast_modes"], sync_image_scale, sync_decoder)
        count = self.prompt_count(prompt, prompt_embeds)
        prompts, negative_prompts = self.prompt_lists(prompt, negative_prompt, count)
        device = self._execution_device

        # 2. Lay out the views and draw the initial noise (with an image: its latent first, then the noise)
        layout = self.prepare_layout(values)
        noise, seed, image_start = self.prepare_start(count * num_images_per_prompt, values, generator, latents,
                                                      layout)

        with self.autocast_context(device):
            # 3. Encode the prompt (a LoRA's scale reaches the text encoders, as in diffusers), and the
            #    IP-Adapter's image prompt
            with self.text_encoder_lora_scale(cross_attention_kwargs):
                conditioning = self.backbone.encode_prompt(
                    prompts, negative_prompts, device, num_images_per_prompt, prompt_embeds, negative_prompt_embeds,
                    pooled_prompt_embeds, negative_pooled_prompt_embeds,
                    original_size, crops_coords_top_left, target_size)
                conditioning = self.with_region_prompts(
                    conditioning, values, count * num_images_per_prompt, negative_prompts,
                    lambda texts, negatives: self.backbone.encode_prompt(
                        texts, negatives, device, original_size=original_size,
                        crops_coords_top_left=crops_coords_top_left, target_size=target_size))
            conditioning = self.with_image_prompt(conditioning, ip_adapter_image, ip_adapter_image_embeds, device,
                                                  count * num_images_per_prompt)

            # 4. The joint denoising loop: sync, denoise and merge the views at every step
            latents, chunk_size = self.denoise(noise, conditioning, layout, values, fast,
                                               attention_kwargs=cross_attention_kwargs,
                                               callback_on_step_end=callback_on_step_end,
                                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                                               image_start=image_start)

            # 5. Decode
            images = self.decode_latents(latents, values, layout, output_type, chunk_size, image_start)
        return self.finish(images, seed, return_dict)
