"""The flow-matching transformers (Stable Diffusion 3 / 3.5 and FLUX.1): what the two share.

The latent moves on a straight line, x_σ = (1−σ)·x₀ + σ·ε, and the network predicts the velocity
v̂ ≈ ε − x₀ (docs/algorithm.md, "Other backbones"). So the clean latent a prediction foresees is
x̂₀ = x_σ − σ·v̂ (differentiable in x: the sync gradient flows through it and the transformer), and
the scheduler's step is Euler's, x_σ' = x_σ + (σ' − σ)·v̂.

diffusers' FlowMatchEulerDiscreteScheduler counts its steps itself (one `step` call, one step
forward), so it cannot step every view from the same σ; `FlowSampler` takes its σ schedule and
does the same arithmetic for any number of views. The schedule's shift is the scheduler's: static
(SD3's config) or, where the config says `use_dynamic_shifting` (FLUX), computed from the token
count of one view, as diffusers computes it for one image of the window's size.

These models have no single native size: the window is a parameter (geometry.Geometry), in steps
of the transformer's patch (FLUX: 2x2-packed latents, SD3: its patch size).
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..geometry import MAX_STEPS, Geometry
from ..schedulers import first_step_flow
from .base import Backbone

# dpm_solver is a multistep solver of the UNets' DDPM schedule; these models step with their own
# Euler scheduler, and what its solver would be is another model's result.
DPM_SOLVER_REFUSED = ("dpm_solver", "fast_modes: dpm_solver is for the UNet models' DDPM schedule; SD3 and FLUX step "
                                    "with their own flow-matching Euler scheduler: leave dpm_solver out.")

# The most T5 tokens a prompt may take: diffusers' SD3 and FLUX pipelines refuse more.
MOST_T5_TOKENS = 512


def check_max_sequence_length(max_sequence_length) -> None:
    """A ValueError unless `max_sequence_length` (the prompt's T5 tokens) is a whole number 1..512."""
    if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) or \
            not 1 <= max_sequence_length <= MOST_T5_TOKENS:
        raise ValueError(f"max_sequence_length must be a whole number from 1 to {MOST_T5_TOKENS} (the prompt's T5 "
                         f"tokens), got {max_sequence_length!r}.")


def shift_of(scheduler_config, tokens: int, default_max_shift: float) -> float:
    """μ, the dynamic shift of a schedule for an image of `tokens` tokens: linear in the token count
    between the config's (base_image_seq_len, base_shift) and (max_image_seq_len, max_shift), as
    the FLUX and SD3 papers set it (diffusers' pipelines fall back on `default_max_shift` where a
    config lacks max_shift: FLUX 1.15, SD3 1.16)."""
    low, high = scheduler_config.get("base_image_seq_len", 256), scheduler_config.get("max_image_seq_len", 4096)
    base, top = scheduler_config.get("base_shift", 0.5), scheduler_config.get("max_shift", default_max_shift)
    slope = (top - base) / (high - low)
    return base + slope * (tokens - low)


class FlowSampler:
    """The σ schedule of one call, shared by every view (the Sampler of backbones/base.py).

    `timesteps` are σ·1000, what the networks are given (FLUX divides by 1000 again); `sigmas`
    has one more, the final 0."""

    init_noise_sigma = 1.0  # the initial latent is the noise itself (σ = 1)

    def __init__(self, timesteps: torch.Tensor, sigmas: torch.Tensor):
        self.timesteps = timesteps
        self.sigmas = sigmas
        self._index = {float(t): i for i, t in enumerate(timesteps)}

    def skip(self, steps: int) -> None:
        """Start at step `steps` of the schedule (an image input's strength)."""
        self.timesteps = self.timesteps[steps:]

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_σ = σ·ε + (1 − σ)·x₀, the scheduler's scale_noise."""
        sigma = self.sigma(t).to(clean.dtype)
        return sigma * noise + (1.0 - sigma) * clean

    def sigma(self, t) -> torch.Tensor:
        return self.sigmas[self._index[float(t)]]

    def predicted_original(self, x: torch.Tensor, prediction: torch.Tensor, t) -> torch.Tensor:
        """x̂₀ = x − σ·v̂."""
        return x - self.sigma(t).to(x.dtype) * prediction

    def step(self, views: list[int], x: torch.Tensor, prediction: torch.Tensor, t) -> torch.Tensor:
        """The Euler step of a batch of views: x + (σ' − σ)·v̂, in float32 as the scheduler does it
        (and back in the prediction's dtype)."""
        i = self._index[float(t)]
        dt = self.sigmas[i + 1] - self.sigmas[i]
        return (x.to(torch.float32) + dt * prediction).to(prediction.dtype)


