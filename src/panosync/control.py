"""ControlSyncPipeline: SyncDiffusion guided by ControlNet conditions of any size (docs/algorithm.md,
section 4).

The joint diffusion is SyncDiffusion's, unchanged: the same views, sync step and merge. What
ControlSync adds is inside every UNet call of a view (the anchor's prediction, the gradient
pass and the denoising pass): the residuals that each ControlNet computes from that view's crop of
its condition. The crop is the view's window in pixels, wrapped round for loop-closure views. The
residuals are computed with gradients enabled whenever the sync step differentiates the UNet, so
the sync gradient flows through the ControlNets too.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

from .conditions import condition_size, fit_to_canvas
from .backbones.base import ViewConditioning
from .families import FAMILY_DEFAULTS, SD, SDXL
from .pipeline import SyncDiffusionPipeline
from .pipeline_base import check_pooled
from .settings import CONTROL_PAPER
from .xl import SyncDiffusionXLPipeline
from .views import View, crop


def pixel_view(view: View, factor: int) -> View:
    """The image-pixel window of a latent view."""
    return View(view.top * factor, view.left * factor, view.height * factor, view.width * factor)


def condition_embedding_factor(controlnet: ControlNetModel) -> int:
    """How many condition pixels one latent pixel of the ControlNet's features stands for."""
    return 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)


def check_condition_canvas(sizes: list[tuple[int, int]], width: int | None, height: int | None,
                           vae_factor: int | None) -> tuple[int, int]:
    """The canvas (width, height) in pixels: as given, else the conditions' own `sizes`, which must
    then agree and be multiples of `vae_factor` (not checked when unknown, None)."""
    own_width, own_height = sizes[0]
    if width is not None and height is not None:
        return width, height
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(set(sizes)))
        raise ValueError(f"The conditions have different sizes ({listed}): give width and height to resize them to, "
                         f"with resize_condition=True (--resize-condition).")
    if vae_factor and ((width is None and own_width % vae_factor) or (height is None and own_height % vae_factor)):
        raise ValueError(
            f"The condition is {own_width}x{own_height} pixels, not a multiple of {vae_factor} (the VAE factor): give "
            f"the width and height to resize it to, with resize_condition=True (--resize-condition), or crop it."
        )
    return (own_width if width is None else width), (own_height if height is None else height)


def random_controlnet_like(unet: UNet2DConditionModel, vae_factor: int, seed: int = 0) -> ControlNetModel:
    """A ControlNet shaped for `unet` with random weights: for tests and smoke runs, not pictures.

    ControlNets start with zero convolutions on their outputs, so an untrained one adds nothing;
    here those layers get ordinary random weights, so the condition visibly changes the result.
    """
    if vae_factor < 1 or vae_factor & (vae_factor - 1):
        raise ValueError(f"vae_factor must be a power of two, got {vae_factor}.")
    torch.manual_seed(seed)
    channels = tuple(8 * 2**i for i in range(vae_factor.bit_length()))  # one stride-2 stage per VAE halving
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels)
    zero_convolutions = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
                         controlnet.controlnet_mid_block]
    for convolution in zero_convolutions:
        convolution.reset_parameters()
    return controlnet.eval()


