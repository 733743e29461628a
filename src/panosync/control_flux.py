"""ControlSyncFluxPipeline: ControlSync with FLUX.1 and FLUX ControlNets (FluxControlNetModel).

ControlSync's call on SyncDiffusionFluxPipeline's backbone. A FLUX ControlNet of InstantX's kind
reads the condition's VAE latent, (mean − shift) · scaling, packed as the latents are, as
diffusers' FluxControlNetPipeline computes it: the whole condition is encoded once per call, each
view reads its crop of that latent (wrapped round for loop closure), packed as its own image. The
ControlNet sees the prompt's branch of the view's transformer call (its timestep, the prompt, the
view's position ids, the distilled guidance where it has guidance_embeds), and its block samples,
summed over the ControlNets, go to both branches of true CFG, as in diffusers. The latent is the
VAE posterior's mean where diffusers draws a sample, so that a seed means one panorama.

Not taken (one sentence each): XLabs' ControlNets, which read pixels through their own hint
block at a fixed scale, and union ControlNets, which need a control mode.
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import FluxControlNetModel, FluxTransformer2DModel
from diffusers.models.controlnets.controlnet_flux import FluxMultiControlNetModel

from typing import Any, Callable, Iterable

from .backbones.base import ViewConditioning
from .backbones.flow import check_max_sequence_length
from .backbones.flux import T5_TOKENS, pack
from .conditions import condition_size, fit_to_canvas
from .control import ControlSyncMixin, LatentConditioning, check_condition_canvas, condition_latent
from .families import FAMILY_DEFAULTS, FLUX
from .flux import SyncDiffusionFluxPipeline, check_true_cfg_scale
from .pipeline_base import check_pooled
from .settings import CONTROL_PAPER
from .views import crop

# The transformer config keys a FluxControlNetModel shares with its transformer.
SHARED_CONFIG = ("patch_size", "in_channels", "attention_head_dim", "num_attention_heads", "joint_attention_dim",
                 "pooled_projection_dim", "guidance_embeds", "axes_dims_rope")


def random_flux_controlnet_like(transformer: FluxTransformer2DModel, seed: int = 0, layers: int = 1,
                                single_layers: int = 1) -> FluxControlNetModel:
    """A FluxControlNetModel (InstantX's kind) shaped for `transformer`, with random weights: for
    tests and smoke runs, not pictures. Its output blocks and condition embedder start at zero in
    training; here they get ordinary random weights, so the condition visibly changes the result."""
    torch.manual_seed(seed)
    shared = {name: transformer.config[name] for name in SHARED_CONFIG if name in transformer.config}
    controlnet = FluxControlNetModel(**shared, num_layers=layers, num_single_layers=single_layers)
    for block in [*controlnet.controlnet_blocks, *controlnet.controlnet_single_blocks]:
        block.reset_parameters()
    controlnet.controlnet_x_embedder.reset_parameters()
    return controlnet.eval()


class ControlSyncFluxPipeline(ControlSyncMixin, SyncDiffusionFluxPipeline):
    """ControlSync with a FLUX.1 model and FLUX ControlNets of InstantX's kind (one, a list, or a
    FluxMultiControlNetModel). Components as in diffusers' FluxControlNetPipeline."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->image_encoder->controlnet->transformer->vae"

    def __init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer, controlnet,
                 image_encoder=None, feature_extractor=None):
        SyncDiffusionFluxPipeline.__init__(self, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                                  transformer, image_encoder, feature_extractor)
        self.add_controlnet(controlnet)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        image=None,
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
        output_type: str = "pil",
        return_dict: bool = True,
        true_cfg_scale: float = 1.0,
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
        other parameters are SyncDiffusionFluxPipeline's, with the ControlSync paper's sync defaults: weight 20,
        decay 0.95, sync in the first 10 steps (of 50); the ControlNets run in every network call
        of a view, the fast modes' included.
        """
        # 1. Check inputs (a ValueError that says what to change, before any model work): the
        #    conditions decide the canvas unless it is given
        check_true_cfg_scale(true_cfg_scale)
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
                    max_sequence_length, true_cfg_scale)
                conditioning = self.with_region_prompts(
                    conditioning, values, count * num_images_per_prompt, negative_prompts,
                    lambda texts, negatives: self.backbone.encode_prompt(texts, negatives, device, max_sequence_length=max_sequence_length, true_cfg_scale=true_cfg_scale))

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
            controlnet = FluxMultiControlNetModel(controlnet)
        self.register_modules(controlnet=controlnet)
        controlnet.requires_grad_(False)
        self.check_controlnets()

    @property
    def controlnets(self) -> list[FluxControlNetModel]:
        if isinstance(self.controlnet, FluxMultiControlNetModel):
            return list(self.controlnet.nets)
        return [self.controlnet]

    def check_controlnets(self) -> None:
        for index, controlnet in enumerate(self.controlnets):
            name = f"ControlNet {index}" if len(self.controlnets) > 1 else "The ControlNet"
            if not isinstance(controlnet, FluxControlNetModel):
                raise ValueError(f"{name} is a {type(controlnet).__name__}: a FLUX model takes FluxControlNetModels.")
            if controlnet.input_hint_block is not None:
                raise ValueError(f"{name} reads pixels through its own hint block (XLabs' kind), which panosync does "
                                 f"not run yet: use a ControlNet of InstantX's kind, which reads VAE latents.")
            if controlnet.union:
                raise ValueError(f"{name} is a union ControlNet, which needs a control mode that panosync does not "
                                 f"take yet: use a ControlNet of one kind of condition.")
            if controlnet.config.in_channels != self.transformer.config.in_channels:
                raise ValueError(f"{name} was made for another transformer ({controlnet.config.in_channels} packed "
                                 f"latent channels; this one has {self.transformer.config.in_channels}): use a "
                                 f"ControlNet trained for this base model.")

    @torch.no_grad()
    def control_conditioning(self, conditions: list[torch.Tensor], scales: list[float]) -> ViewConditioning:
        """Each condition's VAE latent (the posterior's mean), as its ControlNet reads it."""
        latents = [condition_latent(self.vae, condition, self._execution_device, self.compute_dtype,
                                    self.vae.config.shift_factor) for condition in conditions]
        return FluxControlConditioning(self.controlnets, latents, scales, self.transformer.dtype)


@dataclasses.dataclass(frozen=True)
class FluxControlConditioning(LatentConditioning):
    """FLUX ControlSync's part of a request. It gives each view's transformer call the ControlNets'
    block samples for that view's crop of the latents."""

    def network_inputs(self, model_input, t, inputs, views) -> dict:
        """The block samples for a batch of views (`model_input`: their packed tokens, the negative
        prompt's branch first where true CFG runs), from the prompt's branch, summed over the
        ControlNets, repeated for every branch; none at scale 0 (not run). `inputs` are the
        transformer call's, with the request's guidance_scale."""
        if views is None:
            raise TypeError("ControlSync needs the views of the batch to crop the conditions for them.")
        count = len(views)
        branches = model_input.shape[0] // count
        prompt = slice(model_input.shape[0] - count, None)  # the prompt's branch: the last
        blocks = singles = None
        for controlnet, latent, scale in zip(self.controlnets, self.latents, self.scales):
            if scale == 0:
                continue
            dtype = controlnet.dtype
            crops = pack(torch.cat([crop(latent, view) for view in views]))
            guidance = None
            if controlnet.config.guidance_embeds:
                guidance = torch.full([1], inputs["guidance_scale"], device=model_input.device,
                                      dtype=torch.float32).expand(count)
            net_blocks, net_singles = controlnet(
                hidden_states=model_input[prompt].to(dtype), controlnet_cond=crops.to(dtype), conditioning_scale=scale,
                timestep=inputs["timestep"][prompt], guidance=guidance,
                pooled_projections=inputs["pooled_projections"][prompt].to(dtype),
                encoder_hidden_states=inputs["encoder_hidden_states"][prompt].to(dtype), txt_ids=inputs["txt_ids"],
                img_ids=inputs["img_ids"], return_dict=False)
            blocks = _summed(blocks, net_blocks)
            singles = _summed(singles, net_singles)
        if blocks is None and singles is None:
            return {}

        def every_branch(samples):
            if samples is None:
                return None
            return [sample.to(self.transformer_dtype).repeat(branches, 1, 1) for sample in samples]

        return dict(controlnet_block_samples=every_branch(blocks),
                    controlnet_single_block_samples=every_branch(singles), controlnet_blocks_repeat=False)


def _summed(total, samples):
    if samples is None:
        return total
    return list(samples) if total is None else [a + b for a, b in zip(total, samples)]
