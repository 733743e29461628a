"""Stable Diffusion XL: two CLIP text encoders (their penultimate hidden states, concatenated, as
the cross-attention context), the second's pooled embedding, and micro-conditioning on sizes, all
fed to the UNet as `added_cond_kwargs`.

Each view is an image of the model's native size, so its natural size conditioning is what
diffusers' StableDiffusionXLPipeline gives an image of the window's size: original = target = the
window in pixels, crop (0, 0). An empty negative prompt is zeros where the model says
`force_zeros_for_empty_prompt` (diffusers does so for a negative prompt of None; here "" is the
default and means the same). So a one-window canvas is the model's own image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import PromptConditioning, both_branches
from .unet import UNetBackbone


@dataclass(frozen=True)
class XLConditioning(PromptConditioning):
    """embeddings (2, tokens, width), pooled (2, projection) and time_ids (2, 6): the negative
    prompt's, then the prompt's; image_embeds: an IP-Adapter's image prompt (one tensor per adapter,
    negative rows first), or None."""

    embeddings: torch.Tensor
    pooled: torch.Tensor
    time_ids: torch.Tensor
    image_embeds: list[torch.Tensor] | None = None
    inpainting: torch.Tensor | None = None  # an inpainting UNet's mask and masked image latent (UNetBackbone)


def size_conditioning(window_pixels: int, original_size=None, crops_coords_top_left=(0, 0),
                      target_size=None) -> tuple[int, ...]:
    """SDXL's time ids: (original height, width, crop top, left, target height, width); the sizes
    default to a view's, the window in pixels."""
    window = (window_pixels, window_pixels)
    original = tuple(original_size or window)
    target = tuple(target_size or window)
    crop = tuple(crops_coords_top_left)
    if len(original) != 2 or len(target) != 2 or len(crop) != 2:
        raise ValueError(f"original_size, target_size and crops_coords_top_left are pairs (height, width), (top, "
                         f"left); got {original_size}, {target_size}, {crops_coords_top_left}.")
    return original + crop + target


class StableDiffusionXLBackbone(UNetBackbone):
    @torch.no_grad()
    def encode_prompt(self, prompts, negative_prompts, device, num_images_per_prompt=1, prompt_embeds=None,
                      negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                      original_size=None, crops_coords_top_left=(0, 0), target_size=None) -> XLConditioning:
        """Each prompt's context and pooled embedding (or those given), each negative prompt's
        (zeros for empty ones where the model says force_zeros_for_empty_prompt), and the size
        conditioning, the same for every view."""
        if prompt_embeds is None:
            embeddings, pooled = self.encode_text(prompts, device)
        else:
            embeddings, pooled = prompt_embeds.to(device), pooled_prompt_embeds.to(device)
        if negative_prompt_embeds is not None:
            negative, negative_pooled = negative_prompt_embeds.to(device), negative_pooled_prompt_embeds.to(device)
        elif not any(negative_prompts) and self.pipe.config.force_zeros_for_empty_prompt:
            negative, negative_pooled = torch.zeros_like(embeddings), torch.zeros_like(pooled)
        else:
            negative, negative_pooled = self.encode_text(negative_prompts, device)
        ids = size_conditioning(self.window * self.pipe.vae_scale_factor, original_size, crops_coords_top_left,
                                target_size)
        self.check_added_inputs(len(ids), pooled.shape[-1])
        time_ids = torch.tensor([ids, ids], dtype=embeddings.dtype, device=device)
        return XLConditioning(torch.cat([negative, embeddings]).repeat_interleave(num_images_per_prompt, dim=0),
                              torch.cat([negative_pooled, pooled]).repeat_interleave(num_images_per_prompt, dim=0),
                              time_ids)

    def encode_text(self, texts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text's context (both encoders' penultimate hidden states, side by side) and pooled
        embedding (the first encoder's that has one: the second's, CLIPTextModelWithProjection)."""
        pipe = self.pipe
        hidden, pooled = [], None
        for tokenizer, text_encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
            tokens = tokenizer(self.prompt_texts(texts, tokenizer), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                               return_tensors="pt")
            output = text_encoder(tokens.input_ids.to(device), output_hidden_states=True)
            if pooled is None and output[0].ndim == 2:
                pooled = output[0]
            hidden.append(output.hidden_states[-2])
        dtype = pipe.text_encoder_2.dtype
        return torch.cat(hidden, dim=-1).to(device, dtype), pooled.to(device, dtype)

    def check_added_inputs(self, time_ids: int, pooled_width: int) -> None:
        """The UNet's added embedding must take the time ids and the pooled embedding this model gives."""
        unet = self.pipe.unet
        expected = unet.add_embedding.linear_1.in_features
        given = unet.config.addition_time_embed_dim * time_ids + pooled_width
        if expected != given:
            raise ValueError(f"This SDXL UNet's added conditioning takes {expected} numbers, but its text encoder and "
                             f"size conditioning give {given}: the model's components do not belong together.")

    def unet_inputs(self, conditioning: XLConditioning, count: int) -> dict:
        dtype = self.pipe.unet.dtype
        return dict(encoder_hidden_states=both_branches(conditioning.embeddings, count).to(dtype),
                    added_cond_kwargs=dict(text_embeds=both_branches(conditioning.pooled, count).to(dtype),
                                           time_ids=both_branches(conditioning.time_ids, count).to(dtype)))
