"""The GPU check's part for the flow-matching transformers: SD3.5 medium's and FLUX.1-dev's
architectures with random weights in bfloat16, a 1024 x 4096 panorama (1024-pixel windows, a
quarter window apart: 13 views), seconds per synced and per plain step, faithful and with
no_unet_backward (no backward through the transformer), and the peak GPU memory of each run.

The transformers and the 16-channel VAE are the real architectures (the configs below, as the
models' folders give them), so a step costs what it costs with the real weights. The text
encoders are not: a step never runs them, so they are one-layer stand-ins of the real widths
(CLIP-L 768, CLIP-G 1280, T5-XXL 4096) whose tokenizers pad to the real token counts (77, and T5's
256 for SD3, 512 for FLUX), which is what the transformer sees. cost.py counts the
same step's FLOPs from these configs.

gpu_check.py runs this as its last part ("flow transformers"), or alone: `gpu_check.py --only flow`.
The smoke run uses tiny.py's tiny models on the CPU, in float32.
"""

from __future__ import annotations

import time

import torch

# stabilityai/stable-diffusion-3.5-medium's transformer config
SD35_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                   num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                   pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
# black-forest-labs/FLUX.1-dev's (schnell's is the same without guidance_embeds)
FLUX1_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=(16, 56, 56))
# the 16-channel VAE both use
VAE16 = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
             down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
             use_quant_conv=False, use_post_quant_conv=False)
# the schedulers' configs of the two models
SD35_SCHEDULER = dict(shift=3.0)
FLUX_SCHEDULER = dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                      max_image_seq_len=4096)
FAMILIES = ("SD3.5 medium", "FLUX.1-dev")
STEPS, SYNCED = 4, 3  # the first step is left out of the medians: 2 synced steps and 1 plain one are timed
MODES = {"faithful": (), "no_unet_backward": ("no_unet_backward",)}


def _clip(width: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from panosync.tiny import build_clip_tokenizer

    tokenizer = build_clip_tokenizer()
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=width, num_hidden_layers=1,
                            num_attention_heads=8, max_position_embeddings=77, projection_dim=width,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tokenizer


def _t5():
    from transformers import T5Config, T5EncoderModel

    from panosync.tiny import build_t5_tokenizer

    tokenizer = build_t5_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=8,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)
    return T5EncoderModel(config), tokenizer


def real_size_components(family: str) -> dict:
    """The components of `family` at the real models' size (random weights, float32: cast after)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel

    if family == "SD3.5 medium":
        text_encoder, tokenizer = _clip(768, projection=True)
        text_encoder_2, tokenizer_2 = _clip(1280, projection=True)
        text_encoder_3, tokenizer_3 = _t5()
        return dict(transformer=SD3Transformer2DModel(**SD35_MEDIUM),
                    vae=AutoencoderKL(**VAE16, scaling_factor=1.5305, shift_factor=0.0609),
                    scheduler=FlowMatchEulerDiscreteScheduler(**SD35_SCHEDULER), text_encoder=text_encoder,
                    tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
    text_encoder, tokenizer = _clip(768, projection=False)
    text_encoder_2, tokenizer_2 = _t5()
    return dict(transformer=FluxTransformer2DModel(**FLUX1_DEV),
                vae=AutoencoderKL(**VAE16, scaling_factor=0.3611, shift_factor=0.1159),
                scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), text_encoder=text_encoder,
                tokenizer=tokenizer, text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def build(family: str, smoke: bool, device: str, dtype: torch.dtype):
    """The family's pipeline on `device` in `dtype`: real-size on a GPU, tiny.py's in a smoke run."""
    from panosync.flux import SyncDiffusionFluxPipeline
    from panosync.sd3 import SyncDiffusion3Pipeline
    from panosync.tiny import tiny_random_flux_components, tiny_random_sd3_components

    kind = SyncDiffusion3Pipeline if family == "SD3.5 medium" else SyncDiffusionFluxPipeline
    if smoke:
        components = (tiny_random_sd3_components if kind is SyncDiffusion3Pipeline else tiny_random_flux_components)()
    else:
        with torch.device(device):  # random initialisation of 12 B parameters is slow on a CPU
            components = real_size_components(family)
    pipe = kind(**components).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.perceptual_distance()  # LPIPS loaded now, not in the first timed run
    return pipe


def canvas(smoke: bool) -> dict:
    """A 1024 x 4096 panorama of 1024-pixel windows (smoke: 32 x 128 of 32-pixel windows), views a
    quarter window apart, and T5's token count of the real models (smoke: 32)."""
    if smoke:
        return dict(height=32, width=128, window=32, stride=4, max_sequence_length=32)
    return dict(height=1024, width=4096, window=1024, stride=32)


