"""Speed and memory of one panorama, per way of making it, timed side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/speed.py              # CPU: the bundled pocket model, writes RESULTS.md
    python benchmarks/speed.py --gpu                          # CUDA: SD 2 base architecture, random weights, fp16
    python benchmarks/speed.py --gpu --smoke                  # the --gpu path at a tiny size, on the CPU

Ways (modes): the reference implementation's per-window loop (tests/reference_loop.py, the
baseline), faithful mode one view per call and in the device's chunk, MultiDiffusion (sync weight
0), diffusers' StableDiffusionPanoramaPipeline at each view batch size tried, and each fast mode.
Every mode runs in its own process, so that its peak memory is its own: on the CPU the peak
resident memory above what the process held before the panorama (Linux VmHWM, reset first); on
CUDA torch.cuda.max_memory_allocated. Times include the final decode.

The floor is the FLOPs of the passes faithful mode cannot avoid (torch.utils.flop_counter: matrix
products, convolutions and attention, forward and backward), divided by the best matrix-multiply
rate this device reaches (measured here, same threads): "× floor" is how far a mode's time is
above the time those FLOPs would take at that rate.

On the CPU the fast modes' coherence is measured too, on the same seeds as faithful mode and
MultiDiffusion: Intra-LPIPS (mean LPIPS-VGG between the panorama's non-overlapping window-sized
crops), the share of panoramas whose crops disagree on the time of day (the pocket model's
attribute classifier), and the mean LPIPS of each crop to the same crop of the faithful panorama.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# panosync from this checkout; pocket (its classifier, for coherence); tests/reference_loop.py, the
# reference implementation's loop
sys.path[:0] = [str(HERE), str(HERE.parent / "src"), str(HERE.parent), str(HERE.parent / "tests")]

from panosync.files import write_atomically  # noqa: E402  (gpu_check.py and cost.py take it from here)

PROMPT = "snowy mountains"  # names no time of day: the montage failure's prompt (docs/pocket-progress.md)


@dataclass(frozen=True)
class Setup:
    """One panorama request and the model that makes it."""

    model: str  # "pocket" (bundled), a diffusers folder, "sd2-random" or "sd2-smoke"
    device: str
    dtype: str
    width: int
    height: int
    stride: int
    steps: int
    sync_threshold: int | None
    guidance_scale: float = 7.5
    sync_weight: float = 20.0
    threads: int = 1

    @property
    def sync_label(self) -> str:
        return "every step" if self.sync_threshold is None else f"first {self.sync_threshold} steps"


@dataclass(frozen=True)
class Mode:
    name: str
    kind: str  # "reference", "pipeline" or "diffusers"
    options: dict = field(default_factory=dict)
    work: str = "faithful"  # which FLOP total of count_flops this mode computes
    step_fraction: float = 1.0  # of the setup's steps (and of its synced steps)
    syncs: bool = True  # False: the result does not depend on the sync settings (MultiDiffusion)
    quality: bool = True  # measure coherence on the quality seeds


def modes(fast_decoder: bool = True) -> list[Mode]:
    fast = [
        Mode("fast: reuse_noise", "pipeline", dict(fast_modes=["reuse_noise"]), "reuse_noise"),
        Mode("fast: no_unet_backward", "pipeline", dict(fast_modes=["no_unet_backward"]), "no_unet_backward"),
        Mode("fast: reuse_noise + no_unet_backward", "pipeline", dict(fast_modes=["reuse_noise", "no_unet_backward"]),
             "reuse_noise+no_unet_backward"),
        Mode("fast: sync_image_scale 0.5", "pipeline", dict(sync_image_scale=0.5), "scale"),
        Mode("fast: reuse_noise + lpips_alex (the fast preset's synced step)", "pipeline",
             dict(fast_modes=["reuse_noise", "lpips_alex"]), "reuse_noise+lpips_alex"),
    ]
    if fast_decoder:
        fast.append(Mode("fast: sync_decoder (TAESD-shaped, random weights)", "pipeline",
                         dict(sync_decoder="random-taesd"), "decoder", quality=False))
    fast.append(Mode("fast: reuse_noise + no_unet_backward + scale 0.5", "pipeline",
                     dict(fast_modes=["reuse_noise", "no_unet_backward"], sync_image_scale=0.5), "all"))
    fast.append(Mode("fast: dpm_solver, half the steps", "pipeline", dict(fast_modes=["dpm_solver"]), "dpm_half",
                     step_fraction=0.5))
    fast.append(Mode("fast: all of the above but the decoder, half the steps", "pipeline",
                     dict(fast_modes=["reuse_noise", "no_unet_backward", "dpm_solver"], sync_image_scale=0.5),
                     "all_half", step_fraction=0.5))
    return [
        Mode("per-window loop, reference order (baseline)", "reference", work="baseline", quality=False),
        Mode("faithful, 1 view per call", "pipeline", dict(view_batch_size=1), quality=False),
        Mode("faithful, device chunk", "pipeline"),
        Mode("MultiDiffusion (sync_weight 0)", "pipeline", dict(sync_weight=0.0), "multidiffusion", syncs=False),
        Mode("diffusers panorama pipeline, view_batch_size 1", "diffusers", dict(view_batch_size=1), "multidiffusion",
             syncs=False, quality=False),
        Mode("diffusers panorama pipeline, view_batch_size = device chunk", "diffusers", dict(view_batch_size=None),
             "multidiffusion", syncs=False, quality=False),
        *fast,
    ]


# ------------------------------------------------------------------------------------------ models


# The real architectures' configs (diffusers' names), shared by the builders below and cost.py.
SD2_BASE_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                     layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                     up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=(5, 10, 20, 20),
                     cross_attention_dim=1024, use_linear_projection=True)
SDXL_BASE_UNET = dict(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280),
                      layers_per_block=2, down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
                      up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",), transformer_layers_per_block=(1, 2, 10),
                      attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                      addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=2816)
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              latent_channels=4, norm_num_groups=32)


def clip_text_encoder(tokenizer, width: int, layers: int, heads: int, projection: bool = False):
    """A CLIP text encoder of the given size over panosync's small tokenizer (a smaller embedding
    table than the real one's: a lookup, no FLOPs to speak of)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=4 * width, num_attention_heads=heads,
        num_hidden_layers=layers, hidden_act="gelu", max_position_embeddings=tokenizer.model_max_length,
        projection_dim=width, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def sd2_base_components(smoke: bool) -> dict:
    """Stable Diffusion 2 base's architecture (UNet 865 M parameters, VAE, OpenCLIP-H-sized text
    encoder) with random weights: it costs exactly what the real model costs. `smoke` shrinks every
    width so the same code path runs on a CPU in seconds."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from panosync.tiny import build_clip_tokenizer

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    width, layers, heads = (64, 2, 2) if smoke else (1024, 23, 16)
    text_encoder = clip_text_encoder(tokenizer, width, layers, heads)
    unet_config = dict(SD2_BASE_UNET, cross_attention_dim=width)
    vae_config = dict(SD_VAE, sample_size=512, scaling_factor=0.18215)
    if smoke:
        unet_config.update(sample_size=16, block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 4, 4, 4))
        vae_config.update(block_out_channels=(32, 32, 64, 64), sample_size=128)
    unet = UNet2DConditionModel(**unet_config)
    vae = AutoencoderKL(**vae_config)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    for module in (text_encoder, unet, vae):
        module.eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def sdxl_base_components(smoke: bool) -> dict:
    """Stable Diffusion XL base's architecture (UNet 2.6 G parameters, CLIP ViT-L and OpenCLIP
    bigG-sized text encoders, its VAE) with random weights, as diffusers' StableDiffusionXLPipeline
    takes them. `smoke`: panosync's tiny SDXL with 128-pixel windows, the same code path in seconds."""
    import copy

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from panosync.tiny import build_clip_tokenizer, tiny_random_xl_components

    if smoke:
        return tiny_random_xl_components(window=16, vae_factor=8)
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    components = dict(
        text_encoder=clip_text_encoder(tokenizer, 768, 12, 12),
        text_encoder_2=clip_text_encoder(tokenizer, 1280, 32, 20, projection=True),
        unet=UNet2DConditionModel(**SDXL_BASE_UNET),
        vae=AutoencoderKL(**SD_VAE, sample_size=1024, scaling_factor=0.13025, force_upcast=True))
    for module in components.values():
        module.eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
    return dict(components, tokenizer=tokenizer, tokenizer_2=copy.deepcopy(tokenizer), scheduler=scheduler)


