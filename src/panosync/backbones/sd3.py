"""Stable Diffusion 3 / 3.5: three text encoders (two CLIPs, whose penultimate hidden states sit
side by side, padded to T5's width, before T5's hidden states; the CLIPs' projections,
concatenated, are the pooled embedding), an SD3Transformer2DModel on patches of the latent, and
real classifier-free guidance with the negative prompt, as diffusers' StableDiffusion3Pipeline
does it: one batch of both branches where guidance_scale > 1, the prompt's branch alone otherwise.
Its skip-layer guidance is not used (diffusers' default: off).

The window defaults to the transformer's `sample_size` (128 latents, 1024 pixels, for SD3 and
SD3.5 medium); another is a whole number of patches, within its position embedding
(`pos_embed_max_size` patches)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..families import SD3
from .base import PromptConditioning, per_item
from .flow import FlowBackbone, expand_timestep

T5_TOKENS = 256  # diffusers' StableDiffusion3Pipeline's max_sequence_length


@dataclass(frozen=True)
class SD3Conditioning(PromptConditioning):
    """embeddings (2, tokens, width) and pooled (2, width): the negative prompt's, then the prompt's;
    image_embeds: an IP-Adapter's image prompt (rows as the embeddings'), or None."""

    embeddings: torch.Tensor
    pooled: torch.Tensor
    image_embeds: torch.Tensor | None = None


class StableDiffusion3Backbone(FlowBackbone):
    family = SD3
    default_max_shift = 1.16

    @classmethod
    def window_of(cls, transformer_config) -> int:
        size = transformer_config["sample_size"]
        return size if isinstance(size, int) else size[0]

    @classmethod
    def patch_of(cls, transformer_config) -> int:
        return transformer_config["patch_size"]

    @classmethod
    def max_window_of(cls, transformer_config) -> int | None:
        largest = transformer_config.get("pos_embed_max_size")
        return None if largest is None else largest * transformer_config["patch_size"]

    @torch.no_grad()
    def encode_prompt(self, prompts, negative_prompts, device, num_images_per_prompt=1, prompt_embeds=None,
                      negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                      max_sequence_length: int = T5_TOKENS) -> SD3Conditioning:
        """Each prompt's and negative prompt's context and pooled embedding (or those given)."""
        if prompt_embeds is None:
            embeddings, pooled = self.encode_text(prompts, device, max_sequence_length)
        else:
            embeddings, pooled = prompt_embeds.to(device), pooled_prompt_embeds.to(device)
        if negative_prompt_embeds is None:
            negative, negative_pooled = self.encode_text(negative_prompts, device, max_sequence_length)
        else:
            negative, negative_pooled = negative_prompt_embeds.to(device), negative_pooled_prompt_embeds.to(device)
        return SD3Conditioning(torch.cat([negative, embeddings]).repeat_interleave(num_images_per_prompt, dim=0),
                               torch.cat([negative_pooled, pooled]).repeat_interleave(num_images_per_prompt, dim=0))

    def encode_text(self, texts: list[str], device, max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text's context (the CLIPs' penultimate hidden states, padded, then T5's) and pooled
        embedding (the CLIPs' projections)."""
        pipe = self.pipe
        hidden, pooled = [], []
        length = pipe.tokenizer.model_max_length  # diffusers reads both CLIPs' length from the first tokenizer
        for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            ids = tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
            output = encoder(ids.input_ids.to(device), output_hidden_states=True)
            pooled.append(output[0])
            hidden.append(output.hidden_states[-2].to(device, pipe.text_encoder.dtype))
        clip = torch.cat(hidden, dim=-1)
        if pipe.text_encoder_3 is None:  # SD3 runs without T5: zeros in its place, as diffusers gives
            t5 = torch.zeros((len(texts), max_sequence_length, pipe.transformer.config.joint_attention_dim), device=device,
                             dtype=pipe.text_encoder.dtype)
        else:
            ids = pipe.tokenizer_3(texts, padding="max_length", max_length=max_sequence_length, truncation=True,
                                   add_special_tokens=True, return_tensors="pt")
            t5 = pipe.text_encoder_3(ids.input_ids.to(device))[0].to(device, pipe.text_encoder_3.dtype)
        if clip.shape[-1] > t5.shape[-1]:
            raise ValueError(f"This SD3 model's CLIP embeddings ({clip.shape[-1]} wide) are wider than its T5's "
                             f"({t5.shape[-1]}): the model's components do not belong together.")
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)

    def guided_prediction(self, latents, t, conditioning: SD3Conditioning, guidance_scale, views=None,
                          extras=None, attention_kwargs=None) -> torch.Tensor:
        """v̂ = v_u + g (v_c − v_u) where g > 1 (one batch of both branches), v_c otherwise; `extras`
        add each view's inputs (ControlSync's block samples, control_sd3.py)."""
        transformer = self.pipe.transformer
        dtype = transformer.dtype
        count = latents.shape[0]
        guided = guidance_scale > 1
        branches = (0, 1) if guided else (1,)
        model_input = torch.cat([latents] * len(branches)).to(dtype)
        embeddings = torch.cat([per_item(conditioning.embeddings.chunk(2)[b], count) for b in branches]).to(dtype)
        pooled = torch.cat([per_item(conditioning.pooled.chunk(2)[b], count) for b in branches]).to(dtype)
        inputs = dict(timestep=expand_timestep(t, model_input.shape[0]), encoder_hidden_states=embeddings,
                      pooled_projections=pooled)
        if extras is not None:
            inputs |= extras.network_inputs(model_input, t, inputs, views)
        if conditioning.image_embeds is not None:
            # the image prompt of each item of the batch; a dict of this call's own, which the
            # transformer empties of it
            image_embeds = torch.cat([per_item(conditioning.image_embeds.chunk(2)[b], count) for b in branches])
            attention_kwargs = {**(attention_kwargs or {}), "ip_adapter_image_embeds": image_embeds.to(dtype)}
        prediction = transformer(hidden_states=model_input, **inputs, joint_attention_kwargs=attention_kwargs,
                                 return_dict=False)[0].to(self.pipe.compute_dtype)
        if not guided:
            return prediction
        unconditional, conditional = prediction.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)
