"""FLUX.1 (dev, schnell): a CLIP text encoder (its pooled output) and T5 (its hidden states), a
FluxTransformer2DModel on 2x2-packed latent patches with rotary position ids, and guidance as
diffusers' FluxPipeline does it: where the transformer has `guidance_embeds` (dev), the distilled
`guidance_scale` is an input of the network, one pass, no negative prompt; schnell has none. Real
classifier-free guidance with the negative prompt is a separate option, `true_cfg_scale` > 1 (a
second branch, batched with the first).

Each view is packed as its own image: its position ids run from 0 over the view, whatever its place
on the panorama, so every view is what the model saw in training. The window defaults to
diffusers' FluxPipeline's size, 128 latents (1024 pixels); another is a whole number of 2x2
patches. The σ schedule is the pipeline's (linear from 1 to 1/steps), shifted by one view's token
count where the scheduler's config says `use_dynamic_shifting`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..families import FLUX
from .base import PromptConditioning, per_item
from .flow import FlowBackbone, expand_timestep

T5_TOKENS = 512  # diffusers' FluxPipeline's max_sequence_length
DEFAULT_WINDOW = 128  # diffusers' FluxPipeline's default_sample_size, in latent pixels: 1024 pixels at factor 8


@dataclass(frozen=True)
class FluxConditioning(PromptConditioning):
    """embeddings (branches, tokens, width) and pooled (branches, width): the prompt's alone, or with
    true classifier-free guidance (`true_cfg_scale` > 1) the negative prompt's first; image_embeds:
    an IP-Adapter's image prompt (one tensor per adapter, rows as the embeddings'), or None."""

    embeddings: torch.Tensor
    pooled: torch.Tensor
    true_cfg_scale: float = 1.0
    image_embeds: list[torch.Tensor] | None = None

    @property
    def true_cfg(self) -> bool:
        return self.true_cfg_scale > 1


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(n, C, h, w) latents as (n, h/2 · w/2, 4C) tokens: each 2x2 patch one token, row by row."""
    n, channels, height, width = latents.shape
    patches = latents.reshape(n, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(n, (height // 2) * (width // 2), channels * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `pack` for latents of `height` x `width`."""
    n, _, features = tokens.shape
    patches = tokens.reshape(n, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(n, features // 4, height, width)


def position_ids(height: int, width: int, device, dtype) -> torch.Tensor:
    """The rotary ids of a packed (height x width)-latent image: (0, row, column) of each token."""
    rows = torch.arange(height // 2).repeat_interleave(width // 2)
    columns = torch.arange(width // 2).repeat(height // 2)
    return torch.stack([torch.zeros_like(rows), rows, columns], dim=-1).to(device=device, dtype=dtype)


class FluxBackbone(FlowBackbone):
    family = FLUX
    @classmethod
    def window_of(cls, transformer_config) -> int:
        return DEFAULT_WINDOW

    @classmethod
    def patch_of(cls, transformer_config) -> int:
        return 2 * transformer_config.get("patch_size", 1)  # FluxPipeline packs 2x2 latent patches into a token

    def sigmas(self, num_inference_steps: int) -> np.ndarray | None:
        if self.pipe.scheduler.config.get("use_flow_sigmas"):
            return None
        return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)

    @torch.no_grad()
    def encode_prompt(self, prompts, negative_prompts, device, num_images_per_prompt=1, prompt_embeds=None,
                      negative_prompt_embeds=None, pooled_prompt_embeds=None, negative_pooled_prompt_embeds=None,
                      max_sequence_length: int = T5_TOKENS, true_cfg_scale: float = 1.0) -> FluxConditioning:
        """Each prompt's T5 context and CLIP pooled embedding (or those given); with true CFG the
        negative prompts' before them."""
        if prompt_embeds is None:
            embeddings, pooled = self.encode_text(prompts, device, max_sequence_length)
        else:
            embeddings, pooled = prompt_embeds.to(device), pooled_prompt_embeds.to(device)
        if true_cfg_scale > 1:
            if negative_prompt_embeds is None:
                negative, negative_pooled = self.encode_text(negative_prompts, device, max_sequence_length)
            else:
                negative, negative_pooled = negative_prompt_embeds.to(device), negative_pooled_prompt_embeds.to(device)
            embeddings, pooled = torch.cat([negative, embeddings]), torch.cat([negative_pooled, pooled])
        return FluxConditioning(embeddings.repeat_interleave(num_images_per_prompt, dim=0),
                                pooled.repeat_interleave(num_images_per_prompt, dim=0), float(true_cfg_scale))

    def encode_text(self, texts: list[str], device, max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each text's T5 hidden states and CLIP pooled output."""
        pipe = self.pipe
        ids = pipe.tokenizer(self.prompt_texts(texts, pipe.tokenizer), padding="max_length",
                             max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt")
        pooled = pipe.text_encoder(ids.input_ids.to(device), output_hidden_states=False).pooler_output
        ids = pipe.tokenizer_2(self.prompt_texts(texts, pipe.tokenizer_2), padding="max_length",
                               max_length=max_sequence_length, truncation=True, return_tensors="pt")
        hidden = pipe.text_encoder_2(ids.input_ids.to(device), output_hidden_states=False)[0]
        return hidden.to(device, pipe.text_encoder_2.dtype), pooled.to(device, pipe.text_encoder.dtype)

    def guided_prediction(self, latents, t, conditioning: FluxConditioning, guidance_scale, views=None,
                          extras=None, attention_kwargs=None) -> torch.Tensor:
        """v̂ for a batch of views, each packed as its own image; with true CFG,
        v_u + s (v_c − v_u) over a batch of both branches. `extras` add each view's inputs
        (ControlSync's block samples, control_flux.py), given the call's and the guidance scale."""
        transformer = self.pipe.transformer
        dtype = transformer.dtype
        count, _, height, width = latents.shape
        branches = 2 if conditioning.true_cfg else 1
        tokens = pack(latents).to(dtype).repeat(branches, 1, 1)
        embeddings = torch.cat([per_item(branch, count) for branch in conditioning.embeddings.chunk(branches)]).to(dtype)
        pooled = torch.cat([per_item(branch, count) for branch in conditioning.pooled.chunk(branches)]).to(dtype)
        guidance = None
        if transformer.config.guidance_embeds:  # dev: the distilled guidance is an input; schnell has none
            guidance = torch.full([1], guidance_scale, device=latents.device, dtype=torch.float32).expand(len(tokens))
        text_ids = torch.zeros(embeddings.shape[1], 3, device=latents.device, dtype=self.pipe.text_encoder.dtype)
        inputs = dict(timestep=expand_timestep(t, len(tokens), dtype) / 1000, guidance=guidance,
                      pooled_projections=pooled, encoder_hidden_states=embeddings, txt_ids=text_ids,
                      img_ids=position_ids(height, width, latents.device, self.pipe.text_encoder_2.dtype))
        if extras is not None:
            inputs |= extras.network_inputs(tokens, t, dict(inputs, guidance_scale=guidance_scale), views)
        if conditioning.image_embeds is not None:
            # the image prompt of each item of the batch; a dict of this call's own, which the
            # transformer empties of it
            attention_kwargs = {**(attention_kwargs or {}), "ip_adapter_image_embeds": [
                torch.cat([per_item(branch, count) for branch in embeds.chunk(branches)]).to(dtype)
                for embeds in conditioning.image_embeds]}
        prediction = transformer(hidden_states=tokens, **inputs, joint_attention_kwargs=attention_kwargs,
                                 return_dict=False)[0]
        prediction = unpack(prediction, height, width).to(self.pipe.compute_dtype)
        if not conditioning.true_cfg:
            return prediction
        negative, positive = prediction.chunk(2)
        return negative + conditioning.true_cfg_scale * (positive - negative)