class FlowBackbone(Backbone):
    """The transformer families: the network is `pipe.transformer`, the sampler a FlowSampler of the
    pipeline's FlowMatchEulerDiscreteScheduler."""

    # diffusers' default max_shift where a scheduler config lacks one (differs by pipeline)
    default_max_shift = 1.15

    @property
    def network(self) -> torch.nn.Module:
        return self.pipe.transformer

    # The geometry from the configs alone (models.geometry_of_folder reads it before weights load).

    @classmethod
    @abstractmethod
    def window_of(cls, transformer_config) -> int:
        """The default window (latent pixels) of a transformer with this config."""

    @classmethod
    @abstractmethod
    def patch_of(cls, transformer_config) -> int:
        """The side, in latent pixels, of one token: a window is a whole number of them."""

    @classmethod
    def max_window_of(cls, transformer_config) -> int | None:
        """The largest window the transformer takes (latent pixels); None: no bound."""
        return None

    @classmethod
    def geometry_of(cls, transformer_config, scheduler_config, vae_factor: int) -> Geometry:
        steps = min(MAX_STEPS, scheduler_config.get("num_train_timesteps", MAX_STEPS))
        return Geometry(cls.window_of(transformer_config), vae_factor, steps,
                        window_multiple=cls.patch_of(transformer_config),
                        max_window=cls.max_window_of(transformer_config), refused_fast_modes=(DPM_SOLVER_REFUSED,))

    @property
    def window(self) -> int:
        return self.window_of(self.pipe.transformer.config)

    @property
    def patch(self) -> int:
        return self.patch_of(self.pipe.transformer.config)

    def tokens(self, window: int) -> int:
        """How many image tokens a view of side `window` (latent pixels) is."""
        return (window // self.patch) ** 2

    def geometry(self, vae_factor: int) -> Geometry:
        return self.geometry_of(self.pipe.transformer.config, self.pipe.scheduler.config, vae_factor)

    def most_steps(self) -> int:
        return min(MAX_STEPS, self.pipe.scheduler.config.num_train_timesteps)

    def check_scheduler(self, scheduler) -> None:
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise ValueError(f"the scheduler must be FlowMatchEulerDiscreteScheduler (the model's own), got "
                             f"{type(scheduler).__name__}.")
        if scheduler.config.get("stochastic_sampling"):
            raise ValueError("the scheduler samples stochastically (stochastic_sampling): panosync steps every view "
                             "from the same σ deterministically; load the scheduler with stochastic_sampling=False.")

    @staticmethod
    def first_step(steps: int, strength: float) -> int:
        return first_step_flow(steps, strength)

    def sampler(self, num_inference_steps, view_count, device, multistep=False, window=None) -> FlowSampler:
        if multistep:  # refused by settings.check before any model work; a direct call gets the same sentence
            raise ValueError(DPM_SOLVER_REFUSED[1])
        scheduler = self.pipe.scheduler
        options = dict(sigmas=self.sigmas(num_inference_steps))
        if self.uses_shift(scheduler):
            options["mu"] = shift_of(scheduler.config, self.tokens(window or self.window), self.default_max_shift)
        if options["sigmas"] is None:
            del options["sigmas"]
            scheduler.set_timesteps(num_inference_steps, device=device, **options)
        else:
            scheduler.set_timesteps(device=device, **options)
        return FlowSampler(scheduler.timesteps, scheduler.sigmas)

    def sigmas(self, num_inference_steps: int) -> np.ndarray | None:
        """The unshifted σ schedule the family's diffusers pipeline gives the scheduler; None: the
        scheduler's own."""
        return None

    def uses_shift(self, scheduler) -> bool:
        """Whether the σ schedule is shifted by the view's token count (the config's dynamic shift)."""
        return bool(scheduler.config.get("use_dynamic_shifting"))


def expand_timestep(t, count: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The timestep as the network's batch takes it: one per image."""
    t = torch.as_tensor(t)
    t = t.expand(count) if t.ndim == 0 else t.reshape(-1)[:1].expand(count)
    return t if dtype is None else t.to(dtype)