def timed_run(pipe, device: str, smoke: bool, fast_modes: tuple[str, ...]) -> dict:
    """One panorama, synced in its first SYNCED of STEPS steps, one view per network call: the
    medians of its synced and plain steps, and its peak memory."""
    from gpu.harness import free_memory
    from gpu.parts import StepTimes, image_figures

    free_memory(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = StepTimes(device)
    image = pipe("snowy mountains", num_inference_steps=STEPS, sync_threshold=SYNCED, seed=0, view_batch_size=1,
                 fast_modes=fast_modes, output_type="np", callback_on_step_end=times.mark, **canvas(smoke)).images[0]
    row = dict(times.summary(SYNCED), **image_figures(image))
    if device == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def flow_part(check) -> None:
    """The part's runs, each recorded by the check (a failure is a row, not the end of the part)."""
    from gpu.harness import free_memory

    plan = check.plan
    dtype = torch.float32 if plan.smoke else torch.bfloat16
    views = 13  # canvas(): a 4-window-wide panorama, views a quarter window apart
    for family in FAMILIES:
        started = time.perf_counter()
        try:
            pipe = build(family, plan.smoke, plan.device, dtype)
        except Exception as error:
            check.part_data["notes"].append(f"{family}: not built: {type(error).__name__}: {error}")
            continue
        parameters = sum(p.numel() for p in pipe.transformer.parameters()) / 1e9
        check.part_data["notes"].append(
            f"{family}: transformer {parameters:.2f} B parameters, {str(dtype).removeprefix('torch.')}, built in "
            f"{time.perf_counter() - started:.0f} s")
        # seconds expected: FLOPs per view of a synced and a plain step (cost.py, COST.md) at ~400 TFLOP/s
        synced_view, plain_view = (0.25, 0.06) if family == "SD3.5 medium" else (0.65, 0.19)
        if plan.smoke:
            synced_view, plain_view = plan.synced_view_s, plan.plain_view_s
        for mode, fast_modes in MODES.items():
            expected = views * (SYNCED * synced_view + (STEPS - SYNCED) * plain_view) + 10
            def work(pipe=pipe, fast_modes=fast_modes):
                return timed_run(pipe, plan.device, plan.smoke, fast_modes)

            check.attempt(f"{family}, {mode}", expected, work, family=family, mode=mode, views=views)
        del pipe
        free_memory(plan.device)


def flow_table(runs: list[dict]) -> list[str]:
    """GPU.md's table of the part."""
    lines = ["| model | sync gradient | synced step (s) | plain step (s) | synced / plain | peak memory (GiB) |",
             "|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("error"):
            continue
        synced, plain = row.get("synced_step_s"), row.get("plain_step_s")
        ratio = f"{synced / plain:.1f}×" if synced and plain else "–"
        peak = f"{row['peak_gib']:.1f}" if row.get("peak_gib") is not None else "–"
        lines.append(f"| {row.get('family')} | {row.get('mode')} | {synced or 0:.2f} | {plain or 0:.2f} | {ratio} | "
                     f"{peak} |")
    lines += ["", "bfloat16, a 1024 x 4096 panorama of 13 views (1024-pixel windows, stride 32 latents), one view "
                  "per network call; medians of 2 synced steps and 1 plain one (the first step left out).", ""]
    return lines
