"""Fixtures: tiny random-weight Stable-Diffusion-shaped pipelines and a CLIP, built from configs (no downloads)."""

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
def sd_folder(tmp_path_factory, sync_pipe):
    """sync_pipe (32-pixel windows) saved as a diffusers folder, as Stable Diffusion is published: a
    StableDiffusionPipeline with a PNDM scheduler. Read only: tests copy it to change it."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("tiny-sd")
    components = {**sync_pipe.components, "scheduler": PNDMScheduler.from_config(sync_pipe.scheduler.config)}
    StableDiffusionPipeline(**components, safety_checker=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sd_shaped_pipe():
    """Window 64 latents, VAE factor 8, as Stable Diffusion 2 base (diffusers' panorama pipeline
    hard-codes both)."""
    return make_pipe(window=64, vae_factor=8)


@pytest.fixture(scope="session")
def lpips_vgg():
    """LPIPS-VGG with its genuine weights, loaded once (the metric tests compare against it)."""
    return load_lpips("vgg")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random-weight CLIP saved as a folder, as a downloaded one would be."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from panosync.tiny import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("clip")
    tokenizer = build_clip_tokenizer(["snowy", "mountains", "green", "hills"])
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=77, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def with_a_point_posterior(components: dict) -> dict:
    """`components` with a VAE that encodes to a point (log-variance −30: a standard deviation of
    3·10⁻⁷), so that diffusers' sample of a condition's latent is its mean, which panosync takes."""
    import torch

    encoder = components["vae"].encoder
    channels = components["vae"].config.latent_channels
    with torch.no_grad():
        encoder.conv_out.weight[channels:] = 0
        encoder.conv_out.bias[channels:] = -30
    return components


def random_condition(seed, width=32, height=32):
    """A condition image of random pixels."""
    import numpy as np
    import PIL.Image

    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# A tiny SDXL with 32-pixel windows (16 latents, VAE factor 2): a panorama in a second on a CPU.
NARROW_XL = dict(window=16, vae_factor=2, unet_channels=(16, 32), vae_channels=8, text_width=16)


@pytest.fixture(scope="session")
def xl_folder(tmp_path_factory):
    """A tiny SDXL saved by diffusers' own StableDiffusionXLPipeline, as a downloaded SDXL folder is."""
    from diffusers import StableDiffusionXLPipeline

    from panosync.tiny import tiny_random_xl_components

    folder = tmp_path_factory.mktemp("sdxl")
    StableDiffusionXLPipeline(**tiny_random_xl_components(**NARROW_XL), add_watermarker=False).save_pretrained(folder)
    return folder
