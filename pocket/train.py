"""Train the pocket model on the CPU, in stages that checkpoint and resume.

    python -m pocket.train data   --run runs/pocket     # render the training set
    python -m pocket.train vae    --run runs/pocket     # autoencoder, 64x64 px -> 16x16x4
    python -m pocket.train unet   --run runs/pocket     # text encoder + UNet on latents
    python -m pocket.train export --run runs/pocket     # fp16 diffusers folder in the package

Every stage writes its checkpoint atomically every few minutes and picks up where it stopped when
run again; `--steps` is the total to reach, not the number to add.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel

from panosync.files import write_atomically
from panosync.tiny import build_clip_tokenizer
from .landscapes import VOCABULARY, make_dataset

IMAGE_SIZE = 64  # pixels: the model's native window
VAE_FACTOR = 4
WINDOW = IMAGE_SIZE // VAE_FACTOR  # 16 latent pixels
MAX_TOKENS = 16
# exported into the checkout's package, where panosync finds the bundled model
BUNDLE = Path(__file__).resolve().parents[1] / "src" / "panosync" / "bundled" / "pocket"


# ------------------------------------------------------------------------------------ the parts


def new_tokenizer():
    return build_clip_tokenizer(["a", "landscape", "at", "by", *VOCABULARY], max_length=MAX_TOKENS)


def new_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def new_text_encoder(tokenizer) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=WINDOW,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        # attention at 8x8 and 4x4 only: at 16x16 it would triple the cost of a training step on a CPU
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def noise_schedule_config(snr_shift: float = 1.0) -> dict:
    """Stable Diffusion's noise schedule (scaled-linear betas over 1000 steps), with the
    signal-to-noise ratio at the noisy end divided by `snr_shift`.

    Why a shift: a window of 16x16 latent pixels under Stable Diffusion's schedule keeps far more of
    its low frequencies through the noise than Stable Diffusion's own 64x64 latents do. The window's
    mean colour, averaged over 256 latent pixels instead of 4,096, has 16 times the signal-to-noise
    ratio, so a model of small images reads its colour (here: the time of day) off the initial noise
    and settles it in the first step, before anything, a sync step included, can change its mind.
    Dividing the ratio by (64 / 16)^2 = 16 gives the window's mean the schedule Stable Diffusion's has
    (Hoogeboom et al. 2023, "simple diffusion"; Chen 2023, "On the importance of noise scheduling").
    As in simple diffusion's interpolated schedule, the division fades out towards the clean end
    (log-SNR shifted by t/T * log 16), where single pixels, not the mean, are being decided and the
    original ratios are the right ones; so the last steps and alpha_0 stay Stable Diffusion's.
    The bundled pocket went on to 64, which moved the decision later still and synced better
    (docs/pocket-progress.md, fourth round)."""
    config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if snr_shift == 1.0:
        return config
    steps = config["num_train_timesteps"]
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    fade = torch.arange(steps, dtype=torch.float64) / (steps - 1)
    ratio = alphas_cumprod / (1 - alphas_cumprod) / snr_shift**fade
    shifted = ratio / (1 + ratio)
    shifted_betas = 1 - shifted / torch.cat([torch.ones(1, dtype=torch.float64), shifted[:-1]])
    return {**config, "trained_betas": [float(b) for b in shifted_betas]}


def training_noise_schedule(snr_shift: float = 1.0) -> DDPMScheduler:
    """The forward (noising) process the networks are trained under: the schedule above."""
    return DDPMScheduler(**{k: v for k, v in noise_schedule_config(snr_shift).items() if k != "set_alpha_to_one"})


# ---------------------------------------------------------------------------------- utilities


def save_atomically(state: dict, path: Path) -> None:
    """torch.save, never seen half written: a checkpoint killed mid-write keeps the previous one."""
    write_atomically(path, lambda file: torch.save(state, file))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


class Progress:
    """A line every `every` seconds: step, loss, speed, time left."""

    def __init__(self, name, start, total, seconds_before=0.0, every=30.0):
        self.name, self.start, self.total, self.every = name, start, total, every
        self.began = self.last = time.time()
        self.seconds_before = seconds_before
        self.losses: list[float] = []
        self.recent_loss = float("nan")

    def record(self) -> dict:
        """What a checkpoint keeps of the training so far: wall time and the recent loss."""
        return {"seconds": self.seconds_before + time.time() - self.began, "loss": self.recent_loss}

    def update(self, step, loss):
        self.losses.append(loss)
        now = time.time()
        if now - self.last >= self.every or step == self.total:
            rate = (step - self.start) / max(now - self.began, 1e-9)
            left = (self.total - step) / max(rate, 1e-9)
            self.recent_loss = float(np.mean(self.losses))
            print(f"{self.name} step {step}/{self.total} loss {self.recent_loss:.4f} "
                  f"{rate:.2f} steps/s, {left / 60:.0f} min left", flush=True)
            self.losses, self.last = [], now


# -------------------------------------------------------------------------------------- stages


def stage_data(run: Path, count: int, seed: int) -> None:
    path = run / "data.npz"
    if path.exists():
        print(f"{path} exists")
        return
    started = time.time()
    images, captions, attributes = make_dataset(count, seed=seed, size=IMAGE_SIZE)
    write_atomically(path, lambda file: np.savez_compressed(file, images=images, captions=np.array(captions),
                                                            attributes=np.array([json.dumps(a) for a in attributes])))
    print(f"rendered {count} images in {time.time() - started:.0f} s -> {path}")


def load_data(run: Path):
    data = np.load(run / "data.npz")
    return data["images"], [str(c) for c in data["captions"]]


def stage_vae(run: Path, steps: int, batch: int, lr: float, kl_weight: float, seed: int) -> None:
    images, _ = load_data(run)
    vae = new_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    checkpoint_path, step, state = run / "vae.pt", 0, {}
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    generator = np.random.default_rng(seed + step)
    progress, saved = Progress("vae", step, steps, state.get("seconds", 0.0)), time.time()
    vae.train()
    while step < steps:
        pixels = images_to_tensor(images[generator.integers(0, len(images), batch)])
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, pixels) + 0.5 * F.l1_loss(reconstruction, pixels)
        loss = loss + kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        progress.update(step, loss.item())
        if time.time() - saved > 120 or step == steps:
            save_atomically({"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                             "batch": batch, "lr": lr, **progress.record()}, checkpoint_path)
            saved = time.time()


def trained_vae(run: Path) -> AutoencoderKL:
    vae = new_vae()
    vae.load_state_dict(torch.load(run / "vae.pt", weights_only=False)["model"])
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_dataset(run: Path) -> dict:
    """Posterior mean and std of every training image, and the scaling factor that gives the
    latents unit variance (Stable Diffusion's 0.18215 was found the same way)."""
    path = run / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    images, captions = load_data(run)
    vae = trained_vae(run)
    means, stds = [], []
    for start in range(0, len(images), 256):
        posterior = vae.encode(images_to_tensor(images[start : start + 256])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    mean, std = torch.cat(means), torch.cat(stds)
    latents = {"mean": mean, "std": std, "captions": captions, "scaling_factor": float(1 / mean.std())}
    save_atomically(latents, path)
    print(f"encoded {len(mean)} images; scaling factor {latents['scaling_factor']:.4f}")
    return latents


def adopt_vae(run: Path, folder: Path) -> None:
    """A run that fine-tunes an exported model starts from its autoencoder (float32), not a new one."""
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", dtype=torch.float32)
    record_path = folder / "training.json"
    record = json.loads(record_path.read_text()).get("vae", {}) if record_path.exists() else {}
    save_atomically({"model": new_vae().state_dict() | vae.state_dict(), **record, "adopted_from": str(folder)},
                    run / "vae.pt")


def sample_clean_latents(latents: dict, count: int, batch: int, scale: float,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of the encoded dataset (encode_dataset's "mean" and "std" of `count`
    images): the indices drawn, and for each a sample of its posterior times `scale`, half of them
    mirrored (the domain has no left or right)."""
    index = torch.randint(0, count, (batch,), generator=generator)
    mean, std = latents["mean"][index], latents["std"][index]
    clean = (mean + std * torch.randn(mean.shape, generator=generator)) * scale
    flip = torch.rand(batch, generator=generator) < 0.5
    return index, torch.where(flip[:, None, None, None], clean.flip(-1), clean)


def stage_unet(run: Path, steps: int, batch: int, lr: float, drop_caption: float, seed: int,
               snr_shift: float = 1.0, init: Path | None = None) -> None:
    """Train (or, from `init`, an exported model's folder, fine-tune) the UNet and text encoder under
    the noise schedule shifted by `snr_shift` (see noise_schedule_config)."""
    checkpoint_path = run / "unet.pt"
    if init is not None and not checkpoint_path.exists() and not (run / "vae.pt").exists():
        adopt_vae(run, init)
    latents = encode_dataset(run)
    tokenizer = new_tokenizer()
    torch.manual_seed(seed)
    unet, text_encoder = new_unet(), new_text_encoder(tokenizer)
    if init is not None and not checkpoint_path.exists():
        exported_unet = UNet2DConditionModel.from_pretrained(init, subfolder="unet", dtype=torch.float32)
        unet.load_state_dict(exported_unet.state_dict())
        text_encoder.load_state_dict(CLIPTextModel.from_pretrained(init, subfolder="text_encoder",
                                                                   dtype=torch.float32).state_dict())
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2)
    ema = EMAModel(parameters, decay=0.999, use_ema_warmup=True, power=2 / 3)
    step, state = 0, {}
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        if state.get("snr_shift", 1.0) != snr_shift:
            raise SystemExit(f"{checkpoint_path} was trained with --snr-shift {state.get('snr_shift', 1.0)}: "
                             "resume it with that, or start a new --run.")
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step = state["step"]
    noise_schedule = training_noise_schedule(snr_shift)
    tokens = tokenizer(latents["captions"], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                       return_tensors="pt").input_ids
    empty = tokenizer("", padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids[0]
    scale = latents["scaling_factor"]
    generator = torch.Generator().manual_seed(seed + step)
    progress, saved = Progress("unet", step, steps, state.get("seconds", 0.0)), time.time()
    unet.train()
    text_encoder.train()
    while step < steps:
        index, clean = sample_clean_latents(latents, len(tokens), batch, scale, generator)
        ids = tokens[index].clone()
        ids[torch.rand(batch, generator=generator) < drop_caption] = empty  # for classifier-free guidance
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=generator)
        noisy = noise_schedule.add_noise(clean, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        for group in optimizer.param_groups:  # warm up, then cosine down to a tenth
            progress_fraction = step / steps
            warm = min(1.0, (step + 1) / 500)
            group["lr"] = lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress_fraction)))
        optimizer.step()
        ema.step(parameters)
        step += 1
        progress.update(step, loss.item())
        if time.time() - saved > 180 or step == steps:
            save_atomically({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                             "optimizer": optimizer.state_dict(), "ema": ema.state_dict(), "step": step,
                             "batch": batch, "lr": lr, "snr_shift": snr_shift,
                             "init": state.get("init", str(init) if init else None), **progress.record()},
                            checkpoint_path)
            saved = time.time()


def trained_pipeline(run: Path, use_ema: bool = True):
    """The pocket pipeline from a run's checkpoints (float32)."""
    from panosync.pipeline import SyncDiffusionPipeline

    latents = encode_dataset(run)
    tokenizer = new_tokenizer()
    unet, text_encoder = new_unet(), new_text_encoder(tokenizer)
    state = torch.load(run / "unet.pt", weights_only=False)
    unet.load_state_dict(state["unet"])
    text_encoder.load_state_dict(state["text_encoder"])
    if use_ema:
        ema = EMAModel(list(unet.parameters()) + list(text_encoder.parameters()))
        ema.load_state_dict(state["ema"])
        ema.copy_to(list(unet.parameters()) + list(text_encoder.parameters()))
    vae = trained_vae(run)
    vae.register_to_config(scaling_factor=latents["scaling_factor"])
    pipe = SyncDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                                 scheduler=DDIMScheduler(**noise_schedule_config(state.get("snr_shift", 1.0))))
    return pipe, state["step"]


def training_record(run: Path, scaling_factor: float) -> dict:
    """The settings and figures of a run, to ship beside its weights."""
    record = {"data": {"images": int(len(np.load(run / "data.npz")["captions"])), "image_size": IMAGE_SIZE}}
    for stage in ("vae", "unet"):
        state = torch.load(run / f"{stage}.pt", weights_only=False)
        record[stage] = {key: state.get(key) for key in ("step", "batch", "lr", "seconds", "loss", "snr_shift", "init",
                                                         "adopted_from", "note") if state.get(key) is not None}
    record["scaling_factor"] = scaling_factor
    record["threads"] = torch.get_num_threads()
    return record


def stage_export(run: Path, out: Path) -> None:
    pipe, steps = trained_pipeline(run)
    out.mkdir(parents=True, exist_ok=True)
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)
    write_atomically(out / "training.json",
                     json.dumps(training_record(run, pipe.vae.config.scaling_factor), indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {out} ({size / 2**20:.1f} MiB, unet trained {steps} steps)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["data", "vae", "unet", "export"])
    parser.add_argument("--run", type=Path, default=Path("runs/pocket"), help="folder for data and checkpoints")
    parser.add_argument("--steps", type=int, default=None, help="total optimizer steps of the stage")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--count", type=int, default=30000, help="training images (data stage)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=BUNDLE, help="export folder")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--snr-shift", type=float, default=1.0,
                        help="divide the noisy end's signal-to-noise ratio by this (unet stage; the bundled "
                             "pocket: 16, then 64)")
    parser.add_argument("--init", type=Path, default=None,
                        help="fine-tune this exported model folder (unet stage, on a new --run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    if args.stage == "data":
        stage_data(args.run, args.count, args.seed)
    elif args.stage == "vae":
        stage_vae(args.run, args.steps or 2000, args.batch or 16, args.lr or 1e-3, kl_weight=1e-6, seed=args.seed)
    elif args.stage == "unet":
        stage_unet(args.run, args.steps or 8000, args.batch or 32, args.lr or 5e-4, drop_caption=0.1,
                   seed=args.seed, snr_shift=args.snr_shift, init=args.init)
    else:
        stage_export(args.run, args.out)


if __name__ == "__main__":
    main()
