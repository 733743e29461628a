"""The synchronization step of SyncDiffusion: when to sync, how hard, and the gradient.

At a synced step every view's latent is moved by gradient descent on the perceptual (LPIPS)
distance between the image it predicts and the anchor view's predicted image.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch

log = logging.getLogger("panosync")


@dataclass(frozen=True)
class SyncSchedule:
    """The sync hyperparameters, with the meanings of the paper and the public API.

    weight      w, the gradient-descent step size at step 0 (paper: 20; 0 turns sync off).
    decay_rate  the weight at step i is w * decay_rate**i (paper: 0.95).
    freq        sync at step i when (i + 1) % freq == 0 (paper: 1, every step).
    threshold   sync only at steps i < threshold; None syncs in every step (paper).
    """

    weight: float = 20.0
    decay_rate: float = 0.95
    freq: int = 1
    threshold: int | None = None

    def __post_init__(self):
        for name, value in (("sync_weight", self.weight), ("sync_decay_rate", self.decay_rate)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}.")
        if self.weight < 0:
            raise ValueError(f"sync_weight must be 0 or more, got {self.weight}.")
        if not 0 <= self.decay_rate <= 1:
            raise ValueError(f"sync_decay_rate must be between 0 and 1, got {self.decay_rate}.")
        if self.freq < 1:
            raise ValueError(f"sync_freq must be 1 or more, got {self.freq}.")
        if self.threshold is not None and self.threshold < 0:
            raise ValueError(f"sync_threshold must be 0 or more (or unset for every step), got {self.threshold}.")

    def is_active(self, step: int) -> bool:
        below_threshold = self.threshold is None or step < self.threshold
        return self.weight > 0 and below_threshold and (step + 1) % self.freq == 0

    def weight_at(self, step: int) -> float:
        """The step size at step `step`, 0 where sync is not active."""
        return self.weight * self.decay_rate**step if self.is_active(step) else 0.0


# How far a scaled sync loss backs off each time its gradient overflows.
LOSS_SCALE_BACKOFF = 2.0**-8


def half_precision_loss_scale(image_pixels: int) -> float:
    """The factor the sync loss is multiplied by before its backward in half precision.

    LPIPS averages over the image's pixels, so each pixel's share of the gradient is about
    1/pixels of the loss's: 4·10⁻⁶ at 512², below float16's smallest normal number (6·10⁻⁵), and
    the backward through LPIPS, the decoder and the UNet would flush most of it to zero. Scaling
    by about the pixel count makes that average a sum. A power of two, so that scaling and
    unscaling are exact."""
    return 2.0 ** round(math.log2(max(1, image_pixels)))


def sync_gradient(
    latents: torch.Tensor,
    predict_image: Callable[[torch.Tensor], torch.Tensor],
    distance_to_anchor: Callable[[torch.Tensor], torch.Tensor],
    loss_scale: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """∂ LPIPS(predict_image(x), anchor) / ∂x for each view x of the batch `latents`.

    `predict_image` maps latents to the images they foresee (UNet, x̂₀, VAE decoder, all
    differentiable); `distance_to_anchor` gives one distance per image. Views are independent,
    so the gradient of the summed distances is each view's own gradient.

    `loss_scale` > 1 (half precision: `half_precision_loss_scale`) multiplies the loss before the
    backward and divides the gradient after, as mixed-precision training does; where the scaled
    backward overflows, it is run again at a scale 256 times smaller, and so on down to 1. Returns
    the gradient and the scale that gave it.
    """
    scales = [loss_scale]
    while scales[-1] > 1:
        scales.append(max(1.0, scales[-1] * LOSS_SCALE_BACKOFF))
    for scale in scales:
        with torch.enable_grad():
            variable = latents.detach().requires_grad_(True)
            distances = distance_to_anchor(predict_image(variable))
            (gradient,) = torch.autograd.grad(distances.sum() * scale, variable)
        gradient = gradient / scale
        if scale == scales[-1] or torch.isfinite(gradient).all():
            break
    return gradient, scale


class LossScale:
    """The half-precision loss scale of one call: it starts at `half_precision_loss_scale` of the
    compared images' pixels and, once a backward overflowed at some scale, stays at the scale that
    worked for the rest of the call, as a mixed-precision grad scaler does. 1 in full precision."""

    def __init__(self, image_pixels: int, half_precision: bool):
        self.scale = half_precision_loss_scale(image_pixels) if half_precision else 1.0

    def settle(self, used: float) -> None:
        """Keep `used` (what sync_gradient fell back to) as the scale from now on."""
        if used < self.scale:
            log.warning("The sync loss's backward overflowed float16 at scale %g; scaling by %g from now on.",
                        self.scale, used)
            self.scale = used


@dataclass(frozen=True)
class SyncModels:
    """The networks of one synced step, bound to its timestep, for a batch of views:

    predict             x -> the guided prediction (noise or velocity)
    predicted_original  (x, prediction) -> x̂₀, the clean latent it foresees
    decode              x̂₀ -> the foreseen image in [0, 1] (the VAE's, or a fast mode's)
    distance_to_anchor  images -> each one's LPIPS distance to the anchor's foreseen image
    """

    predict: Callable[[torch.Tensor], torch.Tensor]
    predicted_original: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    distance_to_anchor: Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SyncMove:
    """What a sync step gives back: the moved latents, the prediction the gradient pass made at the
    latents before the move (what the fast mode reuse_noise denoises with), and the loss scale that
    gave the gradient."""

    latents: torch.Tensor
    prediction_before_move: torch.Tensor
    loss_scale: float


def sync_step(latents: torch.Tensor, weight: float, models: SyncModels, *, prediction_is_constant: bool = False,
              loss_scale: float = 1.0) -> SyncMove:
    """The paper's synchronization (docs/algorithm.md, section 3, step 2) for a batch of views:

        x̂₀ = x̂₀(x, ε̂(x))                     the clean latent the view foresees
        L  = LPIPS(D(x̂₀), D(x̂₀ of the anchor))  how far its image is from the anchor's
        x ← x − w · ∂L/∂x                       one gradient-descent step towards the anchor

    The gradient flows through the decoder, x̂₀ and the network. `prediction_is_constant` (the
    fast mode no_unet_backward) runs the network without autograd, so ε̂ (or v̂) is a constant of
    x. `loss_scale`: the half-precision loss scale (LossScale)."""
    made = {}

    def foreseen_image(x):
        if prediction_is_constant:
            with torch.no_grad():
                prediction = models.predict(x.detach())
        else:
            prediction = models.predict(x)
        made["prediction"] = prediction.detach()
        return models.decode(models.predicted_original(x, prediction))

    gradient, used = sync_gradient(latents, foreseen_image, models.distance_to_anchor, loss_scale)
    return SyncMove(latents - weight * gradient, made["prediction"], used)