class ControlSyncMixin:
    """What ControlSync adds to a family's pipeline: its `controlnet` component (one, a list, or a
    multi-ControlNet), checked against the base model, and each view's ControlNet inputs
    (`control_conditioning`, the view conditioning the loop gives every network call). A family
    whose ControlNets read otherwise (SD3, FLUX: VAE latents) overrides what differs."""

    def add_controlnet(self, controlnet) -> None:
        """Register `controlnet` (one, a list, or a MultiControlNetModel), frozen, once checked."""
        if isinstance(controlnet, (list, tuple)):
            controlnet = MultiControlNetModel(controlnet)
        self.register_modules(controlnet=controlnet)
        controlnet.requires_grad_(False)
        self.check_controlnets()

    @property
    def controlnets(self) -> list[ControlNetModel]:
        return list(self.controlnet.nets) if isinstance(self.controlnet, MultiControlNetModel) else [self.controlnet]

    def check_controlnets(self) -> None:
        """Each ControlNet must be made for this UNet and see the condition at the VAE's scale."""
        for index, controlnet in enumerate(self.controlnets):
            name = f"ControlNet {index}" if len(self.controlnets) > 1 else "The ControlNet"
            if tuple(controlnet.config.block_out_channels) != tuple(self.unet.config.block_out_channels) or (
                controlnet.config.cross_attention_dim != self.unet.config.cross_attention_dim
            ):
                raise ValueError(
                    f"{name} was made for another UNet (channels {tuple(controlnet.config.block_out_channels)}, "
                    f"text width {controlnet.config.cross_attention_dim}; this UNet has "
                    f"{tuple(self.unet.config.block_out_channels)}, {self.unet.config.cross_attention_dim}): use a "
                    f"ControlNet trained for this base model."
                )
            if condition_embedding_factor(controlnet) != self.vae_scale_factor:
                raise ValueError(
                    f"{name} reads conditions at 1/{condition_embedding_factor(controlnet)} scale but this model's "
                    f"latents are 1/{self.vae_scale_factor} of the image: use a ControlNet trained for this base model."
                )

    def check_conditions(self, image, controlnet_conditioning_scale) -> tuple[list, list[float]]:
        """The conditions and scales of a call, one per ControlNet (a ValueError that says what to change)."""
        if image is None:
            raise ValueError("Give image: the condition the ControlNet follows, of the panorama's size.")
        conditions = self.per_controlnet(image, "image")
        scales = [float(scale) for scale in self.per_controlnet(controlnet_conditioning_scale,
                                                                "controlnet_conditioning_scale")]
        if any(not math.isfinite(scale) or scale < 0 for scale in scales):
            raise ValueError(f"controlnet_conditioning_scale must be a finite number, 0 or more, got "
                             f"{controlnet_conditioning_scale}.")
        return conditions, scales

    def control_conditioning(self, conditions: list[torch.Tensor], scales: list[float]) -> ViewConditioning:
        """The call's ControlNet inputs from its conditions, each (1, 3, height, width) in [0, 1]
        of the canvas's size."""
        conditions = [condition.to(self._execution_device, self.controlnet.dtype) for condition in conditions]
        return ControlConditioning(self.controlnets, conditions, scales, self.vae_scale_factor, self.unet.dtype)

    def per_controlnet(self, value, name: str) -> list:
        """`value` as one entry per ControlNet: a list of that length, or one value for a lone ControlNet
        (a number, for the scales, may also stand for all)."""
        count = len(self.controlnets)
        if isinstance(value, (list, tuple)):
            if len(value) != count:
                raise ValueError(f"{name} must have one entry per ControlNet ({count}), got {len(value)}.")
            return list(value)
        if count > 1 and name == "image":
            raise ValueError(f"image must be a list of {count} conditions, one per ControlNet.")
        return [value] * count


class ControlSyncPipeline(ControlSyncMixin, SyncDiffusionPipeline):
    """SyncDiffusion panoramas that follow ControlNet conditions of the panorama's size.

    Components: those of SyncDiffusionPipeline and `controlnet`, a diffusers ControlNetModel, a
    list of them, or a MultiControlNetModel. Load like a diffusers ControlNet pipeline:
    `ControlSyncPipeline.from_pretrained(sd15, controlnet=ControlNetModel.from_pretrained(...))`.
    """

    model_cpu_offload_seq = "text_encoder->image_encoder->controlnet->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, controlnet, scheduler, image_encoder=None,
                 feature_extractor=None):
        SyncDiffusionPipeline.__init__(self, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                       scheduler=scheduler, image_encoder=image_encoder,
                                       feature_extractor=feature_extractor)
        self.add_controlnet(controlnet)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
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
        controlnet_conditioning_scale: float | list[float] = 1.0,
        resize_condition: bool = False,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        *,
        sync_weight: float = 20.0,
        sync_decay_rate: float = 0.95,
        sync_freq: int = 1,
        sync_threshold: int | None = CONTROL_PAPER["sync_threshold"],
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
    ):
        """Generate one panorama per prompt and image that follows `image`, the condition: a PIL
        image, numpy array or (1, 3, H, W) tensor in [0, 1] of the panorama's size in pixels (see
        panosync.conditions), or a list of them, one per ControlNet. `controlnet_conditioning_scale`
        weighs each ControlNet's residuals (one number for all, or one per ControlNet; 0 turns it
        off). The canvas is the condition's size unless `width` and `height` are given; a condition
        of another size is refused, or resized to the canvas with `resize_condition=True`. The
        other parameters are SyncDiffusionPipeline's, with the ControlSync paper's sync defaults: weight 20,
        decay 0.95, sync in the first 10 steps (of 50); the ControlNets run in every network call
        of a view, the fast modes' included.
        """
        # 1. Check inputs (a ValueError that says what to change, before any model work): the
        #    conditions decide the canvas unless it is given
        conditions, scales = self.check_conditions(image, controlnet_conditioning_scale)
        width, height = check_condition_canvas([condition_size(c) for c in conditions], width, height,
                                               self.vae_scale_factor)
        values = self.check_inputs(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, output_type,
            callback_on_step_end_tensor_inputs,
            dict(width=width, height=height, guidance_scale=guidance_scale, sync_weight=sync_weight,
                 sync_decay_rate=sync_decay_rate, sync_freq=sync_freq, sync_threshold=sync_threshold,
                 num_inference_steps=num_inference_steps, stride=stride, seed=seed, loop_closure=loop_closure, tile=tile,
                 anchor=anchor, view_batch_size=view_batch_size, fast_modes=fast_modes,
                 sync_image_scale=sync_image_scale, sync_decoder=sync_decoder, tiled_decode=tiled_decode,
                 regions=regions, region_base=region_base, window=window))
        self.check_image_prompt(ip_adapter_image, ip_adapter_image_embeds)
        fast = self.fast_modes(values["fast_modes"], sync_image_scale, sync_decoder)
        count = self.prompt_count(prompt, prompt_embeds)
        prompts, negative_prompts = self.prompt_lists(prompt, negative_prompt, count)
        device = self._execution_device
        fitted = [fit_to_canvas(c, values["width"], values["height"], resize_condition) for c in conditions]
        view_conditioning = self.control_conditioning(fitted, scales)  # what each view's ControlNet calls read

        # 2. Lay out the views and draw the initial noise
        layout = self.prepare_layout(values)
        noise, seed = self.prepare_latents(count * num_images_per_prompt, values, generator, latents)

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
            latents, chunk_size = self.denoise(noise, conditioning, layout, values, fast, view_conditioning,
                                               attention_kwargs=cross_attention_kwargs,
                                               callback_on_step_end=callback_on_step_end,
                                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)

            # 5. Decode
            images = self.decode_latents(latents, values, layout, output_type, chunk_size)
        return self.finish(images, seed, return_dict)


