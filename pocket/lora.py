"""A small LoRA for the bundled pocket model that teaches it a style its prompts do not name: night.

    python -m pocket.lora train   --run runs/pocket-lora   # render, encode, train, save the LoRA
    python -m pocket.lora picture --run runs/pocket-lora   # measure it; docs/pocket-lora.png and .json

The training set is pocket's own landscapes (`pocket.landscapes`) rendered with the time of day fixed
to night and captioned *without* the time ("snowy mountains", "a sea with a green shore", "a
landscape"), so the LoRA learns night as the default look rather than as the meaning of a word. Only
low-rank updates of the UNet's attention projections (to_q, to_k, to_v, to_out.0) are trained; the
UNet, the text encoder and the autoencoder stay frozen. The loss is the one pocket was trained with
(`pocket.train`'s unet stage): epsilon MSE on the autoencoder's latents × its scaling factor, under
the bundled scheduler's (shifted) noise schedule, captions dropped 10 % of the time for guidance,
random horizontal flips.

Like `pocket.train`'s stages, `train` checkpoints atomically (every minute, and at the end) and
picks up where it stopped when run again; `--steps` is the total to reach. At the end it writes the
LoRA in diffusers' format (`StableDiffusionPipeline.save_lora_weights`, safetensors) to `--out`,
which `pipe.load_lora_weights(folder)` loads.

`picture` keeps every panorama it makes under the run folder (`panoramas/`), so it too resumes.
Seeds: tuning (looked at while choosing the training settings) 8000-8063; judging (the tables) single
windows from 8500, panoramas from 8600 -- none used before in this project (bar_measures.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from panosync.files import write_atomically
from .landscapes import ATTRIBUTES, caption, render_landscape
from .train import MAX_TOKENS, Progress, images_to_tensor, sample_clean_latents, save_atomically

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "pocket-lora" / "pocket-night-lora"
STYLE = {"time": "night"}  # what every training image shows and no caption names
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
ADAPTER = "night"

TUNING_SEEDS = range(8000, 8064)
JUDGING_WINDOW_SEEDS_FROM = 8500
JUDGING_PANORAMA_SEEDS_FROM = 8600
SCALES = (0.0, 0.5, 0.8, 1.0)
PROMPTS = ("snowy mountains", "green hills", "a sea with a desert shore")
TIMED_PROMPT = "snowy mountains by day"  # a prompt that names a time against the LoRA


# ------------------------------------------------------------------------------------ the parts


def pocket_folder() -> Path:
    from panosync.bundled import bundled_model_folder

    return bundled_model_folder("pocket")


def pocket_parts():
    """pocket's tokenizer, text encoder, autoencoder, UNet (float32, frozen) and its noise schedule."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = pocket_folder()
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch.float32)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=torch.float32)
    for model in (text_encoder, vae, unet):
        model.eval().requires_grad_(False)
    # the forward process pocket was fine-tuned under: its scheduler's trained_betas (SNR / 64)
    schedule = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    return tokenizer, text_encoder, vae, unet, schedule


def lora_config(rank: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES)


def with_lora(unet, rank: int):
    """The UNet with a fresh LoRA on its attention projections; only the LoRA trains."""
    from peft import inject_adapter_in_model

    unet.requires_grad_(False)
    unet = inject_adapter_in_model(lora_config(rank), unet)
    for name, parameter in unet.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return unet


def lora_state(unet) -> dict:
    from peft import get_peft_model_state_dict

    return {key: value.detach().clone() for key, value in get_peft_model_state_dict(unet).items()}


# -------------------------------------------------------------------------------------- stages


def stage_data(run: Path, count: int, seed: int) -> None:
    """`count` landscapes at night, every other attribute drawn uniformly, captions without the time."""
    path = run / "data.npz"
    if path.exists():
        return
    started = time.time()
    rng = np.random.default_rng(seed)
    images = np.empty((count, 64, 64, 3), dtype=np.uint8)
    captions = []
    for i in range(count):
        attributes = {name: str(values[rng.integers(len(values))]) for name, values in ATTRIBUTES.items()
                      if name not in STYLE}
        images[i] = render_landscape({**attributes, **STYLE}, int(rng.integers(0, 2**63 - 1)), 64, 64)
        captions.append(caption(attributes, rng))  # names ground and terrain (each kept 65 %), never the time
    write_atomically(path, lambda file: np.savez_compressed(file, images=images, captions=np.array(captions)))
    print(f"rendered {count} night landscapes in {time.time() - started:.0f} s -> {path}", flush=True)


