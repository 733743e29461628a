"""FLOPs of one synced step per view, by part, for the SDXL and SD 2 base architectures (no weights:
the networks are built on the meta device, which counts every operation without computing it).

A synced step per view: the guided UNet forward with gradient (CFG batch of 2) and its backward,
the VAE decoder forward and backward, LPIPS-VGG forward and backward on the foreseen image (at
`sync_image_scale`), and the second guided UNet forward. An unsynced step is one guided UNet
forward. Prints a Markdown table.

    python scripts/sdxl_cost.py
"""

from __future__ import annotations

import torch
import torchvision
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
SD2_UNET = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=(5, 10, 20, 20),
                cross_attention_dim=1024, use_linear_projection=True)
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def count(work) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def parts(unet_config: dict, text_tokens: int, xl: bool, image_scale: float) -> dict:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config).requires_grad_(False)
        vae = AutoencoderKL(**VAE).requires_grad_(False)
        vgg = torchvision.models.vgg16().features[:30].requires_grad_(False)  # LPIPS-VGG's five stages
        window = unet_config["sample_size"]
        x = torch.randn(1, 4, window, window)
        context = torch.randn(2, text_tokens, unet_config["cross_attention_dim"])
        added = dict(added_cond_kwargs=dict(text_embeds=torch.randn(2, 1280), time_ids=torch.randn(2, 6))) if xl else {}

        def unet_forward(latent):
            return unet(torch.cat([latent, latent]), 500, encoder_hidden_states=context, **added).sample

        def with_backward(forward):
            def work():
                latent = x.clone().requires_grad_(True)
                forward(latent).sum().backward()
            return work

        side = round(window * 8 * image_scale)
        return {
            "UNet forward + backward (guided, with gradient)": count(with_backward(unet_forward)),
            "VAE decoder forward + backward": count(with_backward(lambda latent: vae.decode(latent).sample)),
            f"LPIPS-VGG forward + backward ({side}²)": count(
                with_backward(lambda latent: vgg(torch.randn(1, 3, side, side) + latent.mean()))),
            "UNet forward (guided, the denoising pass)": count(lambda: unet_forward(x)),
        }


def table() -> str:
    lines = ["| model, sync_image_scale | part | GFLOPs per view | share |", "|---|---|---|---|"]
    for name, config, tokens, xl, scales in (("SDXL (1024 px)", SDXL_UNET, 77, True, (1.0, 0.5, 0.25)),
                                             ("SD 2 base (512 px)", SD2_UNET, 77, False, (1.0,))):
        for scale in scales:
            measured = parts(config, tokens, xl, scale)
            total = sum(measured.values())
            for part, flops in measured.items():
                lines.append(f"| {name}, {scale:g} | {part} | {flops / 1e9:,.0f} | {flops / total:.0%} |")
            unsynced = measured["UNet forward (guided, the denoising pass)"]
            lines.append(f"| {name}, {scale:g} | **synced step** ({total / unsynced:.1f}× an unsynced one) | "
                         f"**{total / 1e9:,.0f}** | |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