def in_dtype(inputs: dict, dtype: torch.dtype) -> dict:
    """Keyword inputs (tensors, and dicts of tensors: SDXL's added_cond_kwargs) cast to `dtype`."""
    return {name: in_dtype(value, dtype) if isinstance(value, dict) else value.to(dtype)
            for name, value in inputs.items()}


class ControlSyncXLPipeline(ControlSyncMixin, SyncDiffusionXLPipeline):
    """ControlSync with an SDXL model and SDXL ControlNets (one, a list, or a MultiControlNetModel).
    Each ControlNet gets the UNet's own prompt inputs, SDXL's added conditioning included. Load like
    diffusers' StableDiffusionXLControlNetPipeline."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->controlnet->unet->vae"

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, controlnet, scheduler,
                 force_zeros_for_empty_prompt: bool = True, image_encoder=None, feature_extractor=None):
        SyncDiffusionXLPipeline.__init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet,
                                         scheduler, image_encoder=image_encoder, feature_extractor=feature_extractor,
                                         force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.add_controlnet(controlnet)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
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
        controlnet_conditioning_scale: float | list[float] = 1.0,
        resize_condition: bool = False,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        *,
        sync_weight: float = 20.0,
        sync_decay_rate: float = 0.95,
        sync_freq: int = 1,
        sync_threshold: int | None = CONTROL_PAPER["sync_threshold"],
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
    ):
        """Generate one panorama per prompt and image that follows `image`, the condition: a PIL
        image, numpy array or (1, 3, H, W) tensor in [0, 1] of the panorama's size in pixels (see
        panosync.conditions), or a list of them, one per ControlNet. `controlnet_conditioning_scale`
        weighs each ControlNet's residuals (one number for all, or one per ControlNet; 0 turns it
        off). The canvas is the condition's size unless `width` and `height` are given; a condition
        of another size is refused, or resized to the canvas with `resize_condition=True`. The
        other parameters are SyncDiffusionXLPipeline's, with the ControlSync paper's sync defaults: weight 20,
        decay 0.95, sync in the first 10 steps (of 50); the ControlNets run in every network call
        of a view, the fast modes' included.
        """
        # 1. Check inputs (a ValueError that says what to change, before any model work): the
        #    conditions decide the canvas unless it is given
        conditions, scales = self.check_conditions(image, controlnet_conditioning_scale)
        width, height = check_condition_canvas([condition_size(c) for c in conditions], width, height,
                                               self.vae_scale_factor)
        values = self.check_inputs(
            prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, output_type,
            callback_on_step_end_tensor_inputs,
            dict(width=width, height=height, guidance_scale=guidance_scale, sync_weight=sync_weight,
                 sync_decay_rate=sync_decay_rate, sync_freq=sync_freq, sync_threshold=sync_threshold,
                 num_inference_steps=num_inference_steps, stride=stride, seed=seed, loop_closure=loop_closure, tile=tile,
                 anchor=anchor, view_batch_size=view_batch_size, fast_modes=fast_modes,
                 sync_image_scale=sync_image_scale, sync_decoder=sync_decoder, tiled_decode=tiled_decode,
                 regions=regions, region_base=region_base, window=window))
        check_pooled(prompt_embeds, pooled_prompt_embeds, negative_prompt_embeds, negative_pooled_prompt_embeds)
        self.check_image_prompt(ip_adapter_image, ip_adapter_image_embeds)
        fast = self.fast_modes(values["fast_modes"], sync_image_scale, sync_decoder)
        count = self.prompt_count(prompt, prompt_embeds)
        prompts, negative_prompts = self.prompt_lists(prompt, negative_prompt, count)
        device = self._execution_device
        fitted = [fit_to_canvas(c, values["width"], values["height"], resize_condition) for c in conditions]
        view_conditioning = self.control_conditioning(fitted, scales)  # what each view's ControlNet calls read

        # 2. Lay out the views and draw the initial noise
        layout = self.prepare_layout(values)
        noise, seed = self.prepare_latents(count * num_images_per_prompt, values, generator, latents)

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
            latents, chunk_size = self.denoise(noise, conditioning, layout, values, fast, view_conditioning,
                                               attention_kwargs=cross_attention_kwargs,
                                               callback_on_step_end=callback_on_step_end,
                                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)

            # 5. Decode
            images = self.decode_latents(latents, values, layout, output_type, chunk_size)
        return self.finish(images, seed, return_dict)


@dataclasses.dataclass(frozen=True)
class ControlConditioning(ViewConditioning):
    """ControlSync's part of a request: each ControlNet, its condition of the canvas's size (a
    (1, 3, height, width) tensor on the ControlNet's device and in its dtype) and its scale. It
    gives each view's UNet call the residuals of the ControlNets for that view's crop."""

    controlnets: list
    conditions: list[torch.Tensor]
    scales: list[float]
    vae_factor: int
    unet_dtype: torch.dtype

    def network_inputs(self, model_input, t, inputs, views) -> dict:
        """The ControlNets' residuals for a batch of views, summed over the ControlNets: each sees
        its condition's crop for each view, the same for both guidance branches (`model_input` holds
        the unconditional half, then the conditional), and the UNet's own prompt `inputs` (the text
        context, and SDXL's added conditioning). A ControlNet at scale 0 would add only zeros, so
        it is not run; with every scale at 0 the UNet call is plain SyncDiffusion's."""
        if views is None:
            raise TypeError("ControlSync needs the views of the batch to crop the conditions for them.")
        inputs = prompt_inputs_only(inputs)
        down, mid = None, None
        for controlnet, condition, scale in zip(self.controlnets, self.conditions, self.scales):
            if scale == 0:
                continue
            crops = torch.cat([crop(condition, pixel_view(view, self.vae_factor)) for view in views])
            # each input in the ControlNet's dtype, its residuals in the UNet's (the two may differ)
            dtype = controlnet.dtype
            net_down, net_mid = controlnet(sample=model_input.to(dtype), timestep=t,
                                           controlnet_cond=torch.cat([crops, crops]).to(dtype),
                                           conditioning_scale=scale, return_dict=False, **in_dtype(inputs, dtype))
            net_down = [residual.to(self.unet_dtype) for residual in net_down]
            net_mid = net_mid.to(self.unet_dtype)
            if down is None:
                down, mid = net_down, net_mid
            else:
                down, mid = [a + b for a, b in zip(down, net_down)], mid + net_mid
        if down is None:
            return {}
        return dict(down_block_additional_residuals=down, mid_block_additional_residual=mid)