@torch.no_grad()
def encode(run: Path, vae) -> dict:
    path = run / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    data = np.load(run / "data.npz")
    means, stds = [], []
    for start in range(0, len(data["images"]), 256):
        posterior = vae.encode(images_to_tensor(data["images"][start:start + 256])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    latents = {"mean": torch.cat(means), "std": torch.cat(stds), "captions": [str(c) for c in data["captions"]]}
    save_atomically(latents, path)
    return latents


def stage_train(run: Path, steps: int, batch: int, lr: float, rank: int, drop_caption: float, seed: int,
                out: Path) -> None:
    tokenizer, text_encoder, vae, unet, schedule = pocket_parts()
    stage_data(run, 4000, seed)
    latents = encode(run, vae)
    torch.manual_seed(seed)
    unet = with_lora(unet, rank)
    parameters = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.0)
    checkpoint_path, step, state = run / "lora.pt", 0, {}
    if checkpoint_path.exists():
        from peft import set_peft_model_state_dict

        state = torch.load(checkpoint_path, weights_only=False)
        if state["rank"] != rank:
            raise SystemExit(f"{checkpoint_path} has rank {state['rank']}: resume it with --rank {state['rank']}, "
                             "or start a new --run.")
        set_peft_model_state_dict(unet, state["lora"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    tokens = tokenizer(latents["captions"], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                       return_tensors="pt").input_ids
    empty = tokenizer("", padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids[0]
    with torch.no_grad():  # the text encoder is frozen: every caption's embedding once
        unique, inverse = torch.unique(torch.cat([tokens, empty[None]]), dim=0, return_inverse=True)
        embeddings = text_encoder(unique)[0]
    caption_index, empty_index = inverse[:-1], inverse[-1]
    scale = vae.config.scaling_factor
    generator = torch.Generator().manual_seed(seed + step)
    progress, saved = Progress("lora", step, steps, state.get("seconds", 0.0), every=20.0), time.time()
    unet.train()
    while step < steps:
        index, clean = sample_clean_latents(latents, len(tokens), batch, scale, generator)
        which = caption_index[index].clone()
        which[torch.rand(batch, generator=generator) < drop_caption] = empty_index  # for classifier-free guidance
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, schedule.config.num_train_timesteps, (batch,), generator=generator)
        noisy = schedule.add_noise(clean, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=embeddings[which]).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        for group in optimizer.param_groups:  # warm up, then cosine down to a tenth
            warm = min(1.0, (step + 1) / 50)
            group["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        optimizer.step()
        step += 1
        progress.update(step, loss.item())
        if time.time() - saved > 60 or step == steps:
            state = {"lora": lora_state(unet), "optimizer": optimizer.state_dict(), "step": step, "batch": batch,
                     "lr": lr, "rank": rank, "drop_caption": drop_caption, "images": len(tokens), **progress.record()}
            save_atomically(state, checkpoint_path)
            saved = time.time()
    export(run, unet, out)


def export(run: Path, unet, out: Path) -> None:
    """The LoRA in diffusers' format (safetensors), and its training record beside it."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    state = torch.load(run / "lora.pt", weights_only=False)
    if unet is None:
        unet = with_lora(pocket_parts()[3], state["rank"])
        set_peft_model_state_dict(unet, state["lora"])
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=run) as scratch:  # written whole, then moved into place
        StableDiffusionPipeline.save_lora_weights(scratch, unet_lora_layers=layers, safe_serialization=True)
        name = "pytorch_lora_weights.safetensors"
        shutil.copyfile(Path(scratch) / name, Path(scratch) / f".{name}.tmp")
        os.replace(Path(scratch) / f".{name}.tmp", out / name)
    record = {key: state[key] for key in ("step", "batch", "lr", "rank", "drop_caption", "images", "seconds", "loss")}
    record.update(base="pocket", target_modules=TARGET_MODULES, style=STYLE, threads=torch.get_num_threads(),
                  parameters=int(sum(v.numel() for v in layers.values())),
                  captions="ground and terrain, each named with probability 0.65; never the time of day")
    write_atomically(out / "training.json", json.dumps(record, indent=2) + "\n")
    size = (out / name).stat().st_size
    print(f"wrote {out / name} ({size / 1024:.0f} KiB, {record['parameters']} parameters, step {state['step']})",
          flush=True)


# -------------------------------------------------------------------------------------- measure


def loaded_pipeline(folder: Path):
    """pocket with the LoRA loaded (adapter weight 1; a call's cross_attention_kwargs scale it)."""
    from panosync.pipeline import SyncDiffusionPipeline

    pipe = SyncDiffusionPipeline.from_pretrained("pocket")
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(folder, adapter_name=ADAPTER)
    return pipe


def attribute_shares(images, prompt: str) -> dict[str, float]:
    """The share of `images` the classifier reads as night, and as each attribute the prompt names."""
    from .classify import classify
    from .landscapes import parse_prompt

    labels = [classify(image) for image in images]
    shares = {"night": float(np.mean([label["time"] == "night" for label in labels]))}
    for attribute, value in parse_prompt(prompt).items():
        shares[value] = float(np.mean([label[attribute] == value for label in labels]))
    return shares


def single_windows(pipe, prompt: str, scale: float, seeds: list[int], settings: dict) -> np.ndarray:
    """Single-window samples at LoRA scale `scale` (the adapter's weight, which reaches every UNet call
    of `sample_windows` as a call's cross_attention_kwargs would)."""
    from .quality import sample_windows

    pipe.set_adapters([ADAPTER], adapter_weights=[scale])
    try:
        return sample_windows(pipe, prompt, seeds, steps=settings["num_inference_steps"],
                              guidance_scale=settings["guidance_scale"])
    finally:
        pipe.set_adapters([ADAPTER], adapter_weights=[1.0])


def panorama(pipe, run: Path, prompt: str, seed: int, scale: float, settings: dict, width: int = 512,
             height: int = 64, loop_closure: bool = False) -> np.ndarray:
    """A synced panorama with the LoRA at `scale` (cross_attention_kwargs), kept under the run folder."""
    import PIL.Image

    key = f"{prompt.replace(' ', '_')}-{seed}-s{scale}-{width}x{height}{'-loop' if loop_closure else ''}.png"
    path = run / "panoramas" / key
    if path.exists():
        return np.asarray(PIL.Image.open(path).convert("RGB"))
    started = time.time()
    image = pipe(prompt, width=width, height=height, seed=seed, loop_closure=loop_closure, output_type="np",
                 cross_attention_kwargs={"scale": scale}, **settings).images[0]
    image = (image * 255).round().astype(np.uint8)
    write_atomically(path, lambda file: PIL.Image.fromarray(image).save(file, format="PNG"))
    print(f"{key}: {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    return image


def panorama_figures(image: np.ndarray, prompt: str) -> dict:
    from panosync.eval.crops import crops
    from .quality import crop_times

    tiles = crops(image, 64)
    return {"crop_times": crop_times(image, 64), "crops": len(tiles), **attribute_shares(tiles, prompt)}


def stage_picture(run: Path, folder: Path, out: Path, window_seeds: int, panorama_seeds: int, prompts: list[str],
                  sphere: bool) -> None:
    from panosync.bundled import recommended_settings
    from .bar_report import labelled

    pipe = loaded_pipeline(folder)
    settings = recommended_settings(pocket_folder())
    report_path = out.with_suffix(".json")
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    report.update(settings=settings, lora=str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder),
                  lora_bytes=(folder / "pytorch_lora_weights.safetensors").stat().st_size,
                  tuning_seeds=[TUNING_SEEDS.start, TUNING_SEEDS.stop - 1])

    def save():
        write_atomically(report_path, json.dumps(report, indent=2) + "\n")

    # 1. single windows, many seeds: cheap, and the panoramas' crops copy their anchor window
    seeds = list(range(JUDGING_WINDOW_SEEDS_FROM, JUDGING_WINDOW_SEEDS_FROM + window_seeds))
    windows = report.setdefault("single_windows", {"seeds": [seeds[0], seeds[-1]], "by_prompt": {}})
    for prompt in [*prompts, TIMED_PROMPT]:
        for scale in SCALES if prompt != TIMED_PROMPT else (0.0, 0.8):
            key = f"{scale}"
            if key not in windows["by_prompt"].get(prompt, {}):
                shares = attribute_shares(single_windows(pipe, prompt, scale, seeds, settings), prompt)
                windows["by_prompt"].setdefault(prompt, {})[key] = shares
                print(f"single windows “{prompt}” scale {scale}: {shares}", flush=True)
    save()

    # 2. synced 512x64 panoramas at every scale, the first seed's first (the picture's)
    figures = report.setdefault("panoramas", {})
    first = JUDGING_PANORAMA_SEEDS_FROM
    rows = []
    plan = [(prompt, seed, scale) for seed in range(first, first + panorama_seeds) for prompt in prompts
            for scale in SCALES] + [(TIMED_PROMPT, first, 0.8)]
    for prompt, seed, scale in plan:
        image = panorama(pipe, run, prompt, seed, scale, settings)
        figures.setdefault(prompt, {}).setdefault(str(seed), {})[str(scale)] = panorama_figures(image, prompt)
        save()
        if seed == first:  # the picture: every prompt at every scale, on the first seed
            rows.append((image, f"“{prompt}”, seed {seed}\nLoRA scale {scale}"))
    # 3. 360° panoramas with the LoRA: 512x64 loop-closed, and a 2:1 sphere 256x128
    loops = report.setdefault("loop_closed", {})
    for width, height in [(512, 64)] + ([(256, 128)] if sphere else []):
        image = panorama(pipe, run, prompts[0], first, 1.0, settings, width, height, loop_closure=True)
        loops[f"{width}x{height}"] = {"prompt": prompts[0], "seed": first, "scale": 1.0,
                                      **panorama_figures(image, prompts[0])}
        save()
        text = f"360°, loop-closed, {width}x{height}\nLoRA scale 1.0, seed {first}"
        # the loop shown one and a half turns: its seam is at the middle of the row
        rows.append((np.concatenate([image, image[:, : image.shape[1] // 2]], axis=1) if height == 64 else image, text))
    sheet_rows = []
    for image, text in rows:
        repeated = image.repeat(2, 0).repeat(2, 1)
        sheet_rows.append(labelled(repeated, text, margin=200))
    width = max(row.shape[1] for row in sheet_rows)
    padded = []
    for row in sheet_rows:
        padded.append(np.pad(row, ((0, 6), (0, width - row.shape[1]), (0, 0)), constant_values=255))
    import PIL.Image

    sheet = PIL.Image.fromarray(np.concatenate(padded)[:-6])
    write_atomically(out, lambda file: sheet.save(file, format="PNG"))
    print(f"wrote {out} and {report_path}\n", flush=True)
    print(tables(report))


def tables(report: dict) -> str:
    """The report's figures as the Markdown tables of docs/pocket-lora.md."""
    from .landscapes import parse_prompt

    def named(prompt):
        return [value for value in parse_prompt(prompt).values() if value != "night"]

    windows = report["single_windows"]
    lines = [f"Single windows (seeds {windows['seeds'][0]}-{windows['seeds'][1]}): share read as night, and as "
             "what the prompt names", "", "| prompt | " + " | ".join(f"scale {s}" for s in SCALES) + " |",
             "|---|" + "---|" * len(SCALES)]
    for prompt, by_scale in windows["by_prompt"].items():
        cells = []
        for scale in SCALES:
            shares = by_scale.get(str(scale))
            cells.append("" if shares is None else f"night {shares['night']:.0%}, " +
                         ", ".join(f"{value} {shares[value]:.0%}" for value in named(prompt)))
        lines.append(f"| {prompt} | " + " | ".join(cells) + " |")
    lines += ["", "Synced 512×64 panoramas: share of their 64×64 crops read as night, and as what the prompt names "
              "(crops pooled over the seeds)", "", "| prompt | seeds | " +
              " | ".join(f"scale {s}" for s in SCALES) + " |", "|---|---|" + "---|" * len(SCALES)]
    for prompt, by_seed in report["panoramas"].items():
        cells = []
        for scale in SCALES:
            runs = [figures[str(scale)] for figures in by_seed.values() if str(scale) in figures]
            if not runs:
                cells.append("")
                continue
            crops = sum(r["crops"] for r in runs)
            share = lambda key: sum(r[key] * r["crops"] for r in runs) / crops  # noqa: E731
            cells.append(f"night {share('night'):.0%}, " + ", ".join(f"{v} {share(v):.0%}" for v in named(prompt))
                         + f" ({' '.join(r['crop_times'] for r in runs)})")
        lines.append(f"| {prompt} | {', '.join(by_seed)} | " + " | ".join(cells) + " |")
    lines += ["", "| 360° loop-closed, LoRA scale 1.0 | crops | night | named |", "|---|---|---|---|"]
    for size, figures in report.get("loop_closed", {}).items():
        lines.append(f"| {size} “{figures['prompt']}”, seed {figures['seed']} | {figures['crops']} | "
                     f"{figures['night']:.0%} ({figures['crop_times']}) | " +
                     ", ".join(f"{v} {figures[v]:.0%}" for v in named(figures["prompt"])) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "export", "picture"])
    parser.add_argument("--run", type=Path, default=Path("runs/pocket-lora"), help="folder for data and checkpoints")
    parser.add_argument("--steps", type=int, default=600, help="total optimizer steps (train)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora", type=Path, default=OUT, help="the LoRA's folder (train writes it)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pocket-lora.png", help="picture (and .json)")
    parser.add_argument("--window-seeds", type=int, default=64, help="single windows per prompt and scale")
    parser.add_argument("--panorama-seeds", type=int, default=1, help="512x64 panoramas per prompt and scale")
    parser.add_argument("--prompts", nargs="+", default=list(PROMPTS))
    parser.add_argument("--no-sphere", action="store_true", help="skip the 256x128 loop-closed panorama")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared 2-core machine more threads ran ten times slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    if args.stage == "train":
        stage_train(args.run, args.steps, args.batch, args.lr, args.rank, drop_caption=0.1, seed=args.seed,
                    out=args.lora)
    elif args.stage == "export":
        export(args.run, None, args.lora)
    else:
        stage_picture(args.run, args.lora, args.out, args.window_seeds, args.panorama_seeds, args.prompts,
                      sphere=not args.no_sphere)


if __name__ == "__main__":
    main()
