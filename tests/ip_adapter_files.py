"""IP-Adapter files for the tiny random UNets, in the layout diffusers' load_ip_adapter reads: a
safetensors file of the adapter ("image_proj.*": the image projection, "ip_adapter.*": the key and
value projections of each cross-attention layer, numbered as the original IP-Adapter numbers them)
beside an `image_encoder/` folder (a tiny CLIPVisionModelWithProjection, random weights)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

IMAGE_TOKENS = 4  # the base IP-Adapter's ImageProjection: 4 tokens per image


def tiny_image_encoder(seed: int = 0) -> CLIPVisionModelWithProjection:
    """CLIP's vision tower at toy size, at the 224-pixel input diffusers' default CLIPImageProcessor makes."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, projection_dim=16, num_hidden_layers=2,
                              num_attention_heads=4, image_size=224, patch_size=32)
    return CLIPVisionModelWithProjection(config).eval()


def save_random_ip_adapter(unet, folder: str | Path, seed: int = 0, std: float = 0.3) -> Path:
    """Write a random IP-Adapter for `unet` (and its image encoder) to `folder`; returns the adapter file."""
    folder = Path(folder)
    encoder = tiny_image_encoder(seed)
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    generator = torch.Generator().manual_seed(seed)
    width = unet.config.cross_attention_dim
    tensors = {
        "image_proj.proj.weight": torch.randn((IMAGE_TOKENS * width, encoder.config.projection_dim), generator=generator)
        * std,
        "image_proj.proj.bias": torch.zeros(IMAGE_TOKENS * width),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    key = 1  # the original numbering: every attention processor counts, cross-attention ones get a key
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        hidden = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
        for part in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key}.{part}.weight"] = torch.randn((hidden, width), generator=generator) * std
        key += 2
    path = folder / "ip-adapter.safetensors"
    save_file(tensors, str(path))
    return path


def save_random_flux_ip_adapter(transformer, folder: str | Path, seed: int = 0, std: float = 0.3) -> Path:
    """Write a random FLUX.1 IP-Adapter for `transformer` (and its image encoder) to `folder`, keyed as
    diffusers' FluxIPAdapterMixin reads it: "image_proj.*" and "ip_adapter.{n}.to_k_ip/to_v_ip.*",
    one n per double-stream block."""
    folder = Path(folder)
    encoder = tiny_image_encoder(seed)
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    generator = torch.Generator().manual_seed(seed)
    width, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    tensors = {
        "image_proj.proj.weight": torch.randn((IMAGE_TOKENS * width, encoder.config.projection_dim), generator=generator)
        * std,
        "image_proj.proj.bias": torch.zeros(IMAGE_TOKENS * width),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    double_blocks = [name for name in transformer.attn_processors if not name.startswith("single_transformer_blocks")]
    for key in range(len(double_blocks)):
        for part in ("to_k_ip", "to_v_ip"):
            tensors[f"ip_adapter.{key}.{part}.weight"] = torch.randn((inner, width), generator=generator) * std
            tensors[f"ip_adapter.{key}.{part}.bias"] = torch.zeros(inner)
    path = folder / "ip-adapter.safetensors"
    save_file(tensors, str(path))
    return path