def prompt_inputs_only(inputs: dict) -> dict:
    """The UNet's keyword inputs less an IP-Adapter's image prompt: a ControlNet reads the prompt's
    conditioning only, as in diffusers' ControlNet pipelines."""
    added = inputs.get("added_cond_kwargs")
    if not added or "image_embeds" not in added:
        return inputs
    added = {name: value for name, value in added.items() if name != "image_embeds"}
    return {**{name: value for name, value in inputs.items() if name != "added_cond_kwargs"},
            **({"added_cond_kwargs": added} if added else {})}


def condition_latent(vae, condition: torch.Tensor, device, dtype: torch.dtype, shift: float) -> torch.Tensor:
    """A condition image (values in [0, 1]) as a flow transformer's ControlNet reads it: the mean of
    the VAE's posterior (so that a seed makes one panorama; diffusers draws a sample), less `shift`,
    times the VAE's scaling factor, in `dtype`."""
    mean = vae.encode(condition.to(device, vae.dtype) * 2 - 1).latent_dist.mode()
    return ((mean - shift) * vae.config.scaling_factor).to(dtype)


@dataclasses.dataclass(frozen=True)
class LatentConditioning(ViewConditioning):
    """A flow transformer's ControlSync part of a request (SD3's, FLUX's): each ControlNet, its
    condition's latent of the canvas's size (1, C, H/f, W/f) and its scale; the transformer's dtype,
    that of the block samples it is given. Each family says how a batch of views gets them."""

    controlnets: list
    latents: list[torch.Tensor]
    scales: list[float]
    transformer_dtype: torch.dtype
