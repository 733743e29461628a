"""What a synced step costs, by family: FLOPs per view and part at each family's real size, and CPU
seconds per step of tiny random models of each family on this machine.

FLOPs: the SDXL and SD 2 base architectures (and SD3.5 medium's and FLUX.1-dev's transformers,
flow_cost.py) are built on the meta device, which counts every
operation without computing it (torch.utils.flop_counter). A synced step per view is the guided
UNet forward with gradient (CFG batch of 2) and its backward, the VAE decoder forward and
backward, LPIPS-VGG forward and backward on the foreseen image (at `sync_image_scale`), and the
second guided UNet forward. An unsynced step is one guided UNet forward.

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
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

from speed import PROMPT, SD2_BASE_UNET, SD_VAE, SDXL_BASE_UNET, write_atomically  # noqa: E402

DENOISING_PASS = "UNet forward (guided, the denoising pass)"


def count(work) -> int:
    with FlopCounterMode(display=False) as counter:
        work()
    return counter.get_total_flops()


def flops_by_part(unet_config: dict, text_tokens: int, xl: bool, image_scale: float) -> dict:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_config).requires_grad_(False)
        vae = AutoencoderKL(**SD_VAE).requires_grad_(False)
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
            DENOISING_PASS: count(lambda: unet_forward(x)),
        }


def flop_rows() -> list[dict]:
    """The UNet families' at each sync_image_scale, then the flow transformers' (flow_cost.py)."""
    import flow_cost

    rows = []
    for name, config, xl, scales in (("SDXL (1024 px)", SDXL_BASE_UNET, True, (1.0, 0.5, 0.25)),
                                     ("SD 2 base (512 px)", SD2_BASE_UNET, False, (1.0,))):
        for scale in scales:
            parts = flops_by_part(config, 77, xl, scale)
            rows.append(dict(model=name, sync_image_scale=scale, parts=parts, synced_step=sum(parts.values()),
                             unsynced_step=parts[DENOISING_PASS]))
    for name, kind, config, forward in flow_cost.FAMILIES:
        parts = flow_cost.parts(kind, config, forward)
        rows.append(dict(model=f"{name} (1024 px)", sync_image_scale=1.0, parts=parts, synced_step=sum(parts.values()),
                         unsynced_step=parts["transformer forward (guided, the denoising pass)"]))
    return rows


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
