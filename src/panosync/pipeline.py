"""SyncDiffusionPipeline: SyncDiffusion panoramas with Stable Diffusion 1.x and 2.x.

One joint diffusion over the views of a panorama, kept on one scene by gradient descent on the
perceptual distance between each view's foreseen image and an anchor's (docs/algorithm.md). The
call's steps are pipeline_base.py's; the loop is loop.py's, the sync step sync.py's.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from diffusers.loaders import FromSingleFileMixin, StableDiffusionLoraLoaderMixin, TextualInversionLoaderMixin

from .backbones.sd import StableDiffusionBackbone
from .families import FAMILY_DEFAULTS, SD
from .image_prompt import ImagePromptMixin
from .pipeline_base import PanoramaPipelineBase


class SyncDiffusionPipeline(PanoramaPipelineBase, TextualInversionLoaderMixin, StableDiffusionLoraLoaderMixin,
                            ImagePromptMixin, FromSingleFileMixin):
    """SyncDiffusion panoramas with Stable Diffusion 1.x and 2.x models (ε- or v-prediction).

    Components as in diffusers' StableDiffusionPipeline: vae, text_encoder, tokenizer, unet,
    scheduler, and optionally image_encoder and feature_extractor (an IP-Adapter's). diffusers'
    loaders: load_lora_weights (and set_adapters, fuse_lora ...), load_textual_inversion,
    load_ip_adapter, from_single_file. Loading with `from_pretrained` / `from_single_file` switches the scheduler to DDIM
    (η = 0, as in the paper) unless a `scheduler` is passed. The models are frozen: the sync step
    needs gradients with respect to latents only.
    """

    family = SD
    backbone_class = StableDiffusionBackbone
    model_cpu_offload_seq = "text_encoder->image_encoder->unet->vae"
    _optional_components = ["image_encoder", "feature_extractor"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, image_encoder=None, feature_extractor=None):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              image_encoder=image_encoder, feature_extractor=feature_extractor)
        self.set_up(vae, text_encoder, unet)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = FAMILY_DEFAULTS[SD]["guidance_scale"],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        ip_adapter_image=None,
        ip_adapter_image_embeds: list[torch.Tensor] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
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
        """Generate one panorama per prompt and image (`num_images_per_prompt`), their views
        batched together.

        diffusers' parameters mean what they mean in StableDiffusionPipeline; sizes are in pixels,
        by default one window high and four wide (512 x 2048 for Stable Diffusion 2 base).
        `prompt_embeds` / `negative_prompt_embeds` (the text encoder's last hidden states) stand in
        for the texts. `ip_adapter_image` (one image, or one per IP-Adapter loaded) or
        `ip_adapter_image_embeds`: an image prompt that conditions every view (load_ip_adapter first).
        `cross_attention_kwargs={"scale": s}` scales the LoRAs loaded, in the text encoder and in
        every UNet call, the sync gradient's included. An image to start from (docs/images.md): `image`
        is repainted (img2img, `strength` 0.8 by default, as StableDiffusionImg2ImgPipeline), inpainted
        where `mask_image` is white (strength 1, as StableDiffusionInpaintPipeline; a 9-channel
        inpainting UNet reads the mask itself), or extended where it is smaller than the canvas, at
        `image_at` (its top-left corner in pixels; default centred) or fitted with `resize_image`; the
        canvas is the image's size unless width/height are given, the anchor the view holding most
        of the kept pixels, which are pasted back after decoding over a `mask_feather` (pixels,
        default the VAE factor) unless `paste_back` is False. `regions` (docs/regions.md): prompts
        of their own for parts of the canvas, each a dict (or panosync.Region) with "box" (x0, y0,
        x1, y1 in pixels) or "mask" (an image of the canvas's size, white inside), "prompt", and
        optionally "negative_prompt" (default the call's) and "weight" (1); the prompt covers the
        rest, and the anchor defaults to the view with the most of it. `region_base`: the prompt's
        share of the prediction inside the regions, which carries its light and time of day into
        them (0: each region's prompt alone). `callback_on_step_end(pipe, step, timestep, kwargs)` runs after every step
        with the tensors `callback_on_step_end_tensor_inputs` names, the step's "sync_weight" and
        "first_step" (the schedule's index of the loop's first step: an image's strength skips those before);
        a returned "latents" replaces the latents.

        SyncDiffusion's: `sync_weight` w (0: MultiDiffusion), `sync_decay_rate` (the weight at step
        i is w·rate^i), `sync_freq` (every n-th step), `sync_threshold` (None: every step, the
        paper's; n: the first n steps only, where the layout is decided: cheaper). `stride` is in
        latent pixels (default a quarter window, the paper's). `anchor`: the index of the view the
        others are pulled towards (default the centre view). `seed`: of the initial noise, reported
        with the result. `loop_closure`: a 360° panorama whose edges meet; `tile` ("x", "y", "xy"): which
        edges meet ("x" is loop_closure; "xy" a texture that tiles). `view_batch_size` views
        go through the networks together (default chosen for the device, halved where memory runs
        out). Fast modes (fast.py; all off, with every step synced, is faithful): `fast_modes`
        (reuse_noise, no_unet_backward, lpips_alex, dpm_solver), `sync_image_scale` < 1,
        `sync_decoder` (an AutoencoderTiny or its folder). `tiled_decode`: decode in overlapping tiles (default: as enable_vae_tiling
        chose, else when larger than 6 windows). `window`: a view's side in pixels (a UNet takes
        only its native size).
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
                conditioning = self.backbone.encode_prompt(prompts, negative_prompts, device, num_images_per_prompt,
                                                           prompt_embeds, negative_prompt_embeds)
                conditioning = self.with_region_prompts(
                    conditioning, values, count * num_images_per_prompt, negative_prompts,
                    lambda texts, negatives: self.backbone.encode_prompt(texts, negatives, device))
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
