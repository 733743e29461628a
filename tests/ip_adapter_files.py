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


# diffusers' names of the SD3 image projection's parts, and the original IP-Adapter's it converts from
SD3_ORIGINAL_NAMES = {"ln0": "0.norm1", "ln1": "0.norm2", "attn.to_q": "0.to_q", "attn.to_kv": "0.to_kv",
                      "attn.to_out.0": "0.to_out", "adaln_norm": "1.0", "ff.net.0.proj": "1.1", "ff.net.2": "1.3",
                      "adaln_proj": "2.1"}


def save_random_sd3_ip_adapter(transformer, folder: str | Path, seed: int = 0) -> Path:
    """Write a random SD3 IP-Adapter for `transformer` to `folder`, with a tiny SigLIP image encoder and
    its image processor in `image_encoder/`, keyed as the original SD3.5 IP-Adapter (which diffusers'
    SD3IPAdapterMixin converts): "image_proj.*" (a time-aware resampler) and "ip_adapter.{n}.*", one n
    per attention processor."""
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    folder = Path(folder)
    torch.manual_seed(seed)
    encoder = SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                                   num_attention_heads=4, image_size=32, patch_size=8)).eval()
    encoder.save_pretrained(folder / "image_encoder", safe_serialization=True)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder / "image_encoder")
    inner = transformer.config.attention_head_dim * transformer.config.num_attention_heads
    hidden = 32  # the resampler's width, and its timestep embedding's, which the attention processors read
    projection = IPAdapterTimeImageProjection(embed_dim=32, output_dim=inner, hidden_dim=hidden, heads=1,
                                              num_queries=4, timestep_in_dim=32)
    tensors = {}
    for name, value in projection.state_dict().items():
        if name.startswith("layers."):
            index, rest = name.split(".", 2)[1:]
            for ours, original in SD3_ORIGINAL_NAMES.items():
                if rest.startswith(ours + "."):
                    rest = original + rest[len(ours):]
                    break
            name = f"layers.{index}.{rest}"
        tensors[f"image_proj.{name}"] = value.contiguous()
    for index in range(len(transformer.attn_processors)):
        processor = SD3IPAdapterJointAttnProcessor2_0(hidden_size=inner, ip_hidden_states_dim=inner,
                                                      head_dim=transformer.config.attention_head_dim,
                                                      timesteps_emb_dim=hidden)
        for name, value in processor.state_dict().items():
            tensors[f"ip_adapter.{index}.{name}"] = value.contiguous()
    path = folder / "ip-adapter.safetensors"
    save_file(tensors, str(path))
    return path
