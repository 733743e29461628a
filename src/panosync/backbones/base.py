"""The backbone adapter: everything a model family changes in the joint diffusion, behind one small
interface (docs/algorithm.md, "Other backbones").

SyncDiffusion needs four things of a model: the prompt's conditioning, a guided prediction for a
batch of latent views, the clean latent x̂₀ that prediction foresees (differentiable, for the sync
gradient), and the scheduler's step; and at the end, and in every synced step, the VAE's decode.
A `Backbone` gives exactly these for one family (SD 1/2, SDXL, and the flow-matching
transformers SD3 and FLUX), and the pipeline's loop (views, anchor, sync gradient, fast modes, merge, loop
closure, tiled decode) is written once over it.

What is the same for every family lives here: decoding with a diffusers VAE in the pipeline's
precision, and moving a VAE that overflows float16 to float32 where its config allows it
(`force_upcast`: SDXL's VAE needs it).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from contextlib import nullcontext
from typing import TYPE_CHECKING, Protocol

import torch

from ..geometry import MAX_STEPS, Geometry
from ..schedulers import first_step_unet

if TYPE_CHECKING:
    from ..views import View

log = logging.getLogger("panosync")


class PromptConditioning:
    """A family's encoding of a call's prompts, for classifier-free guidance: the negative prompts'
    first, then the prompts', one per panorama in each branch. Opaque to the loop: only its
    backbone reads it."""


def per_item(branch: torch.Tensor, count: int) -> torch.Tensor:
    """One branch's conditioning (one row per panorama) for a batch of `count` view latents, which
    hold the same views of every panorama, view by view: the rows repeated count / panoramas times."""
    return branch.repeat(count // branch.shape[0], *[1] * (branch.ndim - 1))


def both_branches(stacked: torch.Tensor, count: int) -> torch.Tensor:
    """The negative branch's rows, then the prompt's (stacked as encode_prompt gives them), each
    for a batch of `count` view latents (per_item)."""
    return torch.cat([per_item(branch, count) for branch in stacked.chunk(2)])


def prompt_rows(conditioning: PromptConditioning, rows: list[int], prompt_count: int) -> PromptConditioning:
    """The conditioning of `prompt_count` prompts (rows) narrowed, in every guidance branch, to
    `rows`, one per item of a batch: the same dataclass, its per-prompt tensors (those with one row
    per prompt in each branch) indexed, the rest (shared by every prompt) unchanged."""
    branches = conditioning.embeddings.shape[0] // prompt_count
    index = torch.tensor(rows, device=conditioning.embeddings.device)

    def take(value):
        if isinstance(value, list):
            return [take(item) for item in value]
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == branches * prompt_count:
            return torch.cat([branch[index.to(value.device)] for branch in value.chunk(branches)])
        return value

    return dataclasses.replace(conditioning, **{field.name: take(getattr(conditioning, field.name))
                                                for field in dataclasses.fields(conditioning)})


def joined_prompts(first: PromptConditioning, first_count: int, second: PromptConditioning,
                   second_count: int) -> PromptConditioning:
    """One conditioning of the prompts of `first` (first_count rows per branch), then those of
    `second`: their per-prompt tensors joined branch by branch; what is not per prompt (an image
    prompt, an inpainting UNet's inputs, SDXL's size ids, FLUX's true CFG scale) is first's."""
    branches = first.embeddings.shape[0] // first_count

    def join(name: str, value):
        other = getattr(second, name)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor) and value.ndim and \
                value.shape[0] == branches * first_count and other.shape[0] == branches * second_count:
            return torch.cat([part for pair in zip(value.chunk(branches), other.to(value).chunk(branches))
                              for part in pair])
        return value

    return dataclasses.replace(first, **{field.name: join(field.name, getattr(first, field.name))
                                         for field in dataclasses.fields(first)})


class ViewConditioning:
    """What conditions each view's network call besides the prompt (ControlSync's ControlNets,
    control*.py), given to every network call of a view. None is plain SyncDiffusion."""

    def network_inputs(self, model_input: torch.Tensor, t, inputs: dict, views: list[View]) -> dict:
        """More keyword arguments for the network's call on `model_input` (both guidance branches of
        `views`, unconditional first), given the call's other keyword `inputs` (the prompt's
        conditioning in the network's dtype: encoder_hidden_states, and SDXL's added_cond_kwargs)."""
        raise NotImplementedError


class Sampler(Protocol):
    """The scheduler state of one panorama's views: the timesteps, x̂₀ and the step.

    `views` in `step` are the indices of the views in the batch, in its order: a multistep solver
    keeps one history per view."""

    timesteps: torch.Tensor
    init_noise_sigma: float

    def predicted_original(self, x: torch.Tensor, prediction: torch.Tensor, t) -> torch.Tensor: ...

    def step(self, views: list[int], x: torch.Tensor, prediction: torch.Tensor, t) -> torch.Tensor: ...

    def skip(self, steps: int) -> None: ...

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor: ...


class Backbone(ABC):
    """One model family's side of the joint diffusion, over a pipeline's components.

    It holds the pipeline and reads its components when called, so that `.to()`, a component
    replaced after loading, or an upcast VAE are always seen."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.vae_upcast = False  # the VAE was moved to float32 after overflowing in float16

    # ------------------------------------------------------------------------------ geometry

    @property
    @abstractmethod
    def network(self) -> torch.nn.Module:
        """The denoising network (a UNet, a transformer): its dtype is the pipeline's weights' dtype."""

    @property
    @abstractmethod
    def window(self) -> int:
        """The side of a view in latent pixels: the network's native size."""

    @property
    def latent_channels(self) -> int:
        return self.pipe.vae.config.latent_channels

    # whether loading switches the model's own scheduler to DDIM (the UNet families: the paper's sampler)
    switches_to_ddim = False
    # whether the network reads a mask and a masked image's latent beside the latents (an inpainting UNet)
    reads_inpainting_channels = False

    def geometry(self, vae_factor: int) -> Geometry:
        """What the request checks need of this model (geometry.Geometry): the default window, the
        steps its scheduler allows; a family that lets the window be chosen says how."""
        return Geometry(self.window, vae_factor, self.most_steps())

    def most_steps(self) -> int:
        """The most denoising steps the scheduler allows."""
        return MAX_STEPS

    @abstractmethod
    def check_scheduler(self, scheduler) -> None:
        """A ValueError that says which schedulers this family steps with, for any other."""

    # ---------------------------------------------------------------------- the four things

    @abstractmethod
    def encode_prompt(self, prompts: list[str], negative_prompts: list[str], device, num_images_per_prompt: int = 1,
                      **options) -> PromptConditioning:
        """The conditioning of one panorama per prompt and image (num_images_per_prompt of each
        prompt, side by side); `options` are a family's own: embeddings given in place of prompts
        (prompt_embeds, ...), SDXL's size conditioning, T5's token count."""

    def prompt_texts(self, texts: list[str], tokenizer) -> list[str]:
        """`texts` with each textual-inversion token the pipeline loaded spelled out as the tokens of
        its embedding's vectors (diffusers' TextualInversionLoaderMixin.maybe_convert_prompt), for
        `tokenizer`; unchanged for a pipeline without that loader."""
        convert = getattr(self.pipe, "maybe_convert_prompt", None)
        return list(texts) if convert is None else convert(list(texts), tokenizer)

    @abstractmethod
    def guided_prediction(self, latents: torch.Tensor, t, conditioning: PromptConditioning, guidance_scale: float,
                          views: list[View] | None = None, extras: ViewConditioning | None = None,
                          attention_kwargs: dict | None = None) -> torch.Tensor:
        """The guided prediction for a batch of view latents (N, C, w, w): the same views of every
        panorama, view by view, in the pipeline's compute dtype (differentiable in `latents`).
        `views` names each item's view; `extras` add each view's own inputs (ControlSync's
        residuals); `attention_kwargs` go to the network's attention processors (a LoRA's scale)."""

    @staticmethod
    def first_step(steps: int, strength: float) -> int:
        """The index of the first of `steps` steps an image input of this strength runs, counted as
        the family's diffusers img2img pipeline counts it."""
        return first_step_unet(steps, strength)

    @abstractmethod
    def sampler(self, num_inference_steps: int, view_count: int, device, multistep: bool = False,
                window: int | None = None) -> Sampler:
        """The timesteps of a call, x̂₀ and the step, for `view_count` views of side `window`
        latent pixels (None: the default); `multistep`: the fast mode dpm_solver, a multistep
        solver of the same noise schedule."""

    # ---------------------------------------------------------------------------- decoding

    def encoder_output(self, sample: torch.Tensor) -> torch.Tensor:
        """The diffusion's latent of a sample of the VAE's encoding: (sample − shift) · scaling_factor,
        the inverse of decoder_input."""
        config = self.pipe.vae.config
        shift = config.get("shift_factor")
        return ((sample - shift) if shift else sample) * config.scaling_factor

    def latent_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and standard deviation of the VAE's latent distribution for images in [-1, 1]
        (its dtype, on its device), encoded again in float32 where float16 overflows and the config
        allows it (as decode does)."""
        vae = self.pipe.vae
        distribution = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
        if self.vae_may_upcast and not torch.isfinite(distribution.mean).all():
            self.upcast_vae()
            with torch.autocast(images.device.type, enabled=False):
                distribution = vae.encode(images.to(vae.device, torch.float32)).latent_dist
        return distribution.mean, distribution.std

    def decoder_input(self, latents: torch.Tensor, decoder) -> torch.Tensor:
        """What `decoder` decodes for a latent of the diffusion: latents / scaling_factor, shifted
        where the VAE's config has a shift (SD3, FLUX)."""
        scaled = latents / decoder.config.scaling_factor
        shift = decoder.config.get("shift_factor")
        return scaled + shift if shift else scaled

    @property
    def vae_may_upcast(self) -> bool:
        """Whether the VAE may be moved to float32 when it overflows in float16: its config's
        `force_upcast` (diffusers' flag; SDXL's VAE overflows in float16) and the VAE computing in
        float16 (its weights, or autocast)."""
        vae = self.pipe.vae
        in_float16 = vae.dtype == torch.float16 or (self.pipe.autocast_dtype == torch.float16 and not self.vae_upcast)
        return bool(vae.config.get("force_upcast", False)) and in_float16

    def upcast_vae(self) -> None:
        """Decode in float32 from now on: the VAE's weights in float32, and autocast off around it.
        Done at the first float16 decode that overflows, not up front: diffusers fills a config
        without the key with force_upcast=True, and Stable Diffusion 1 and 2's VAEs, which decode
        well in float16, would otherwise pay float32's cost in every synced step."""
        log.warning("The VAE overflowed in float16; its config allows float32 (force_upcast), so it decodes in "
                    "float32 from now on.")
        # nn.Module's own .to: diffusers warns against casting a loaded model, meant for going down
        # to half precision, not back up
        torch.nn.Module.to(self.pipe.vae, torch.float32)
        self.vae_upcast = True

    def decode(self, latents: torch.Tensor, decoder=None) -> torch.Tensor:
        """The decoder's image of `latents` in [-1, 1] (not clamped), in the compute dtype: the VAE,
        or another `decoder` of the same latents (a fast mode's tiny decoder). A VAE that
        overflows in float16 and may be upcast (vae_may_upcast) decodes again in float32."""
        vae = self.pipe.vae
        decoder = vae if decoder is None else decoder
        images = self._decode(decoder, latents)
        if decoder is vae and self.vae_may_upcast and not torch.isfinite(images).all():
            self.upcast_vae()
            images = self._decode(vae, latents)
        return images

    def _decode(self, decoder, latents: torch.Tensor) -> torch.Tensor:
        full_precision = decoder is self.pipe.vae and self.vae_upcast
        with torch.autocast(latents.device.type, enabled=False) if full_precision else nullcontext():
            scaled = self.decoder_input(latents, decoder)
            return decoder.decode(scaled.to(decoder.dtype)).sample.to(self.pipe.compute_dtype)
