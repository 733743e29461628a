"""What a synced step costs, by family: FLOPs per view and part at each family's real size, and CPU
seconds per step of tiny random models of each family on this machine.

FLOPs: the SD 2 base, SDXL, SD3.5 medium and FLUX.1-dev architectures are built on the meta
device, which counts every operation without computing it (torch.utils.flop_counter). A synced
step per view is the guided network's forward with gradient (a CFG batch of 2; FLUX.1-dev, its
guidance distilled, one pass) and its backward, the VAE decoder forward and backward, LPIPS-VGG
forward and backward on the foreseen image (at `sync_image_scale`), and the second guided
forward. An unsynced step is one guided forward.

CPU seconds: a panorama of five views of panosync's tiny random SD and tiny random SDXL (the same
UNet widths, 128-pixel windows), synced in its first steps, each step timed; the medians of the
synced and of the plain steps, the first step left out. What the tiny SDXL adds over the tiny SD
is SDXL's conditioning (two text encoders, the pooled embedding and size ids fed to every view's
UNet call) and its sampler; the real models' cost is the FLOP table's.

    OMP_NUM_THREADS=1 python benchmarks/cost.py          # writes benchmarks/COST.md and COST.json
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from flow_check import FLUX1_DEV, SD35_MEDIUM, VAE16  # noqa: E402 (the architectures, with the GPU check's)
from speed import PROMPT, SD2_BASE_UNET, SD_VAE, SDXL_BASE_UNET, write_atomically  # noqa: E402

def count(work) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def synced_step_parts(network: str, forward, vae, latent: torch.Tensor, side: int) -> dict:
    """FLOPs of each pass of a synced step for one view (on the meta device): `forward(latent)` is
    the guided `network`'s call; LPIPS-VGG sees the foreseen image at `side` pixels. The last part,
    the denoising pass, is an unsynced step."""
    vgg = torchvision.models.vgg16().features[:30].requires_grad_(False)  # LPIPS-VGG's five stages
    alex = torchvision.models.alexnet().features[:12].requires_grad_(False)  # LPIPS-AlexNet's five stages

    def with_backward(function):
        def work():
            x = latent.clone().requires_grad_(True)
            function(x).sum().backward()
        return work

    return {
        f"{network} forward + backward (guided, with gradient)": count(with_backward(forward)),
        "VAE decoder forward + backward": count(with_backward(lambda x: vae.decode(x).sample)),
        f"LPIPS-VGG forward + backward ({side}²)": count(
            with_backward(lambda x: vgg(torch.randn(1, 3, side, side) + x.mean()))),
        f"{network} forward (guided, the denoising pass)": count(lambda: forward(latent)),
        # not a part of the faithful step: the fast preset's loss network, in its place (fast_preset_row)
        f"LPIPS-AlexNet forward + backward ({side}²)": count(
            with_backward(lambda x: alex(torch.randn(1, 3, side, side) + x.mean()))),
    }


def unet_parts(unet_config: dict, text_tokens: int, xl: bool, image_scale: float) -> dict:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config).requires_grad_(False)
        vae = AutoencoderKL(**SD_VAE).requires_grad_(False)
        window = unet_config["sample_size"]
        context = torch.randn(2, text_tokens, unet_config["cross_attention_dim"])
        added = dict(added_cond_kwargs=dict(text_embeds=torch.randn(2, 1280), time_ids=torch.randn(2, 6))) if xl else {}

        def unet_forward(latent):
            return unet(torch.cat([latent, latent]), 500, encoder_hidden_states=context, **added).sample

        return synced_step_parts("UNet", unet_forward, vae, torch.randn(1, 4, window, window),
                                 round(window * 8 * image_scale))


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
        return transformer(hidden_states=pack(latent), timestep=torch.full((1,), 0.5), guidance=torch.full((1,), 3.5),
                           pooled_projections=pooled, encoder_hidden_states=context, txt_ids=torch.zeros(512, 3),
                           img_ids=position_ids(FLOW_WINDOW, FLOW_WINDOW, "meta", torch.float32)).sample
    return forward


# SD3 (CFG: a batch of 2) and FLUX.1-dev (its guidance distilled: one pass), at their 1024-pixel window
FLOW_WINDOW = 128  # latent pixels
FLOW_FAMILIES = (("SD3.5 medium", SD3Transformer2DModel, SD35_MEDIUM, sd3_forward),
                 ("FLUX.1-dev", FluxTransformer2DModel, FLUX1_DEV, flux_forward))


def transformer_parts(kind, config: dict, make_forward) -> dict:
    with torch.device("meta"):
        transformer = kind(**config).requires_grad_(False)
        vae = AutoencoderKL(**VAE16).requires_grad_(False)
        return synced_step_parts("transformer", make_forward(transformer), vae,
                                 torch.randn(1, 16, FLOW_WINDOW, FLOW_WINDOW), FLOW_WINDOW * 8)


def flop_rows() -> list[dict]:
    """The UNet families' at each sync_image_scale, then the flow transformers'."""
    rows = []
    for name, config, xl, scales in (("SDXL (1024 px)", SDXL_BASE_UNET, True, (1.0, 0.5, 0.25)),
                                     ("SD 2 base (512 px)", SD2_BASE_UNET, False, (1.0,))):
        for scale in scales:
            rows.append(row(name, scale, unet_parts(config, 77, xl, scale)))
    for name, kind, config, forward in FLOW_FAMILIES:
        rows.append(row(f"{name} (1024 px)", 1.0, transformer_parts(kind, config, forward)))
    return rows


def row(model: str, scale: float, parts: dict) -> dict:
    unsynced = next(flops for part, flops in parts.items() if part.endswith("(guided, the denoising pass)"))
    alex = next(part for part in parts if part.startswith("LPIPS-AlexNet"))
    faithful = {part: flops for part, flops in parts.items() if part != alex}
    return dict(model=model, sync_image_scale=scale, parts=faithful, synced_step=sum(faithful.values()),
                unsynced_step=unsynced, fast_preset=fast_preset_row(faithful, parts[alex], unsynced))


def fast_preset_row(parts: dict, alex_flops: int, unsynced: int, steps: int = 50) -> dict:
    """The fast preset's cost (presets.py) from the faithful step's parts: a synced step without the
    second guided pass (reuse_noise) and with LPIPS-AlexNet for LPIPS-VGG (lpips_alex), in the first
    quarter of `steps`; the whole panorama's FLOPs against MultiDiffusion's (every step unsynced), the
    final decode left out of both."""
    from panosync.presets import fast_threshold

    synced = sum(flops for part, flops in parts.items()
                 if not part.startswith("LPIPS-VGG") and not part.endswith("(guided, the denoising pass)"))
    synced += alex_flops
    first = fast_threshold(steps)
    return dict(synced_step=synced, steps=steps, synced_steps=first,
                times_multidiffusion=(first * synced + (steps - first) * unsynced) / (steps * unsynced),
                faithful_times_multidiffusion=sum(parts.values()) / unsynced)


def cpu_step_seconds(family: str, steps: int = 5, synced: int = 3) -> dict:
    """Median seconds of a synced and of a plain step of a five-view panorama of a tiny model."""
    from panosync.pipeline import SyncDiffusionPipeline
    from panosync.tiny import tiny_random_components, tiny_random_xl_components
    from panosync.xl import SyncDiffusionXLPipeline

    if family == "SDXL":
        pipe = SyncDiffusionXLPipeline(**tiny_random_xl_components(window=16, vae_factor=8))
    else:
        pipe = SyncDiffusionPipeline(**tiny_random_components(window=16, vae_factor=8))
    pipe.set_progress_bar_config(disable=True)
    pipe.perceptual_distance()  # LPIPS loaded before the clock starts
    ends = []
    started = time.perf_counter()
    pipe(PROMPT, height=128, width=320, stride=8, num_inference_steps=steps, sync_threshold=synced,
         guidance_scale=7.5, generator=torch.Generator().manual_seed(0), output_type="latent",
         callback_on_step_end=lambda *_: ends.append(time.perf_counter()) or {})
    durations = np.diff([started, *ends])
    synced_s, plain_s = float(np.median(durations[1:synced])), float(np.median(durations[synced:]))
    return dict(family=family, views=5, window_pixels=128, synced_step_s=synced_s, plain_step_s=plain_s,
                synced_over_plain=synced_s / plain_s,
                unet_parameters=sum(p.numel() for p in pipe.unet.parameters()))


def markdown(data: dict) -> str:
    lines = ["# What a synced step costs, by family", "",
             "Written by `benchmarks/cost.py` (see its docstring for what is counted).", "",
             "## FLOPs per view, the real architectures (meta device)", "",
             "| model, sync_image_scale | part | GFLOPs per view | share |", "|---|---|---|---|"]
    for row in data["flops"]:
        name = f"{row['model']}, {row['sync_image_scale']:g}"
        for part, flops in row["parts"].items():
            lines.append(f"| {name} | {part} | {flops / 1e9:,.0f} | {flops / row['synced_step']:.0%} |")
        lines.append(f"| {name} | **synced step** ({row['synced_step'] / row['unsynced_step']:.1f}× an unsynced "
                     f"one) | **{row['synced_step'] / 1e9:,.0f}** | |")
    lines += ["", "## The fast preset, estimated from the FLOPs", "",
              "A synced step with `reuse_noise` (no second guided pass) and `lpips_alex` (LPIPS-AlexNet for "
              "LPIPS-VGG), in the first quarter of 50 steps (presets.py), against MultiDiffusion at the same stride "
              "and steps; the final decode left out of both. Estimated, not measured: no GPU and no real weights "
              "here.", "",
              "| model | synced step, GFLOPs per view | × an unsynced one | 50 steps, synced in the first | "
              "whole panorama × MultiDiffusion | faithful mode × MultiDiffusion |", "|---|---|---|---|---|---|"]
    for row in data["flops"]:
        fast = row.get("fast_preset")
        if fast is None or row["sync_image_scale"] != 1.0:
            continue
        lines.append(f"| {row['model']} | {fast['synced_step'] / 1e9:,.0f} | "
                     f"{fast['synced_step'] / row['unsynced_step']:.1f}× | {fast['synced_steps']} | "
                     f"**{fast['times_multidiffusion']:.2f}×** | "
                     f"{fast['faithful_times_multidiffusion']:.2f}× |")
    lines += ["", f"## CPU seconds per step, tiny random models ({data['machine']})", "",
              "| family | UNet parameters | views | synced step | plain step | synced / plain |", "|---|---|---|---|---|---|"]
    for row in data["cpu"]:
        lines.append(f"| tiny {row['family']} | {row['unet_parameters'] / 1e6:.2f} M | {row['views']} × "
                     f"{row['window_pixels']} px | {row['synced_step_s']:.3f} s | {row['plain_step_s']:.3f} s | "
                     f"{row['synced_over_plain']:.1f}× |")
    lines += ["", "At this size LPIPS-VGG at 128 px, the same network for both families, is most of a synced step, "
              "so the ratio is not the real models' (the FLOP table's); what the two rows compare is the families' "
              "own work: SDXL's conditioning costs about what SD's does."]
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    data = dict(machine=f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}",
                flops=flop_rows(), cpu=[cpu_step_seconds("SD"), cpu_step_seconds("SDXL")])
    write_atomically(HERE / "COST.json", json.dumps(data, indent=1))
    write_atomically(HERE / "COST.md", markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
