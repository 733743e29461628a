"""The joint denoising loop of SyncDiffusion (docs/algorithm.md, section 3), written once for every
family: the networks come in as bound callables (k-diffusion's way), so this module knows views,
the anchor, the sync step and the merge, and nothing of UNets, transformers or prompts.

Several panoramas (a batch of prompts, num_images_per_prompt) are denoised together: every network
call holds the same views of each panorama, view by view (view 0 of panorama 0, view 0 of panorama
1, ...), and each view is synced towards the anchor view of its own panorama.

What the reference computes and throws away is skipped, with the same result: the anchor's
gradient (the anchor is never moved), the anchor's LPIPS features for every view (the same all
step long) and the anchor's second network pass (its latent did not move, so the first pass gave
its prediction).
"""

from __future__ import annotations

from typing import Callable

import torch

from .backbones.base import Sampler
from .chunks import ViewChunks
from .fast import FastModes
from .precision import NonFiniteError
from .sync import LossScale, SyncModels, SyncSchedule, sync_step
from .views import View, add_view, coverage, crop

# predict(x, t, views): the guided prediction for a batch of view latents, `views` naming each item's view
Predict = Callable[[torch.Tensor, object, list[View]], torch.Tensor]


def denoise_panorama(
    latents: torch.Tensor,
    *,
    views: list[View],
    anchor: int,
    sampler: Sampler,
    predict: Predict,
    foresee: Callable[[torch.Tensor], torch.Tensor],
    perceptual: Callable[[], torch.nn.Module],
    schedule: SyncSchedule,
    chunks: ViewChunks,
    loss_scale: LossScale,
    fast: FastModes = FastModes(),
    precision_name: str = "float32",
    after_step: Callable[[int, object, torch.Tensor, float], torch.Tensor] | None = None,
    progress=None,
    first_step: int = 0,
    sync_pixel_weights: Callable[[list[View], int], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Denoise `latents` (B, C, H, W: B panoramas, already scaled to the first timestep) over the
    sampler's timesteps and return the clean latents.

    `foresee(x̂₀)` is the image in [0, 1] the sync loss compares; `perceptual()` the LPIPS model
    (called only when a step syncs, so its weights load only then); `after_step(i, t, latents,
    weight)` may replace the latents after each step; `progress` a tqdm bar; `first_step` the
    schedule's index of the sampler's first timestep (an image input's strength skips the steps
    before it: the sync weight, its decay and threshold count steps of the whole schedule);
    `sync_pixel_weights(views, side)` each view's pixel weights in the sync loss for images of
    `side` pixels (regions.py; None: every pixel counts). Of the fast modes
    (`fast`), reuse_noise and no_unet_backward act here; the others are in `foresee` and the sampler."""
    panoramas = latents.shape[0]
    view_counts = coverage(*latents.shape[-2:], views).to(latents.device)

    def items(indices: list[int]) -> list[int]:
        """The sampler's key of each batch item: one per view of each panorama."""
        return [j * panoramas + b for j in indices for b in range(panoramas)]

    shown_status = None
    for i, t in enumerate(sampler.timesteps):
        # a lone view has no one to agree with: its anchor pass would change nothing
        weight = schedule.weight_at(first_step + i) if len(views) > 1 else 0.0
        if progress is not None:
            status = f"sync w={weight:.3g}" if weight else "no sync"
            # drawn at once when it changes: tqdm skips redraws closer together than its mininterval
            progress.set_postfix_str(status, refresh=status != shown_status)
            shown_status = status
        denoised: dict[int, torch.Tensor] = {}

        if weight > 0:
            # 1. The anchor: its foreseen image is the fixed target of this step, its LPIPS features
            #    computed once for all views; it is not moved, so this prediction also denoises it.
            anchor_latent = crop(latents, views[anchor])
            anchor_prediction = predict(anchor_latent, t, [views[anchor]] * panoramas)
            anchor_image = foresee(sampler.predicted_original(anchor_latent, anchor_prediction, t))
            lpips = perceptual()
            target = lpips.target_features(anchor_image * 2 - 1)
            denoised[anchor] = sampler.step(items([anchor]), anchor_latent, anchor_prediction, t)

        pending = [j for j in range(len(views)) if j not in denoised]
        for batch in chunks.split(pending):
            with chunks.fitting():
                batch_views = [views[j] for j in batch]
                item_views = [view for view in batch_views for _ in range(panoramas)]
                x = torch.cat([crop(latents, view) for view in batch_views])
                prediction = None
                if weight > 0:
                    # 2. Move each view towards its panorama's anchor, then denoise from where it moved to.
                    targets = target if panoramas == 1 else [f.repeat(len(batch), 1, 1, 1) for f in target]
                    models = SyncModels(predict=lambda z: predict(z, t, item_views),
                                        predicted_original=lambda z, p: sampler.predicted_original(z, p, t),
                                        decode=foresee,
                                        distance_to_anchor=lambda images: lpips(
                                            images * 2 - 1, targets, pixel_weights=None if sync_pixel_weights is None
                                            else sync_pixel_weights(item_views, images.shape[-1])))
                    move = sync_step(x, weight, models, prediction_is_constant=fast.no_unet_backward,
                                     loss_scale=loss_scale.scale)
                    loss_scale.settle(move.loss_scale)
                    x = move.latents
                    if fast.reuse_noise:
                        prediction = move.prediction_before_move
                if prediction is None:
                    prediction = predict(x, t, item_views)
                # 3. The denoising step of each view.
                denoised.update(zip(batch, sampler.step(items(batch), x, prediction, t).split(panoramas)))

        # 4. MultiDiffusion: every latent pixel becomes the mean of the views over it.
        latents = merge(denoised, views, view_counts)
        if not torch.isfinite(latents).all():  # stop now, not after the rest of the steps
            raise NonFiniteError(f"The panorama's latent at step {i + 1} of {len(sampler.timesteps)}",
                                 precision_name)
        if after_step is not None:
            latents = after_step(i, t, latents, weight)
        if progress is not None:
            progress.update()
    return latents


def merge(denoised: dict[int, torch.Tensor], views: list[View], view_counts: torch.Tensor) -> torch.Tensor:
    """MultiDiffusion (docs/algorithm.md, section 3, step 4): the mean of the views over each latent pixel."""
    first = denoised[0]
    value = torch.zeros(first.shape[:2] + view_counts.shape, device=view_counts.device, dtype=first.dtype)
    for j, view in enumerate(views):
        add_view(value, view, denoised[j])
    return value / view_counts
