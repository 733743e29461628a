"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, its last hidden states as the UNet's
cross-attention context; ε- or v-prediction (x̂₀ from the scheduler, schedulers.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import PromptConditioning
from .unet import UNetBackbone


@dataclass(frozen=True)
class TextConditioning(PromptConditioning):
    """embeddings: (2, tokens, width), the negative prompt's, then the prompt's."""

    embeddings: torch.Tensor


class StableDiffusionBackbone(UNetBackbone):
    @torch.no_grad()
    def encode_prompt(self, prompt, negative_prompt, device, **options) -> TextConditioning:
        if options:
            raise TypeError(f"Stable Diffusion's prompt takes no options, got {', '.join(options)}.")
        tokenizer, text_encoder = self.pipe.tokenizer, self.pipe.text_encoder
        embeddings = []
        for text in (negative_prompt, prompt):
            tokens = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                               return_tensors="pt")
            embeddings.append(text_encoder(tokens.input_ids.to(device))[0])
        return TextConditioning(torch.cat(embeddings))

    def unet_inputs(self, conditioning: TextConditioning | torch.Tensor, count: int) -> dict:
        # a bare tensor: the embeddings, as encode_prompt returned them before it returned a TextConditioning
        embeddings = conditioning if isinstance(conditioning, torch.Tensor) else conditioning.embeddings
        # in the UNet's dtype (the text encoder's may differ)
        return dict(encoder_hidden_states=embeddings.repeat_interleave(count, dim=0).to(self.pipe.unet.dtype))
