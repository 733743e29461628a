"""ControlSync3Pipeline: ControlSync with Stable Diffusion 3 / 3.5 and SD3 ControlNets.

ControlSyncPipeline's call (conditions of the canvas's size, fitted or refused, one scale per
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

from .control import ControlSyncPipeline, LatentConditioning, condition_latent
from .pipeline import ViewConditioning
from .backbones.flow import check_max_sequence_length
from .backbones.sd3 import T5_TOKENS
from .sd3 import DEFAULT_SD3_GUIDANCE, SyncDiffusion3Pipeline
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


class ControlSync3Pipeline(ControlSyncPipeline, SyncDiffusion3Pipeline):
    """ControlSync with an SD3 / 3.5 model and SD3 ControlNets (one, a list, or an
    SD3MultiControlNetModel). Components as in diffusers' StableDiffusion3ControlNetPipeline;
    the call is ControlSyncPipeline's."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->text_encoder_3->controlnet->transformer->vae"

    def __init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
                 text_encoder_3, tokenizer_3, controlnet, image_encoder=None, feature_extractor=None):
        SyncDiffusion3Pipeline.__init__(self, transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2,
                                        tokenizer_2, text_encoder_3, tokenizer_3, image_encoder, feature_extractor)
        self.add_controlnet(controlnet)

    @torch.no_grad()
    def __call__(self, prompt: str, image=None, *, max_sequence_length: int = T5_TOKENS, **parameters):
        """ControlSyncPipeline's call with SyncDiffusion3Pipeline's options: `guidance_scale`
        default 7 (diffusers'), `max_sequence_length`."""
        check_max_sequence_length(max_sequence_length)
        parameters.setdefault("guidance_scale", DEFAULT_SD3_GUIDANCE)
        return ControlSyncPipeline.__call__(self, prompt, image, max_sequence_length=max_sequence_length,
                                            **parameters)

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

    def unet_inputs(self, model_input, t, inputs, views) -> dict:
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
