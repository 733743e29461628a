"""The UNet families (Stable Diffusion 1/2 and SDXL): ε- or v-predicting UNets on a DDPM noise
schedule, stepped by DDIM (or, as a fast mode, DPM-Solver++). What the two share is here: the
guided UNet call and the sampler; each family says how it encodes the prompt and what the UNet's
call takes besides the latents (`unet_inputs`)."""

from __future__ import annotations

from abc import abstractmethod

import torch

from ..schedulers import SUPPORTED, ViewSchedulers, most_steps, multistep_like
from ..geometry import MAX_STEPS, window_of
from ..views import crop
from .base import Backbone, PromptConditioning, ViewConditioning, both_branches


class UNetBackbone(Backbone):
    @property
    def network(self) -> torch.nn.Module:
        return self.pipe.unet

    @property
    def window(self) -> int:
        return window_of(self.pipe.unet.config)

    @property
    def latent_channels(self) -> int:
        # what the UNet predicts: an inpainting UNet reads more (the mask and the masked image's latent)
        return self.pipe.unet.config.out_channels

    @property
    def reads_inpainting_channels(self) -> bool:
        """Whether the UNet is an inpainting one (Stable Diffusion's 9 channels: the latents, the
        mask, the masked image's latent)."""
        config = self.pipe.unet.config
        return config.in_channels == 2 * config.out_channels + 1

    switches_to_ddim = True

    def most_steps(self) -> int:
        return most_steps(self.pipe.scheduler, MAX_STEPS)

    def check_scheduler(self, scheduler) -> None:
        if not isinstance(scheduler, SUPPORTED):
            # The loop steps every view from the same timestep: DDIM's step keeps no state, and
            # DPM-Solver++ gets one copy per view (schedulers.py); others are not written for that.
            raise ValueError(f"the scheduler must be DDIMScheduler or DPMSolverMultistepScheduler, got "
                             f"{type(scheduler).__name__}.")

    @abstractmethod
    def unet_inputs(self, conditioning: PromptConditioning, count: int) -> dict:
        """The UNet's keyword inputs besides the latents and t for `count` view latents in both
        guidance branches (negative first), in the UNet's dtype."""

    def guided_prediction(self, latents, t, conditioning, guidance_scale, views=None,
                          extras: ViewConditioning | None = None, attention_kwargs: dict | None = None) -> torch.Tensor:
        """ε̂ = ε_u + g (ε_c − ε_u) (or v̂ likewise) for a batch of views, in the compute dtype."""
        unet = self.pipe.unet
        count = latents.shape[0]
        model_input = self.pipe.scheduler.scale_model_input(torch.cat([latents, latents]), t).to(unet.dtype)
        inputs = self.unet_inputs(conditioning, count)
        image_embeds = getattr(conditioning, "image_embeds", None)
        if image_embeds is not None:  # an IP-Adapter's image prompt, the same for every view
            added = inputs.setdefault("added_cond_kwargs", {})
            added["image_embeds"] = [both_branches(embeds, count).to(unet.dtype) for embeds in image_embeds]
        inpainting = getattr(conditioning, "inpainting", None)
        if inpainting is not None:  # each item's crop of the mask and the masked image's latent, both branches
            panoramas = inpainting.shape[0]
            crops = torch.cat([crop(inpainting[k % panoramas : k % panoramas + 1], view)
                               for k, view in enumerate(views)])
            model_input = torch.cat([model_input, torch.cat([crops, crops]).to(model_input.dtype)], dim=1)
        if extras is not None:
            inputs |= extras.network_inputs(model_input, t, inputs, views)
        prediction = unet(model_input, t, **inputs, cross_attention_kwargs=attention_kwargs).sample
        prediction = prediction.to(self.pipe.compute_dtype)
        unconditional, conditional = prediction.chunk(2)
        return unconditional + guidance_scale * (conditional - unconditional)

    def sampler(self, num_inference_steps, view_count, device, multistep=False, window=None) -> ViewSchedulers:
        scheduler = multistep_like(self.pipe.scheduler) if multistep else self.pipe.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        return ViewSchedulers(scheduler, view_count)
