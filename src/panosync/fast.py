"""Fast modes: named approximations of the sync step, each cheaper than the faithful one and each
off by default in the pipeline (a model's recommended.json may turn some on for the command, the
server and evaluate: pocket's turns on no_unet_backward, which syncs that small model where the
paper's gradient does not; docs/pocket-progress.md). What each approximates (docs/algorithm.md,
section 3, step 2, for a view x):

reuse_noise       The denoising step uses the noise prediction of the gradient pass, made at the
                  latent *before* the sync move, instead of a second guided UNet pass at the moved
                  latent: x_{t-1} = step(ε̂(x), t, x − λ∇). Saves one guided UNet forward per view
                  and synced step. Exact when λ∇ is small next to the UNet's sensitivity.
no_unet_backward  The sync gradient treats ε̂ as a constant: ∂x̂₀/∂x = 1/√ᾱ_t instead of
                  (1 − √(1−ᾱ_t)·∂ε̂/∂x)/√ᾱ_t. The UNet runs forward only (no autograd graph, no
                  backward), which saves its backward and the memory of its activations.
sync_image_scale  LPIPS compares the view's and the anchor's foreseen images downscaled by this
                  factor (area averaging): the loss sees coarser structure, and LPIPS-VGG, the
                  costliest network of the step on small models, runs on scale² of the pixels.
lpips_alex        The sync loss is LPIPS on AlexNet's features (LPIPS's own "alex" variant, with its
                  learned weights) instead of VGG-16's, the paper's: the same kind of distance, at a
                  small part of the work, forward and backward. Its gradient has another scale, so a
                  weight tuned for VGG is not the one for AlexNet.
sync_decoder      The foreseen images of the loss (the anchor's and the views') come from another,
                  cheaper decoder, e.g. diffusers' AutoencoderTiny (TAESD), instead of the model's
                  VAE. The final panorama is always decoded by the model's own VAE.

dpm_solver        DPM-Solver++ (second-order multistep) instead of DDIM: the same noise schedule
                  solved with fewer steps, at the price of a different sampler's result. Each view
                  keeps its own solver history (schedulers.py); x̂₀ for the sync loss uses the same
                  formula as DDIM's. (A model's scheduler may also be set to DPMSolverMultistep-
                  Scheduler directly.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import settings

# The modes' names and one-line descriptions live with every other parameter's (settings.py).
FAST_MODES = settings.FAST_MODES
NO_FAST_MODE = settings.NO_FAST_MODE


@dataclass(frozen=True)
class FastModes:
    """The fast modes a call allows itself, checked; all off is faithful mode."""

    reuse_noise: bool = False
    no_unet_backward: bool = False
    image_scale: float = 1.0
    decoder: torch.nn.Module | None = None
    multistep: bool = False
    lpips_net: str = "vgg"


def decoder_factor(decoder) -> int:
    """How many image pixels one latent pixel becomes in `decoder` (AutoencoderKL or AutoencoderTiny)."""
    config = decoder.config
    if "decoder_block_out_channels" in config:  # AutoencoderTiny: one upsampling between blocks
        return config["upsampling_scaling_factor"] ** (len(config["decoder_block_out_channels"]) - 1)
    return 2 ** (len(config["block_out_channels"]) - 1)


def check_sync_decoder(decoder, latent_channels: int, vae_factor: int) -> None:
    """A sync decoder must read this model's latents and make images of the VAE's size."""
    if not hasattr(decoder, "decode") or not hasattr(decoder, "config"):
        raise ValueError(f"sync_decoder must be a diffusers autoencoder (e.g. AutoencoderTiny) or the folder of one, "
                         f"got {type(decoder).__name__}.")
    channels = decoder.config.get("latent_channels")
    if channels != latent_channels or decoder_factor(decoder) != vae_factor:
        raise ValueError(
            f"sync_decoder reads {channels}-channel latents at 1/{decoder_factor(decoder)} scale, but this model's "
            f"latents have {latent_channels} channels at 1/{vae_factor}: use a tiny decoder trained for this model's VAE "
            f"(TAESD for Stable Diffusion 1 and 2)."
        )


def load_sync_decoder(folder: str | Path):
    """An AutoencoderTiny from a diffusers folder (e.g. a saved madebyollin/taesd), float32 on the CPU."""
    from diffusers import AutoencoderTiny

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"sync_decoder {folder} is not a diffusers AutoencoderTiny folder (it has no config.json): "
                         f"give the folder of a saved TAESD.")
    decoder = AutoencoderTiny.from_pretrained(path, local_files_only=True)
    return decoder.eval().requires_grad_(False)


def downscale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Images shrunk by `scale` with area averaging (differentiable); unchanged at scale 1."""
    if scale == 1.0:
        return images
    height, width = images.shape[-2:]
    return F.interpolate(images, size=(round(height * scale), round(width * scale)), mode="area")
