"""SyncDiffusionFluxPipeline: SyncDiffusion panoramas with FLUX.1 (dev and schnell).

The call's steps are SyncDiffusionPipeline's; the FLUX backbone (backbones/flux.py,
backbones/flow.py) gives them the CLIP and T5 conditioning, each view packed as its own image with
its own position ids, the distilled guidance (dev) or none (schnell), x̂₀ = x − σ·v̂ and the Euler
step of the model's flow-matching scheduler, dynamically shifted for one view's size. The window
is a parameter: by default 1024 pixels, FluxPipeline's image size."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from diffusers import DiffusionPipeline
from diffusers.loaders import FluxLoraLoaderMixin, FromSingleFileMixin, TextualInversionLoaderMixin

from .backbones.flow import check_max_sequence_length
from .backbones.flux import T5_TOKENS, FluxBackbone
from .families import FAMILY_DEFAULTS, FLUX
from .image_prompt import FluxImagePromptMixin
from .pipeline_base import PanoramaPipelineBase, check_pooled

DEFAULT_FLUX_MODEL = "black-forest-labs/FLUX.1-schnell"


def check_true_cfg_scale(true_cfg_scale) -> None:
    if isinstance(true_cfg_scale, bool) or not isinstance(true_cfg_scale, (int, float)) or \
            not math.isfinite(true_cfg_scale) or true_cfg_scale < 0:
        raise ValueError(f"true_cfg_scale must be a finite number, 0 or more, got {true_cfg_scale!r}.")


class SyncDiffusionFluxPipeline(PanoramaPipelineBase, FluxLoraLoaderMixin, FromSingleFileMixin,
                                TextualInversionLoaderMixin, FluxImagePromptMixin):
    """SyncDiffusion panoramas with a FLUX.1 model.

    Components as in diffusers' FluxPipeline: scheduler (its FlowMatchEulerDiscreteScheduler,
    kept), vae, text_encoder (CLIP), tokenizer, text_encoder_2 (T5), tokenizer_2, transformer, and
    optionally image_encoder and feature_extractor (an IP-Adapter's). diffusers' loaders:
    load_lora_weights (and set_adapters, fuse_lora ...), load_textual_inversion, load_ip_adapter.
    `from_pretrained` (black-forest-labs/FLUX.1-schnell or -dev, a folder), `from_single_file` and
    `.to()` are diffusers'.
    """

    family = FLUX
    backbone_class = FluxBackbone
    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->transformer->vae"
    _optional_components = ["image_encoder", "feature_extractor"]

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
                 image_encoder=None, feature_extractor=None):
        DiffusionPipeline.__init__(self)
        self.register_modules(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.set_up(vae, text_encoder, text_encoder_2, transformer)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = FAMILY_DEFAULTS[FLUX]["guidance_scale"],
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
        negative_ip_adapter_image=None,
        negative_ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        true_cfg_scale: float = 1.0,
        joint_attention_kwargs: dict[str, Any] | None = None,
        max_sequence_length: int = T5_TOKENS,
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
        (sizes in pixels; the default canvas is one window high and four wide: 1024 x 4096;
        `window` chooses another view size, a multiple of 2 latent pixels), with FLUX's:
        `guidance_scale` is FLUX.1-dev's distilled guidance, an input of the transformer (default
        3.5, families.py; schnell has none and ignores it); `true_cfg_scale` > 1 adds real
        classifier-free guidance with `negative_prompt` (a second branch), as FluxPipeline's
        option; `pooled_prompt_embeds` (CLIP's) beside T5's `prompt_embeds` given in place of
        texts; `joint_attention_kwargs` (its "scale": the LoRAs'); `max_sequence_length` (T5's
        tokens, diffusers' 512); `ip_adapter_image` / `ip_adapter_image_embeds` (an IP-Adapter's
        image prompt for every view) and, with true CFG, `negative_ip_adapter_image` / `_embeds`.
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
        check_true_cfg_scale(true_cfg_scale)
        check_max_sequence_length(max_sequence_length)
        check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds)
        self.check_image_prompt(ip_adapter_image, ip_adapter_image_embeds)
        self.check_image_prompt(negative_ip_adapter_image, negative_ip_adapter_image_embeds, prefix="negative_")
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
            with self.text_encoder_lora_scale(joint_attention_kwargs):
                conditioning = self.backbone.encode_prompt(
                    prompts, negative_prompts, device, num_images_per_prompt, prompt_embeds, negative_prompt_embeds,
                    pooled_prompt_embeds, negative_pooled_prompt_embeds,
                    max_sequence_length, true_cfg_scale)
                conditioning = self.with_region_prompts(
                    conditioning, values, count * num_images_per_prompt, negative_prompts,
                    lambda texts, negatives: self.backbone.encode_prompt(texts, negatives, device, max_sequence_length=max_sequence_length, true_cfg_scale=true_cfg_scale))
            conditioning = self.with_image_prompt(conditioning, ip_adapter_image, ip_adapter_image_embeds,
                                                  negative_ip_adapter_image, negative_ip_adapter_image_embeds, device,
                                                  count * num_images_per_prompt, values["width"], values["height"])

            # 4. The joint denoising loop: sync, denoise and merge the views at every step
            latents, chunk_size = self.denoise(noise, conditioning, layout, values, fast,
                                               attention_kwargs=joint_attention_kwargs,
                                               callback_on_step_end=callback_on_step_end,
                                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
                                               image_start=image_start)

            # 5. Decode
            images = self.decode_latents(latents, values, layout, output_type, chunk_size, image_start)
        return self.finish(images, seed, return_dict)
