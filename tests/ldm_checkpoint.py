"""Write a diffusers Stable-Diffusion-shaped pipeline as ONE original-format (LDM / CompVis) checkpoint, the
layout of the Stable Diffusion 1.x `.safetensors` files people download:

    model.diffusion_model.*              the UNet
    first_stage_model.*                  the VAE
    cond_stage_model.transformer.*       the CLIP text encoder (SD 1.x style)

and an SDXL pipeline in the layout of Stability's SGM checkpoints (sd_xl_base_1.0.safetensors):

    model.diffusion_model.*                the UNet, its added (size + pooled) embedding as label_emb.0
    first_stage_model.*                    the VAE
    conditioner.embedders.0.transformer.*  CLIP ViT-L (text_encoder), in Hugging Face's CLIP layout
    conditioner.embedders.1.model.*        OpenCLIP ViT-bigG (text_encoder_2), in OpenCLIP's own layout

The key mapping is the inverse of diffusers' single-file loader (diffusers/loaders/single_file_utils.py:
convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint,
convert_open_clip_checkpoint).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
               "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}


def _rename(key: str, rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def unet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """LDM numbers the layers of all blocks in one sequence (input_blocks.0 is conv_in): a down block holds
    `layers_per_block` resnets (+ attentions) and then its downsampler, an up block one more resnet and its
    upsampler, which sits after the attention when there is one."""
    n = layers_per_block + 1
    with_attention = {int(key.split(".")[1]) for key in state if key.startswith("up_blocks.") and ".attentions." in key}

    def upsampler(m):
        block = int(m[1])
        return f"output_blocks.{block * n + n - 1}.{2 if block in with_attention else 1}"

    rules = [
        (r"(resnets\.\d+\.)(\w+)", lambda m: m[1] + UNET_RESNET[m[2]]),
        (r"^time_embedding\.linear_1\.", "time_embed.0."),
        (r"^time_embedding\.linear_2\.", "time_embed.2."),
        (r"^add_embedding\.linear_1\.", "label_emb.0.0."),  # SDXL's "text_time" embedding
        (r"^add_embedding\.linear_2\.", "label_emb.0.2."),
        (r"^conv_in\.", "input_blocks.0.0."),
        (r"^conv_norm_out\.", "out.0."),
        (r"^conv_out\.", "out.2."),
        (r"^down_blocks\.(\d+)\.resnets\.(\d+)", lambda m: f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.0"),
        (r"^down_blocks\.(\d+)\.attentions\.(\d+)", lambda m: f"input_blocks.{1 + int(m[1]) * n + int(m[2])}.1"),
        (r"^down_blocks\.(\d+)\.downsamplers\.0\.conv", lambda m: f"input_blocks.{(int(m[1]) + 1) * n}.0.op"),
        (r"^mid_block\.resnets\.(\d+)", lambda m: f"middle_block.{2 * int(m[1])}"),
        (r"^mid_block\.attentions\.0", "middle_block.1"),
        (r"^up_blocks\.(\d+)\.resnets\.(\d+)", lambda m: f"output_blocks.{int(m[1]) * n + int(m[2])}.0"),
        (r"^up_blocks\.(\d+)\.attentions\.(\d+)", lambda m: f"output_blocks.{int(m[1]) * n + int(m[2])}.1"),
        (r"^up_blocks\.(\d+)\.upsamplers\.0", upsampler),
    ]
    return {_rename(key, rules): value for key, value in state.items()}


def vae_to_ldm(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """The decoder's up blocks are numbered from the bottom (up.0 is the last); the mid-block attention is
    made of 1x1 convolutions."""
    rules = [
        (r"\.conv_norm_out\.", ".norm_out."),
        (r"conv_shortcut", "nin_shortcut"),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.block."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{blocks - 1 - int(m[1])}.upsample."),
        (r"mid_block\.resnets\.(\d+)\.", lambda m: f"mid.block_{int(m[1]) + 1}."),
        (r"mid_block\.attentions\.0\.", "mid.attn_1."),
        (r"attn_1\.group_norm\.", "attn_1.norm."),
        (r"attn_1\.to_([qkv])\.", r"attn_1.\1."),
        (r"attn_1\.to_out\.0\.", "attn_1.proj_out."),
    ]
    ldm = {}
    for key, value in state.items():
        key = _rename(key, rules)
        ldm[key] = value[:, :, None, None] if ".attn_1." in key and value.ndim == 2 else value
    return ldm


def clip_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModel's weights under `text_model.` (newer transformers drop that level from CLIPTextModel)."""
    return {f"text_model.{key.removeprefix('text_model.')}": value for key, value in state.items()}


