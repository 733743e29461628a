"""SyncDiffusion written out as the reference implementation runs it: one view at a time, the
anchor's gradient computed and thrown away, a second UNet pass for every view, LPIPS's own
forward for every pair. Slow and plain on purpose: it is the yardstick faithful mode is held to
(tests/test_pipeline.py), and the baseline benchmarks/speed.py times, so it runs on the pipeline's
device and dtype (the networks in that dtype, the arithmetic between them in float32).
"""

import torch

from panosync.lpips import load_lpips
from panosync.views import views_for_canvas


def reference_panorama(pipe, prompt, negative_prompt, width, height, noise, *, guidance_scale=7.5, sync_weight=20.0,
                       sync_decay_rate=0.95, sync_freq=1, sync_threshold=50, num_inference_steps=50, stride=16,
                       lpips=None, on_step_end=None, loop_closure=False):
    """The panorama's final latent. `on_step_end(i)`, if given, is called after step i (a benchmark
    times the steps with it). With `loop_closure` the views go round the circle (panosync's views) and
    a view past the right edge takes its last columns from the left: the reference code's loop, with
    its slicing done on column indices taken modulo the width."""
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    device, dtype = unet.device, unet.dtype
    lpips = (lpips or load_lpips("vgg")).to(device=device, dtype=dtype)

    def text(t):
        ids = pipe.tokenizer(t, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return pipe.text_encoder(ids.to(device))[0]

    with torch.no_grad():
        text_embeds = torch.cat([text(negative_prompt), text(prompt)])

    def guided(latent_view, t):
        noise_pred = unet(torch.cat([latent_view] * 2).to(dtype), t, encoder_hidden_states=text_embeds).sample.float()
        uncond, cond = noise_pred.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def decode(latents):
        return (vae.decode((latents / vae.config.scaling_factor).to(dtype)).sample.float() / 2 + 0.5).clamp(0, 1)

    factor = pipe.vae_scale_factor
    views = views_for_canvas(height // factor, width // factor, pipe.window, stride, loop_closure)
    columns = [torch.tensor(v.column_indices(width // factor), device=device) for v in views]
    views = [(v.top, v.bottom, v.left, v.right) for v in views]
    latent = noise.clone().to(device)
    count, value = torch.zeros_like(latent), torch.zeros_like(latent)
    scheduler.set_timesteps(num_inference_steps, device=device)
    anchor_view_idx = len(views) // 2
    weights = [sync_weight * sync_decay_rate**i for i in range(num_inference_steps)]

    for i, t in enumerate(scheduler.timesteps):
        count.zero_()
        value.zero_()
        syncing = (i + 1) % sync_freq == 0 and i < sync_threshold and sync_weight > 0
        with torch.no_grad():
            if syncing:
                h0, h1, w0, w1 = views[anchor_view_idx]
                anchor_view = latent[:, :, h0:h1][..., columns[anchor_view_idx]].detach()
                anchor_x0 = scheduler.step(guided(anchor_view, t), t, anchor_view).pred_original_sample
                decoded_image_anchor = decode(anchor_x0)
        for view_idx, (h0, h1, w0, w1) in enumerate(views):
            latent_view = latent[:, :, h0:h1][..., columns[view_idx]].detach()
            latent_view_copy = latent_view.clone().detach()
            if syncing:
                with torch.enable_grad():
                    latent_view = latent_view.requires_grad_()
                    x0 = scheduler.step(guided(latent_view, t), t, latent_view).pred_original_sample
                    loss = lpips((decode(x0) * 2.0 - 1.0).to(dtype), (decoded_image_anchor * 2.0 - 1.0).to(dtype))
                    grad = torch.autograd.grad(loss.sum(), latent_view)[0]
                if view_idx != anchor_view_idx:
                    latent_view_copy = latent_view_copy - weights[i] * grad
            with torch.no_grad():
                denoised = scheduler.step(guided(latent_view_copy, t), t, latent_view_copy).prev_sample
            value[:, :, h0:h1, columns[view_idx]] += denoised
            count[:, :, h0:h1, columns[view_idx]] += 1
        latent = torch.where(count > 0, value / count, value)
        if on_step_end is not None:
            on_step_end(i)
    return latent
