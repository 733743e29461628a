"""ControlSync3Pipeline: ControlSync with Stable Diffusion 3 / 3.5 and SD3 ControlNets.

ControlSync's call (conditions of the canvas's size, fitted or refused, one scale per
ControlNet) on SyncDiffusion3Pipeline's backbone. What differs from the UNets' ControlNets is what
an SD3ControlNetModel reads: not the condition's pixels but its VAE latent, (mean − shift) ·
scaling, as diffusers' StableDiffusion3ControlNetPipeline computes it (the InstantX ControlNets,
which take zero pooled projections, take the latent unshifted). The whole condition is encoded
once per call and each view reads its crop of that latent, wrapped round for loop closure; the
latent is the VAE posterior's mean where diffusers draws a sample, so that a seed means one
panorama. Each ControlNet gets the transformer's inputs of the view's call (its timestep, the
text context where it has a context embedder, the pooled projection or zeros, as diffusers), and
its block samples, summed over the ControlNets, go to the transformer.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import SD3ControlNetModel, SD3Transformer2DModel
from diffusers.models.controlnets.controlnet_sd3 import SD3MultiControlNetModel

from typing import Any, Callable, Iterable

from .backbones.base import ViewConditioning
from .backbones.flow import check_max_sequence_length
from .backbones.sd3 import T5_TOKENS
from .conditions import condition_size, fit_to_canvas
from .control import ControlSyncMixin, LatentConditioning, check_condition_canvas, condition_latent
from .families import FAMILY_DEFAULTS, SD3
from .pipeline_base import check_pooled
from .sd3 import SyncDiffusion3Pipeline
from .settings import CONTROL_PAPER
from .views import crop

# The transformer config keys an SD3ControlNetModel shares with its transformer.
SHARED_CONFIG = ("sample_size", "patch_size", "in_channels", "attention_head_dim", "num_attention_heads",
                 "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels",
                 "pos_embed_max_size", "qk_norm")


def random_sd3_controlnet_like(transformer: SD3Transformer2DModel, seed: int = 0, layers: int = 1,
                               **options) -> SD3ControlNetModel:
    """An SD3ControlNetModel shaped for `transformer`, `layers` deep, with random weights: for tests
    and smoke runs, not pictures. Its output blocks and condition embedding start at zero in
    training; here they get ordinary random weights, so the condition visibly changes the result.
    `options` set other config values (force_zeros_for_pooled_projection: InstantX's, the default)."""
    torch.manual_seed(seed)
    shared = {name: transformer.config[name] for name in SHARED_CONFIG if name in transformer.config}
    controlnet = SD3ControlNetModel(**shared, num_layers=layers, extra_conditioning_channels=0, **options)
    for block in controlnet.controlnet_blocks:
        block.reset_parameters()
    controlnet.pos_embed_input.proj.reset_parameters()
    return controlnet.eval()


class ControlSync3Pipeline(ControlSyncMixin, SyncDiffusion3Pipeline):
    """ControlSync with an SD3 / 3.5 model and SD3 ControlNets (one, a list, or an
    SD3MultiControlNetModel). Components as in diffusers' StableDiffusion3ControlNetPipeline."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->image_encoder->controlnet->transformer->vae"

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3, tokenizer_3, controlnet, image_encoder=None, feature_extractor=None):
        SyncDiffusion3Pipeline.__init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2,
                                        tokenizer_2, text_encoder_3, tokenizer_3, image_encoder, feature_extractor)
        self.add_controlnet(controlnet)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = FAMILY_DEFAULTS[SD3]["guidance_scale"],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        max_sequence_length: int = T5_TOKENS,
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
        other parameters are SyncDiffusion3Pipeline's, with the ControlSync paper's sync defaults: weight 20,
        decay 0.95, sync in the first 10 steps (of 50); the ControlNets run in every network call
        of a view, the fast modes' included.
        """
        # 1. Check inputs (a ValueError that says what to change, before any model work): the
        #    conditions decide the canvas unless it is given
        check_max_sequence_length(max_sequence_length)
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
            # 3. Encode the prompt (a LoRA's scale reaches the text encoders, as in diffusers)
            with self.text_encoder_lora_scale(joint_attention_kwargs):
                conditioning = self.backbone.encode_prompt(
                    prompts, negative_prompts, device, num_images_per_prompt, prompt_embeds, negative_prompt_embeds,
                    pooled_prompt_embeds, negative_pooled_prompt_embeds,
                    max_sequence_length)
                conditioning = self.with_region_prompts(
                    conditioning, values, count * num_images_per_prompt, negative_prompts,
                    lambda texts, negatives: self.backbone.encode_prompt(texts, negatives, device, max_sequence_length=max_sequence_length))

            # 4. The joint denoising loop: sync, denoise and merge the views at every step
            latents, chunk_size = self.denoise(noise, conditioning, layout, values, fast, view_conditioning,
                                               attention_kwargs=joint_attention_kwargs,
                                               callback_on_step_end=callback_on_step_end,
                                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)

            # 5. Decode
            images = self.decode_latents(latents, values, layout, output_type, chunk_size)
        return self.finish(images, seed, return_dict)

    def add_controlnet(self, controlnet) -> None:
        if isinstance(controlnet, (list, tuple)):
            controlnet = SD3MultiControlNetModel(controlnet)
        self.register_modules(controlnet=controlnet)
        controlnet.requires_grad_(False)
        for net in self.controlnets:
            if net.config.get("use_pos_embed", True) is False:
                # SD3.5 large's ControlNets have no position embedding of their own: the transformer's
                net.pos_embed = net._get_pos_embed_from_transformer(self.transformer).to(net.device, net.dtype)
        self.check_controlnets()

    @property
    def controlnets(self) -> list[SD3ControlNetModel]:
        return list(self.controlnet.nets) if isinstance(self.controlnet, SD3MultiControlNetModel) else [self.controlnet]

    def check_controlnets(self) -> None:
        """Each ControlNet must read this transformer's latents and feed its blocks."""
        transformer = self.transformer.config
        for index, controlnet in enumerate(self.controlnets):
            name = f"ControlNet {index}" if len(self.controlnets) > 1 else "The ControlNet"
            if not isinstance(controlnet, SD3ControlNetModel):
                raise ValueError(f"{name} is a {type(controlnet).__name__}: an SD3 model takes SD3ControlNetModels.")
            config = controlnet.config
            width = config.num_attention_heads * config.attention_head_dim
            if (config.in_channels, config.patch_size, width) != (
                    transformer.in_channels, transformer.patch_size,
                    transformer.num_attention_heads * transformer.attention_head_dim):
                raise ValueError(f"{name} was made for another transformer (latent channels {config.in_channels}, "
                                 f"patch {config.patch_size}, width {width}): use a ControlNet trained for this base "
                                 f"model.")

    @torch.no_grad()
    def control_conditioning(self, conditions: list[torch.Tensor], scales: list[float]) -> ViewConditioning:
        """Each condition's VAE latent (the posterior's mean), as its ControlNet reads it."""
        latents = []
        for controlnet, condition in zip(self.controlnets, conditions):
            # diffusers: InstantX's ControlNets (zero pooled projections) were trained on unshifted latents
            shift = 0 if controlnet.config.force_zeros_for_pooled_projection else self.vae.config.shift_factor
            latents.append(condition_latent(self.vae, condition, self._execution_device, self.compute_dtype, shift))
        return SD3ControlConditioning(self.controlnets, latents, scales, self.transformer.dtype)


@dataclasses.dataclass(frozen=True)
class SD3ControlConditioning(LatentConditioning):
    """SD3 ControlSync's part of a request. It gives each view's transformer call the ControlNets'
    block samples for that view's crop of the latents."""

    def network_inputs(self, model_input, t, inputs, views) -> dict:
        """The block samples for a batch of views (both guidance branches where `model_input` holds
        two), summed over the ControlNets; none at scale 0 (not run)."""
        if views is None:
            raise TypeError("ControlSync needs the views of the batch to crop the conditions for them.")
        samples = None
        branches = model_input.shape[0] // len(views)
        for controlnet, latent, scale in zip(self.controlnets, self.latents, self.scales):
            if scale == 0:
                continue
            dtype = controlnet.dtype
            crops = torch.cat([crop(latent, view) for view in views]).repeat(branches, 1, 1, 1)
            pooled = inputs["pooled_projections"].to(dtype)
            if controlnet.config.force_zeros_for_pooled_projection:
                pooled = torch.zeros_like(pooled)
            # SD3.5 large's ControlNets have no context embedder and read no text
            context = inputs["encoder_hidden_states"].to(dtype) if controlnet.config.joint_attention_dim else None
            blocks = controlnet(hidden_states=model_input.to(dtype), timestep=inputs["timestep"],
                                encoder_hidden_states=context, pooled_projections=pooled,
                                controlnet_cond=crops.to(dtype), conditioning_scale=scale, return_dict=False)[0]
            blocks = [block.to(self.transformer_dtype) for block in blocks]
            samples = blocks if samples is None else [a + b for a, b in zip(samples, blocks)]
        return {} if samples is None else dict(block_controlnet_hidden_states=samples)
