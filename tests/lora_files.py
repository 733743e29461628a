"""LoRA files for the tiny random models, made as diffusers' training scripts make them: peft
adapters on copies of the networks, with random (non-zero) A and B matrices so that they change the
picture, saved with the family pipeline's `save_lora_weights` (kohya-free diffusers format)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict

ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]
# family: (the diffusers pipeline whose save_lora_weights writes the file, the denoiser's component,
# the text encoders a LoRA of that family may carry)
FAMILIES = {
    "sd": (StableDiffusionPipeline, "unet", ("text_encoder",)),
    "sdxl": (StableDiffusionXLPipeline, "unet", ("text_encoder", "text_encoder_2")),
    "sd3": (StableDiffusion3Pipeline, "transformer", ("text_encoder", "text_encoder_2")),
    "flux": (FluxPipeline, "transformer", ("text_encoder",)),
}


def _adapter_weights(module: torch.nn.Module, targets: list[str], seed: int, rank: int, std: float,
                     alpha: float | None = None) -> tuple[dict, dict]:
    """The diffusers-format state dict of a random LoRA on a copy of `module`, and its config as the
    file's LoRA metadata (what diffusers' training scripts save beside the weights)."""
    torch.manual_seed(seed)
    copied = copy.deepcopy(module)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights=False)
    # peft's own injection, not the models' add_adapter: transformers' asks for a newer peft than is
    # released for some of its versions, and diffusers' loading does not go through it
    inject_adapter_in_model(config, copied)
    with torch.no_grad():
        for name, parameter in copied.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, std)
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(copied)), config.to_dict()


def save_random_lora(family: str, components: dict, folder: str | Path, seed: int = 0, rank: int = 4,
                     text_encoders: bool = True, std: float = 0.2,
                     weight_name: str = "pytorch_lora_weights.safetensors", alpha: float | None = None) -> Path:
    """Write a random LoRA for the tiny `family` model of `components` to `folder`; returns the file.
    `alpha` (default: the rank) other than the rank scales the LoRA by alpha / rank, which only the
    file's metadata says; it is then written with the denoiser's metadata, as diffusers' training
    scripts do."""
    pipeline, denoiser, encoders = FAMILIES[family]
    weights, config = _adapter_weights(components[denoiser], ATTENTION, seed, rank, std, alpha)
    layers = {f"{denoiser}_lora_layers": weights}
    if alpha is not None:
        layers[f"{denoiser}_lora_adapter_metadata"] = config
    if text_encoders:
        for offset, name in enumerate(encoders, start=1):
            layers[f"{name}_lora_layers"] = _adapter_weights(components[name], TEXT_ATTENTION, seed + offset, rank,
                                                             std)[0]
    pipeline.save_lora_weights(str(folder), **layers, weight_name=weight_name, safe_serialization=True)
    return Path(folder) / weight_name
