"""Schedulers for a joint diffusion: DDIM (the paper's), and DPM-Solver++ as a fast mode.

The loop steps every view from the same timestep. DDIM's step is a function of its inputs only,
so one scheduler serves all views. A multistep solver (DPM-Solver++) remembers its last model
outputs: each view gets its own copy, so a view's history is its own and never another view's.
"""

from __future__ import annotations

import copy

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

SUPPORTED = (DDIMScheduler, DPMSolverMultistepScheduler)


def first_step_unet(steps: int, strength: float) -> int:
    """The index of the first of `steps` steps that a strength runs (diffusers' img2img for the
    UNet families: int(steps · strength) steps, the last ones)."""
    return steps - min(int(steps * strength), steps)


def first_step_flow(steps: int, strength: float) -> int:
    """The same for the flow-matching families, as their diffusers img2img pipelines count it."""
    return int(max(steps - steps * strength, 0))


def first_step_of_family(family: str | None):
    """The first_step count of a family's pipelines (the flow-matching ones count their own way)."""
    from .families import FLUX, SD3  # a leaf: no cycle

    return first_step_flow if family in (SD3, FLUX) else first_step_unet


def steps_fit(scheduler, steps: int) -> bool:
    """Whether `steps` denoising steps all land inside the scheduler's training schedule (Stable
    Diffusion's DDIM, with steps_offset 1, puts the 1000th step past its end)."""
    probe = type(scheduler).from_config(scheduler.config)
    try:
        probe.set_timesteps(steps)
    except ValueError:
        return False
    return int(probe.timesteps.max()) < scheduler.config.num_train_timesteps


def most_steps(scheduler, at_most: int | None = None) -> int:
    """The most denoising steps the scheduler can take (at most `at_most`)."""
    trained = scheduler.config.num_train_timesteps
    for steps in range(min(trained, at_most or trained), 0, -1):
        if steps_fit(scheduler, steps):
            return steps
    return 1


def multistep_like(scheduler) -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (second order, multistep) with the noise schedule of `scheduler`."""
    return DPMSolverMultistepScheduler.from_config(scheduler.config, algorithm_type="dpmsolver++", solver_order=2)


def predicted_original(scheduler, noise: torch.Tensor, t, latents: torch.Tensor) -> torch.Tensor:
    """x̂₀, the clean latent the noise prediction foresees at timestep t (differentiable).

    DDIM's own pred_original_sample (the reference's formula, kept bit for bit); for other
    schedulers the same formula from the training noise schedule."""
    if isinstance(scheduler, DDIMScheduler):
        return scheduler.step(noise, t, latents).pred_original_sample
    alpha = scheduler.alphas_cumprod.to(latents.device)[int(t)]
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return (latents - (1 - alpha).sqrt() * noise) / alpha.sqrt()
    if kind == "v_prediction":
        return alpha.sqrt() * latents - (1 - alpha).sqrt() * noise
    raise ValueError(f"prediction_type {kind!r} is not supported: use a model that predicts epsilon or v.")


class ViewSchedulers:
    """The scheduler state of every view of one panorama: the UNet families' sampler
    (backbones/base.py, Sampler). The scheduler's timesteps are set before."""

    def __init__(self, scheduler, view_count: int):
        self.scheduler = scheduler
        self.per_view = None if isinstance(scheduler, DDIMScheduler) else [copy.deepcopy(scheduler)
                                                                           for _ in range(view_count)]
        self.first = 0

    @property
    def timesteps(self) -> torch.Tensor:
        return self.scheduler.timesteps[self.first :]

    def skip(self, steps: int) -> None:
        """Start at step `steps` of the schedule (an image input's strength), as diffusers' img2img
        pipelines do: the timesteps after it, and a multistep solver told where it begins."""
        self.first = steps
        for scheduler in self.per_view or ():
            scheduler.set_begin_index(steps)

    def noised(self, clean: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """`clean` latents noised to timestep t with `noise` (the scheduler's add_noise)."""
        return self.scheduler.add_noise(clean, noise, torch.tensor([int(t)]))

    @property
    def init_noise_sigma(self) -> float:
        return self.scheduler.init_noise_sigma

    def predicted_original(self, x: torch.Tensor, prediction: torch.Tensor, t) -> torch.Tensor:
        return predicted_original(self.scheduler, prediction, t, x)

    def step(self, views: list[int], x: torch.Tensor, prediction: torch.Tensor, t) -> torch.Tensor:
        """x_{t-1} of a batch of views (indices `views`, in the batch's order)."""
        if self.per_view is None:
            return self.scheduler.step(prediction, t, x).prev_sample
        return torch.cat([self.per_view[j].step(prediction[k : k + 1], t, x[k : k + 1]).prev_sample
                          for k, j in enumerate(views)])