def load(setup: Setup):
    from panosync.models import load_pipeline
    from panosync.pipeline import SyncDiffusionPipeline

    dtype = getattr(torch, setup.dtype)
    if setup.model in ("sd2-random", "sd2-smoke"):
        pipe = SyncDiffusionPipeline(**sd2_base_components(setup.model == "sd2-smoke")).to(setup.device, dtype)
    else:
        pipe = load_pipeline(setup.model, setup.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def taesd_shaped_decoder(vae_factor: int):
    """An AutoencoderTiny with TAESD's widths and depths (fewer upsamplings where the VAE factor is
    smaller) and random weights: no TAESD weights can be had offline here, so it times the decoder
    but its sync gradient means nothing."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    blocks = vae_factor.bit_length()
    depths = (3,) * (blocks - 1) + (1,)
    return AutoencoderTiny(encoder_block_out_channels=(64,) * blocks, decoder_block_out_channels=(64,) * blocks,
                           num_encoder_blocks=depths[::-1], num_decoder_blocks=depths).eval().requires_grad_(False)


def on_device(module, setup: Setup):
    module = module.to(setup.device)
    return module if setup.dtype == "float32" else module.to(getattr(torch, setup.dtype))


def diffusers_panorama(pipe):
    """diffusers' MultiDiffusion pipeline on the same components. It lays its views out for a
    64-latent window and VAE factor 8; for other models the views are laid out for the model's
    window and factor instead (the stride is ours), and nothing else changes."""
    from diffusers import StableDiffusionPanoramaPipeline

    window, factor = pipe.window, pipe.vae_scale_factor

    class PanoramaForThisWindow(StableDiffusionPanoramaPipeline):
        view_stride = 8

        def get_views(self, panorama_height, panorama_width, window_size=64, stride=8, circular_padding=False):
            if (window, factor) == (64, 8):
                return super().get_views(panorama_height, panorama_width, stride=self.view_stride,
                                         circular_padding=circular_padding)
            return super().get_views(panorama_height * 8 // factor, panorama_width * 8 // factor, window_size=window,
                                     stride=self.view_stride, circular_padding=circular_padding)

    other = PanoramaForThisWindow(**pipe.components, safety_checker=None,
                                  requires_safety_checker=False)
    other.set_progress_bar_config(disable=True)
    return other


# ----------------------------------------------------------------------------------- one process


def resident_memory() -> tuple[int, int]:
    """(current, peak since the last reset) resident memory of this process, in bytes."""
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def reset_peak_memory(device: str) -> int:
    """Start measuring peak memory from here; returns the memory held now."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
    return resident_memory()[0]


def peak_memory(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return resident_memory()[1]


def scaled_steps(setup: Setup, fraction: float) -> Setup:
    """The setup with `fraction` of its steps, and of its synced steps."""
    if fraction == 1.0:
        return setup
    threshold = None if setup.sync_threshold is None else max(1, round(setup.sync_threshold * fraction))
    return replace(setup, steps=max(1, round(setup.steps * fraction)), sync_threshold=threshold)


def run_mode(setup: Setup, mode: Mode, seeds: list[int], out: Path) -> dict:
    """Make the panorama of each seed with `mode`; time the first and measure its peak memory.
    Saves each panorama as uint8 (out/seed-N.npy) and the first's final latent (out/latent.pt)."""
    from panosync.chunks import default_view_batch_size
    from panosync.lpips import load_lpips
    from panosync.views import views_for_canvas
    from reference_loop import reference_panorama

    torch.set_num_threads(setup.threads)
    pipe = load(setup)
    options = dict(mode.options)
    factor, window = pipe.vae_scale_factor, pipe.window
    view_count = len(views_for_canvas(setup.height // factor, setup.width // factor, window, setup.stride))
    chunk = default_view_batch_size(setup.device, window * factor, view_count)
    if options.get("sync_decoder") == "random-taesd":
        options["sync_decoder"] = on_device(taesd_shaped_decoder(factor), setup)
    lpips = load_lpips("vgg")  # loaded before timing: the pipeline loads it on first use too
    pipe.perceptual_distance()
    setup = scaled_steps(setup, mode.step_fraction)
    request = dict(prompt=PROMPT, width=setup.width, height=setup.height, guidance_scale=setup.guidance_scale,
                   num_inference_steps=setup.steps)
    sync = dict(sync_weight=setup.sync_weight, sync_threshold=setup.sync_threshold, stride=setup.stride)

    other = diffusers_panorama(pipe) if mode.kind == "diffusers" else None
    if other is not None:
        other.view_stride = setup.stride

    def panorama(seed: int):
        noise = torch.randn((1, 4, setup.height // factor, setup.width // factor),
                            generator=torch.Generator().manual_seed(seed))
        if mode.kind == "reference":
            latent = reference_panorama(pipe, PROMPT, "", setup.width, setup.height, noise,
                                        **{**sync, "sync_threshold": setup.sync_threshold or setup.steps},
                                        guidance_scale=setup.guidance_scale, num_inference_steps=setup.steps,
                                        lpips=lpips)
            return latent, pipe.decode_panorama(latent, loop_closure=False)[0].permute(1, 2, 0).float().cpu().numpy()
        if mode.kind == "diffusers":
            batch = options["view_batch_size"] or chunk
            image = other(**request, latents=noise.to(setup.device, pipe.unet.dtype), view_batch_size=batch,
                          output_type="np").images[0]
            return None, image
        final = {}

        def keep_latent(p, step, t, state):
            final["latents"] = state["latents"]

        image = pipe(**request, **{**sync, **options}, latents=noise.to(setup.device), output_type="np",
                     callback_on_step_end=keep_latent).images[0]
        return final["latents"], image

    held = reset_peak_memory(setup.device)
    started = time.perf_counter()
    latent, image = panorama(seeds[0])
    if setup.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    peak = peak_memory(setup.device) - (held if not setup.device.startswith("cuda") else 0)
    images = {seeds[0]: image}
    for seed in seeds[1:]:
        images[seed] = panorama(seed)[1]
    for seed, image in images.items():
        np.save(out / f"seed-{seed}.npy", (np.asarray(image) * 255).round().astype(np.uint8))
    if latent is not None:
        torch.save(latent.float().cpu(), out / "latent.pt")
    batch = options.get("view_batch_size", "auto")
    return dict(seconds=seconds, peak_bytes=peak, views=view_count, chunk=chunk if batch in (None, "auto") else batch)


# ------------------------------------------------------------------------------------------ FLOPs


def count_flops(setup: Setup) -> dict:
    """FLOPs of each pass of one view and of the final decode, and the per-mode totals of one panorama."""
    from torch.utils.flop_counter import FlopCounterMode

    from panosync.fast import FastModes
    from panosync.sync import SyncModels, sync_step
    from panosync.views import views_for_canvas

    torch.set_num_threads(setup.threads)
    pipe = load(setup)
    factor, window = pipe.vae_scale_factor, pipe.window
    device, dtype = setup.device, getattr(torch, setup.dtype)
    views = len(views_for_canvas(setup.height // factor, setup.width // factor, window, setup.stride))
    embeddings = pipe.backbone.encode_prompt([PROMPT], [""], device)
    pipe.scheduler.set_timesteps(setup.steps, device=device)
    t = pipe.scheduler.timesteps[0]
    x = torch.randn((1, 4, window, window), generator=torch.Generator().manual_seed(0)).to(device)
    perceptual = pipe.perceptual_distance()

    def flops(work) -> int:
        with FlopCounterMode(display=False) as counter:
            work()
        return counter.get_total_flops()

    def noise_of(latent):
        return pipe.backbone.guided_prediction(latent, t, embeddings, setup.guidance_scale)

    def original(latent, prediction):
        return pipe.scheduler.step(prediction, t, latent).pred_original_sample

    def anchor_pass(fast):
        with torch.no_grad():
            return pipe.perceptual_distance(fast.lpips_net).target_features(
                pipe.foreseen_image(original(x, noise_of(x)), fast) * 2 - 1)

    def gradient_pass(fast):
        target = anchor_pass(fast)
        models = SyncModels(noise_of, original, lambda x0: pipe.foreseen_image(x0, fast),
                            lambda images: pipe.perceptual_distance(fast.lpips_net)(images * 2 - 1, target))
        return lambda: sync_step(x, 1.0, models, prediction_is_constant=fast.no_unet_backward)

    decoder = on_device(taesd_shaped_decoder(factor), setup)
    variants = {
        "faithful": FastModes(),
        "no_unet_backward": FastModes(no_unet_backward=True),
        "scale": FastModes(image_scale=0.5),
        "decoder": FastModes(decoder=decoder),
        "nub_scale": FastModes(no_unet_backward=True, image_scale=0.5),
        "alex": FastModes(lpips_net="alex"),
    }
    with torch.no_grad():
        unet = flops(lambda: noise_of(x))
        image = pipe.decode_to_unit(x)
        anchor_features = flops(lambda: perceptual.target_features(image * 2 - 1))
        latent = torch.randn((1, 4, setup.height // factor, setup.width // factor)).to(device)
        final_decode = flops(lambda: pipe.decode_panorama(latent, loop_closure=False))
    anchor = {name: flops(lambda s=s: anchor_pass(s)) for name, s in variants.items()}
    gradient = {name: flops(gradient_pass(s)) for name, s in variants.items()}

    def synced_and_plain(fraction: float) -> tuple[int, int]:
        scaled = scaled_steps(setup, fraction)
        synced = scaled.steps if scaled.sync_threshold is None else min(scaled.sync_threshold, scaled.steps)
        return synced, (scaled.steps - synced) * views * unet + final_decode

    synced, plain_steps = synced_and_plain(1.0)

    def total(variant: str, second_unet_pass: bool, fraction: float = 1.0) -> int:
        synced, plain_steps = synced_and_plain(fraction)
        per_step = anchor[variant] + (views - 1) * (gradient[variant] + (unet if second_unet_pass else 0))
        return synced * per_step + plain_steps

    # the reference order: every view (the anchor too) a gradient pass with the anchor's LPIPS
    # features recomputed, and a second UNet pass; the anchor's own pass besides
    baseline_step = anchor["faithful"] - anchor_features + views * (gradient["faithful"] + anchor_features + unet)
    totals = {
        "baseline": synced * baseline_step + plain_steps,
        "faithful": total("faithful", True),
        "multidiffusion": setup.steps * views * unet + final_decode,
        "reuse_noise": total("faithful", False),
        "reuse_noise+lpips_alex": total("alex", False),
        "no_unet_backward": total("no_unet_backward", True),
        "reuse_noise+no_unet_backward": total("no_unet_backward", False),
        "scale": total("scale", True),
        "decoder": total("decoder", True),
        "all": total("nub_scale", False),
        "dpm_half": total("faithful", True, 0.5),
        "all_half": total("nub_scale", False, 0.5),
    }
    passes = dict(unet_forward=unet, gradient_pass=gradient["faithful"], anchor_pass=anchor["faithful"],
                  lpips_features=anchor_features, final_decode=final_decode)
    return dict(passes=passes, totals=totals, views=views)


def matmul_rate(setup: Setup) -> float:
    """The best matrix-multiply rate this device reaches, FLOP/s (same threads and dtype as the runs)."""
    torch.set_num_threads(setup.threads)
    size = 4096 if setup.device.startswith("cuda") else 1024
    a = torch.randn(size, size, device=setup.device, dtype=getattr(torch, setup.dtype))
    best = float("inf")
    for _ in range(5):
        if setup.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(4):
            a @ a
        if setup.device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * size**3 / best


# ------------------------------------------------------------------------------------- coherence


def coherence(folder: Path, seeds: list[int], crop_size: int, faithful: Path | None) -> dict:
    """Intra-LPIPS, time-of-day disagreement of the crops, and LPIPS to faithful mode's crops."""
    from panosync.eval.crops import crop_batch, crops
    from panosync.eval.perceptual import intra_lpips
    from panosync.lpips import load_lpips
    from pocket.classify import classify_time

    lpips = load_lpips("vgg")
    intra, disagree, to_faithful = [], 0, []
    for seed in seeds:
        panorama = np.load(folder / f"seed-{seed}.npy")
        intra.append(intra_lpips(panorama, crop_size, lpips))
        disagree += len({classify_time(tile) for tile in crops(panorama, crop_size)}) > 1
        if faithful is not None:
            ours, theirs = crop_batch(panorama, crop_size), crop_batch(np.load(faithful / f"seed-{seed}.npy"), crop_size)
            with torch.no_grad():
                to_faithful.append(float(lpips(ours * 2 - 1, theirs * 2 - 1).mean()))
    return dict(intra_lpips=float(np.mean(intra)), disagreement=disagree / len(seeds),
                lpips_to_faithful=float(np.mean(to_faithful)) if to_faithful else None)


# ------------------------------------------------------------------------------------------ driver


def child_main(job: dict) -> None:
    result = run_mode(Setup(**job["setup"]), Mode(**job["mode"]), job["seeds"], Path(job["out"]))
    print("RESULT " + json.dumps(result), flush=True)


def in_child(job: dict, timeout: float) -> dict:
    """Run one job in a fresh Python process (its own peak memory), with the same environment."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(job)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{job['mode']['name']} failed:\n{done.stderr[-3000:]}")


def machine(setup: Setup) -> str:
    if setup.device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores, {setup.threads} thread(s) per run, torch {torch.__version__}"


def load_average() -> str:
    return " / ".join(f"{value:.1f}" for value in os.getloadavg())


def table(results: dict, works: dict, flops: dict, rate: float) -> list[str]:
    baseline = results.get("per-window loop, reference order (baseline)", next(iter(results.values())))["seconds"]
    floor_seconds = flops["totals"]["faithful"] / rate
    lines = [f"| mode | s | × faster than baseline | × floor ({floor_seconds:.1f} s) | its GFLOP | GFLOP/s | "
             f"peak memory (MiB) | views per call |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        own = flops["totals"][works[name]]
        gflop = f"{own / 1e9:.1f}"
        rate_text = f"{own / result['seconds'] / 1e9:.1f}"
        lines.append(f"| {name} | {result['seconds']:.1f} | {baseline / result['seconds']:.2f} | "
                     f"{result['seconds'] / floor_seconds:.1f} | {gflop} | {rate_text} | "
                     f"{result['peak_bytes'] / 2**20:.0f} | {result['chunk']} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help="SD 2 base architecture, random weights, fp16, on CUDA")
    parser.add_argument("--smoke", action="store_true", help="with --gpu: a tiny SD-2-shaped model on the CPU")
    parser.add_argument("--model", default="pocket", help="CPU runs: the model (default: the bundled pocket model)")
    parser.add_argument("--windows", type=int, default=21, help="CPU runs: panorama width in views (21)")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (CPU 20, GPU 50)")
    parser.add_argument("--sync-first", type=int, default=10, help="the second setting syncs in the first n steps")
    parser.add_argument("--quality-seeds", type=int, default=4, help="CPU runs: seeds for the coherence figures")
    parser.add_argument("--only", nargs="*", default=None, help="only the modes whose names start with these")
    parser.add_argument("--out", type=Path, default=None, help="Markdown results (default: benchmarks/RESULTS.md; "
                                                               "--gpu: RESULTS-gpu.md; --smoke: none)")
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0

    load_before = load_average()
    if args.gpu:
        device = "cpu" if args.smoke else "cuda"
        model, dtype = ("sd2-smoke", "float32") if args.smoke else ("sd2-random", "float16")
        steps = args.steps or (2 if args.smoke else 50)
        window_pixels, stride = (128, 4) if args.smoke else (512, 16)
        sizes = [(window_pixels, 4 * window_pixels), (window_pixels, 6 * window_pixels)]
        out = args.out or (None if args.smoke else HERE / "RESULTS-gpu.md")
        threads, quality_seeds = (torch.get_num_threads(), 0)
    else:
        from panosync.models import resolve_model

        source = resolve_model(args.model)
        device, dtype, model = "cpu", "float32", args.model
        steps = args.steps or 20
        window_pixels, stride = source.window * source.vae_factor, max(1, source.window // 4)
        width = source.vae_factor * (source.window + (args.windows - 1) * stride)
        sizes = [(window_pixels, width)]
        out = args.out or HERE / "RESULTS.md"
        threads, quality_seeds = 1, args.quality_seeds
    chosen = [mode for mode in modes() if args.only is None or any(mode.name.startswith(o) for o in args.only)]

    started = time.time()
    report, sections = {}, []
    with tempfile.TemporaryDirectory() as scratch:
        for height, width in sizes:
            for threshold in (None, args.sync_first):
                setup = Setup(model, device, dtype, width, height, stride, steps, threshold, threads=threads)
                flops = count_flops(setup)
                rate = matmul_rate(setup)
                quality_run = threshold is None and quality_seeds > 0
                results, folders = {}, {}
                for mode in chosen:
                    key = f"{height}x{width}"
                    if not mode.syncs and threshold is not None:  # the same run as for sync in every step
                        results[mode.name] = report[key]["every step"]["results"][mode.name]
                        continue
                    folder = Path(scratch) / f"{height}x{width}-{threshold}-{len(results)}"
                    folder.mkdir()
                    seeds = list(range(quality_seeds)) if quality_run and mode.quality else [0]
                    job = dict(setup=asdict(setup), mode=asdict(mode), seeds=seeds, out=str(folder))
                    print(f"{setup.width}x{setup.height}, sync {setup.sync_label}: {mode.name} ...", flush=True)
                    results[mode.name] = in_child(job, timeout=6 * 3600)
                    folders[mode.name] = folder
                    print(f"  {results[mode.name]['seconds']:.1f} s, "
                          f"{results[mode.name]['peak_bytes'] / 2**20:.0f} MiB", flush=True)
                agreement = {}
                faithful_folder = folders.get("faithful, device chunk")
                one_by_one = folders.get("faithful, 1 view per call", faithful_folder)
                if one_by_one is not None and (one_by_one / "latent.pt").exists():
                    reference = torch.load(one_by_one / "latent.pt")
                    for name in ("per-window loop, reference order (baseline)", "faithful, device chunk"):
                        if name in folders and folders[name] != one_by_one and (folders[name] / "latent.pt").exists():
                            difference = (torch.load(folders[name] / "latent.pt") - reference).abs().max()
                            agreement[name] = float(difference)
                quality = {}
                if quality_run and faithful_folder is not None:
                    seeds = list(range(quality_seeds))
                    for mode in chosen:
                        if mode.quality and mode.name in folders:
                            compare = faithful_folder if mode.name != "faithful, device chunk" else None
                            quality[mode.name] = coherence(folders[mode.name], seeds, window_pixels, compare)
                report.setdefault(f"{height}x{width}", {})[setup.sync_label] = dict(
                    setup=asdict(setup), results=results, flops=flops, matmul_flops_per_s=rate,
                    faithful_agreement=agreement, quality=quality)
                lines = [f"### {width}×{height}, {steps} steps, sync in {setup.sync_label}", "",
                         *table(results, {mode.name: mode.work for mode in chosen}, flops, rate), ""]
                if agreement:
                    lines += ["Largest difference of the final latent from faithful mode's, one view per call (the "
                              "sync effect itself is of order 1): " +
                              ", ".join(f"{name}: {value:.1e}" for name, value in agreement.items()), ""]
                if quality:
                    lines += [f"Coherence, {quality_seeds} seeds (0 to {quality_seeds - 1}), crops of {window_pixels} "
                              f"pixels:", "", "| mode | Intra-LPIPS | crops disagree on the time of day | "
                                              "LPIPS to faithful |", "|---|---|---|---|"]
                    for name, q in quality.items():
                        to_faithful = "–" if q["lpips_to_faithful"] is None else f"{q['lpips_to_faithful']:.3f}"
                        lines.append(f"| {name} | {q['intra_lpips']:.3f} | {q['disagreement']:.0%} | {to_faithful} |")
                    lines.append("")
                print("\n".join(lines), flush=True)
                sections += lines
    header = [
        f"Machine: {machine(setup)}. Load average (1/5/15 min) before: {load_before}; after: {load_average()}.",
        f"Model: {model} ({dtype}), prompt “{PROMPT}”, guidance 7.5, sync weight 20, decay 0.95, stride {stride}, "
        f"seed 0; whole run {(time.time() - started) / 60:.0f} min.",
        "",
    ]
    title = "# Speed and memory of one panorama" + (" (GPU)" if args.gpu else "")
    notes = NOTES if args.gpu else NOTES + CPU_NOTES
    text = "\n".join([title, "", *header, *headline(report), *sections, *notes])
    print(text)
    if out is not None:
        write_atomically(out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
        write_atomically(out, text + "\n")
        print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def headline(report: dict) -> list[str]:
    """The figures the issue's targets are about, from the tables below."""
    lines = ["## Headline", ""]
    for size, settings in report.items():
        for label, entry in settings.items():
            seconds = {name: result["seconds"] for name, result in entry["results"].items()}
            baseline = seconds.get("per-window loop, reference order (baseline)")
            parts = []
            if baseline and "faithful, device chunk" in seconds:
                parts.append(f"faithful mode {baseline / seconds['faithful, device chunk']:.2f}× faster than the "
                             f"per-window baseline")
            fast = {name: s for name, s in seconds.items() if name.startswith("fast:")}
            if baseline and fast:
                name = min(fast, key=fast.get)
                parts.append(f"fastest fast mode ({name.removeprefix('fast: ')}) {baseline / fast[name]:.1f}×")
            diffusers = [s for name, s in seconds.items() if name.startswith("diffusers")]
            if diffusers and "MultiDiffusion (sync_weight 0)" in seconds:
                parts.append(f"MultiDiffusion {min(diffusers) / seconds['MultiDiffusion (sync_weight 0)']:.2f}× the "
                             f"speed of diffusers' panorama pipeline at its best view batch size")
            quality = entry.get("quality") or {}
            faithful = quality.get("faithful, device chunk")
            if faithful:
                for name, q in quality.items():
                    if name.startswith("fast:"):
                        change = q["intra_lpips"] / faithful["intra_lpips"] - 1
                        parts.append(f"{name.removeprefix('fast: ')}: Intra-LPIPS {change:+.0%} against faithful")
            if parts:
                lines.append(f"- {size.replace('x', '×')}, sync in {label}: " + "; ".join(parts) + ".")
    return lines + [""]


NOTES = [
    "## Notes",
    "",
    "- Modes: the baseline is tests/reference_loop.py, the reference implementation's loop (one view at a "
    "time, the anchor's gradient computed and discarded, LPIPS's own forward for every pair, a second UNet pass "
    "for every view). Faithful mode gives its result (the largest latent difference is printed under each table). "
    "What each fast mode approximates: src/panosync/fast.py.",
    "- The sync decoder row uses an AutoencoderTiny with TAESD's widths and depths and random weights: no TAESD "
    "weights can be had offline here, so the row times the decoder but its panoramas mean nothing, and it has no "
    "coherence figures. TAESD itself is made for Stable Diffusion's latents, not the pocket model's.",
    "- diffusers' StableDiffusionPanoramaPipeline lays out views for a 64-latent window and VAE factor 8; for the "
    "pocket model (window 16, factor 4) its get_views is given the model's window and the same stride, nothing "
    "else changes. Both MultiDiffusion rows include the final decode.",
    "- The floor counts matrix products, convolutions and attention (torch.utils.flop_counter), not element-wise "
    "work or normalisation; on small models those, and Python overhead, are a large part of the time.",
    "- Peak memory: CPU, the most resident memory above what the process held before the panorama (models and LPIPS "
    "loaded); CUDA, torch.cuda.max_memory_allocated (weights included).",
    "- Faithful mode with one view per call gives the per-window loop's latent bit for bit (difference 0 under each "
    "table). With several views per call it computes the same arithmetic (tests/test_fast_modes.py holds the two to "
    "1e-9 in float64) but rounds differently, and the sync gradient amplifies rounding wherever it meets a "
    "threshold (the clamp of saturated pixels, ReLUs near zero): on the pocket model, after 20 synced steps at "
    "weight 20 the two panoramas drift apart by as much as the sync effect itself (the latent difference under each "
    "table). Any other change of rounding (dtype, device, library version) moves the reference's own result the "
    "same way; `view_batch_size=1` reproduces the reference order exactly on the same machine.",
]

CPU_NOTES = [
    "- 20 DDIM steps (the pocket model's recommended count) rather than the paper's 50, to fit the CPU; the fast "
    "modes marked \"half the steps\" take 10 (syncing in the first 5 where the others sync in the first 10). The "
    "canvas is 21 views wide at the default stride (a quarter window), as the paper's 512×3072 at stride 16.",
    "- Intra-LPIPS: lower means the crops look more alike (more coherent); a negative change against faithful mode "
    "in the headline is more coherent, not less.",
    "- The coherence figures come from few seeds (see each table) on a 2-core machine: read them as a direction, "
    "not a significant difference; with this many panoramas the disagreement rate moves in steps of 1/seeds.",
    "- No GPU was lent to this task: the `--gpu` path (SD 2 base architecture, random weights, fp16, 512×2048 and "
    "512×3072, 50 steps, sync in every step and in the first 10) has only been run at smoke size on the CPU "
    "(`--gpu --smoke`); its figures, the ≥ 3× GPU target and the GPU memory of 512×8192 and 2048×2048 are "
    "still to be measured. benchmarks/MEMORY.md estimates the memory from CPU measurements.",
]


if __name__ == "__main__":
    sys.exit(main())
