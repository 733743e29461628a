"""Fixtures: tiny random-weight Stable-Diffusion-shaped pipelines, built from configs (no downloads)."""

import pytest

from panosync.lpips import load_lpips
from panosync.pipeline import SyncDiffusionPipeline
from panosync.tiny import tiny_random_components


def make_pipe(**config) -> SyncDiffusionPipeline:
    pipe = SyncDiffusionPipeline(**tiny_random_components(**config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def small_pipe():
    """Window 8 latents, VAE factor 2: 16-pixel windows, a panorama in well under a second."""
    return make_pipe(window=8, vae_factor=2)


@pytest.fixture(scope="session")
def sync_pipe():
    """Window 16 latents, VAE factor 2: 32-pixel windows, big enough for LPIPS-VGG's five stages."""
    return make_pipe(window=16, vae_factor=2)


@pytest.fixture(scope="session")
def sd_shaped_pipe():
    """Window 64 latents, VAE factor 8, as Stable Diffusion 2 base (diffusers' panorama pipeline
    hard-codes both)."""
    return make_pipe(window=64, vae_factor=8)


@pytest.fixture(scope="session")
def lpips_vgg():
    """LPIPS-VGG with its genuine weights, loaded once (the metric tests compare against it)."""
    return load_lpips("vgg")
