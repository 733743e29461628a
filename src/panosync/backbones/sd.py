"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, its last hidden states as the UNet's
cross-attention context; ε- or v-prediction (x̂₀ from the scheduler, schedulers.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import PromptConditioning, both_branches
from .unet import UNetBackbone


@dataclass(frozen=True)
class TextConditioning(PromptConditioning):
    """embeddings: (2, tokens, width), the negative prompt's, then the prompt's; image_embeds: an
    IP-Adapter's image prompt (one tensor per adapter, negative rows first), or None."""

    embeddings: torch.Tensor
    image_embeds: list[torch.Tensor] | None = None
    inpainting: torch.Tensor | None = None  # an inpainting UNet's mask and masked image latent (UNetBackbone)


class StableDiffusionBackbone(UNetBackbone):
    @torch.no_grad()
    def encode_prompt(self, prompts, negative_prompts, device, num_images_per_prompt=1, prompt_embeds=None,
                      negative_prompt_embeds=None) -> TextConditioning:
        """The text encoder's last hidden states of each prompt (or `prompt_embeds` in their place),
        and of each negative prompt (or `negative_prompt_embeds`)."""
        positive = self.encode_text(prompts, device) if prompt_embeds is None else prompt_embeds.to(device)
        negative = self.encode_text(negative_prompts, device) if negative_prompt_embeds is None else \
            negative_prompt_embeds.to(device)
        embeddings = torch.cat([negative, positive]).repeat_interleave(num_images_per_prompt, dim=0)
        return TextConditioning(embeddings)

    def encode_text(self, texts: list[str], device) -> torch.Tensor:
        """(len(texts), tokens, width): the text encoder's last hidden states, in its dtype."""
        tokenizer = self.pipe.tokenizer
        tokens = tokenizer(self.prompt_texts(texts, tokenizer), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt")
        return self.pipe.text_encoder(tokens.input_ids.to(device))[0]

    def unet_inputs(self, conditioning: TextConditioning, count: int) -> dict:
        # in the UNet's dtype (the text encoder's may differ)
        return dict(encoder_hidden_states=both_branches(conditioning.embeddings, count).to(self.pipe.unet.dtype))