def open_clip_text(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A CLIPTextModelWithProjection in OpenCLIP's layout: each layer's q, k and v projections are one
    `in_proj` (rows q, then k, then v), and the projection is a plain matrix applied as x @ P (the transpose
    of the Linear's weight)."""
    state = {key.removeprefix("text_model."): value for key, value in state.items()}
    rules = [
        (r"^embeddings\.token_embedding\.", "token_embedding."),
        (r"^embeddings\.position_embedding\.weight$", "positional_embedding"),
        (r"^final_layer_norm\.", "ln_final."),
        (r"^encoder\.layers\.(\d+)\.", r"transformer.resblocks.\1."),
        (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
        (r"\.layer_norm1\.", ".ln_1."),
        (r"\.layer_norm2\.", ".ln_2."),
        (r"\.mlp\.fc1\.", ".mlp.c_fc."),
        (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    ]
    openclip = {}
    for key, value in state.items():
        if key == "text_projection.weight":
            openclip["text_projection"] = value.T
        elif ".self_attn.q_proj." in key:
            layer, kind = key.split(".self_attn.q_proj.")
            together = [state[f"{layer}.self_attn.{name}_proj.{kind}"] for name in "qkv"]
            openclip[_rename(f"{layer}.", rules) + f"attn.in_proj_{kind}"] = torch.cat(together)
        elif ".self_attn.k_proj." in key or ".self_attn.v_proj." in key:
            continue  # in the q key's in_proj
        else:
            openclip[_rename(key, rules)] = value
    return openclip


def ldm_state_dict(pipe) -> dict[str, torch.Tensor]:
    unet = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config.layers_per_block)
    vae = vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels))
    clip = clip_text(pipe.text_encoder.state_dict())
    return {
        **{f"model.diffusion_model.{key}": value for key, value in unet.items()},
        **{f"first_stage_model.{key}": value for key, value in vae.items()},
        **{f"cond_stage_model.transformer.{key}": value for key, value in clip.items()},
    }


def sgm_xl_state_dict(pipe) -> dict[str, torch.Tensor]:
    """An SDXL pipeline (unet, vae, text_encoder, text_encoder_2) in the layout of Stability's SDXL base."""
    unet = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config.layers_per_block)
    vae = vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels))
    clip = clip_text(pipe.text_encoder.state_dict())
    openclip = open_clip_text(pipe.text_encoder_2.state_dict())
    return {
        **{f"model.diffusion_model.{key}": value for key, value in unet.items()},
        **{f"first_stage_model.{key}": value for key, value in vae.items()},
        **{f"conditioner.embedders.0.transformer.{key}": value for key, value in clip.items()},
        **{f"conditioner.embedders.1.model.{key}": value for key, value in openclip.items()},
    }


def _save(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    save_file({key: value.detach().contiguous() for key, value in state.items()}, str(path))
    return Path(path)


def save_ldm_checkpoint(pipe, path: str | Path) -> Path:
    """Write `pipe`'s unet, vae and text encoder as one original-format .safetensors checkpoint."""
    return _save(ldm_state_dict(pipe), path)


def save_sgm_xl_checkpoint(pipe, path: str | Path) -> Path:
    """Write an SDXL pipeline's unet, vae and both text encoders as one .safetensors checkpoint laid out as
    Stability's sd_xl_base_1.0.safetensors."""
    return _save(sgm_xl_state_dict(pipe), path)
