"""FLOPs of one synced step per view, by part, for the SD3.5-medium and FLUX.1 architectures at their
default 1024-pixel window (no weights: the networks are built on the meta device, which counts every
operation without computing it), as cost.py counts SDXL's; cost.py writes both into COST.md.

A synced step per view: the guided transformer forward with gradient (SD3: the CFG batch of 2;
FLUX.1-dev: one pass, its guidance distilled) and its backward, the 16-channel VAE decoder forward
and backward, LPIPS-VGG forward and backward on the foreseen image, and the second guided
transformer forward. An unsynced step is one guided transformer forward. Prints a Markdown table.

    python benchmarks/flow_cost.py       # this table alone
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from flow_check import FLUX1_DEV, SD35_MEDIUM, VAE16  # noqa: E402 (the architectures, with the GPU check's)

WINDOW = 128  # latent pixels: 1024 pixels


def count(work) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def sd3_forward(transformer):
    context = torch.randn(2, 77 + 256, 4096)  # CLIP's 77 tokens, then T5's 256
    pooled = torch.randn(2, 2048)

    def forward(latent):
        return transformer(hidden_states=torch.cat([latent, latent]), timestep=torch.full((2,), 500.0),
                           encoder_hidden_states=context, pooled_projections=pooled).sample
    return forward


def flux_forward(transformer):
    from panosync.backbones.flux import pack, position_ids

    context = torch.randn(1, 512, 4096)  # T5's 512 tokens
    pooled = torch.randn(1, 768)

    def forward(latent):
        tokens = pack(latent)
        return transformer(hidden_states=tokens, timestep=torch.full((1,), 0.5), guidance=torch.full((1,), 3.5),
                           pooled_projections=pooled, encoder_hidden_states=context, txt_ids=torch.zeros(512, 3),
                           img_ids=position_ids(WINDOW, WINDOW, "meta", torch.float32)).sample
    return forward


def parts(kind, config: dict, make_forward) -> dict:
    with torch.device("meta"):
        transformer = kind(**config).requires_grad_(False)
        vae = AutoencoderKL(**VAE16).requires_grad_(False)
        vgg = torchvision.models.vgg16().features[:30].requires_grad_(False)  # LPIPS-VGG's five stages
        x = torch.randn(1, 16, WINDOW, WINDOW)
        forward = make_forward(transformer)

        def with_backward(function):
            def work():
                latent = x.clone().requires_grad_(True)
                function(latent).sum().backward()
            return work

        side = WINDOW * 8
        return {
            "transformer forward + backward (guided, with gradient)": count(with_backward(forward)),
            "VAE decoder forward + backward": count(with_backward(lambda latent: vae.decode(latent).sample)),
            f"LPIPS-VGG forward + backward ({side}²)": count(
                with_backward(lambda latent: vgg(torch.randn(1, 3, side, side) + latent.mean()))),
            "transformer forward (guided, the denoising pass)": count(lambda: forward(x)),
        }


FAMILIES = (("SD3.5 medium", SD3Transformer2DModel, SD35_MEDIUM, sd3_forward),
            ("FLUX.1-dev", FluxTransformer2DModel, FLUX1_DEV, flux_forward))


def table() -> str:
    lines = ["| model (1024 px window) | part | TFLOPs per view | share |", "|---|---|---|---|"]
    for name, kind, config, forward in FAMILIES:
        measured = parts(kind, config, forward)
        total = sum(measured.values())
        for part, flops in measured.items():
            lines.append(f"| {name} | {part} | {flops / 1e12:,.1f} | {flops / total:.0%} |")
        unsynced = measured["transformer forward (guided, the denoising pass)"]
        lines.append(f"| {name} | **synced step** ({total / unsynced:.1f}× an unsynced one) | **{total / 1e12:,.1f}** "
                     f"| |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table())
