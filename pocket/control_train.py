"""Train a Canny-edge ControlNet for the bundled pocket model, on the CPU, checkpointing and resuming.

    python -m pocket.control_train train  --data runs/pocket --run runs/pocket-canny --steps 3000
    python -m pocket.control_train export --run runs/pocket-canny  # -> panosync/bundled/pocket-canny

The conditions are the Canny edges of the pocket training images, taken by the same function as
`panosync control --preprocess canny` uses, so that what the ControlNet learned to read is what it
is given. Only the ControlNet learns: the pocket UNet, text encoder and VAE (the bundled fp16 weights)
stay frozen. The loss is the usual epsilon MSE under pocket's DDPM noise schedule, with the captions
dropped now and then as in the UNet's training, so that classifier-free guidance still works.
Like train.py, the checkpoint is written atomically every few minutes and `--steps` is a total.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from panosync.conditions import canny_edges
from panosync.files import write_atomically
from .train import BUNDLE, MAX_TOKENS, Progress, encode_dataset, load_data, save_atomically

CONTROL_BUNDLE = BUNDLE.parent / "pocket-canny"
# One stride-2 stage per halving of the VAE (64 px -> 16 latent pixels): the ControlSync pipeline checks this.
EMBEDDING_CHANNELS = (16, 32, 64)


def edge_maps(images: np.ndarray) -> torch.Tensor:
    """Canny edges of uint8 (N, H, W, 3) images as a (N, 1, H, W) uint8 tensor of 0/255 (one channel
    kept: the three of a Canny condition are equal)."""
    edges = np.stack([np.asarray(canny_edges(PIL.Image.fromarray(image)))[:, :, 0] for image in images])
    return torch.from_numpy(edges)[:, None]


def cached_edge_maps(data: Path, run: Path) -> torch.Tensor:
    path = run / "edges.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    images, _ = load_data(data)
    edges = edge_maps(images)
    save_atomically(edges, path)
    return edges


def pocket_noise_schedule(folder: Path = BUNDLE) -> DDPMScheduler:
    """The noising process the pocket UNet in `folder` was trained under, read from its scheduler's
    config (its betas), so that the ControlNet learns at the noise levels the UNet expects."""
    return DDPMScheduler.from_config(DDIMScheduler.load_config(folder, subfolder="scheduler"))


def frozen_pocket(folder: Path = BUNDLE):
    """The pocket UNet, text encoder and tokenizer, in float32, frozen."""
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", dtype=torch.float32)
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    return unet.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False), tokenizer


def new_controlnet(unet: UNet2DConditionModel) -> ControlNetModel:
    """A ControlNet copied from `unet` (its encoder weights as the start), zero convolutions out."""
    return ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=EMBEDDING_CHANNELS)


def train_controlnet(data: Path, run: Path, steps: int, batch: int = 32, lr: float = 1e-4, drop_caption: float = 0.1,
                     seed: int = 0, latents: dict | None = None, edges: torch.Tensor | None = None,
                     base: tuple | None = None, checkpoint_seconds: float = 180, init: Path | None = None,
                     base_folder: Path = BUNDLE) -> dict:
    """Train to `steps` in total, resuming from run/controlnet.pt; returns the last checkpoint. `latents`
    and `edges` default to those of the pocket training set in `data` (latents.pt, data.npz), `base`
    (unet, text_encoder, tokenizer) to the pocket model's in `base_folder` (the bundled one), whose
    noise schedule is always the one trained under. `init`, an exported ControlNet folder, is the
    start of a new run instead of a copy of the UNet's encoder (to follow a retrained UNet)."""
    run.mkdir(parents=True, exist_ok=True)
    latents = encode_dataset(data) if latents is None else latents
    edges = cached_edge_maps(data, run) if edges is None else edges
    if len(edges) != len(latents["mean"]):
        raise ValueError(f"{len(edges)} edge maps for {len(latents['mean'])} latents: delete {run / 'edges.pt'}.")
    unet, text_encoder, tokenizer = frozen_pocket(base_folder) if base is None else base
    torch.manual_seed(seed)
    controlnet = new_controlnet(unet).train()
    if init is not None and not (run / "controlnet.pt").exists():
        controlnet.load_state_dict(ControlNetModel.from_pretrained(init, dtype=torch.float32).state_dict())
    optimizer = torch.optim.AdamW(controlnet.parameters(), lr=lr, weight_decay=1e-2)
    noise_schedule = pocket_noise_schedule(base_folder)
    checkpoint_path, step, state = run / "controlnet.pt", 0, {}
    if checkpoint_path.exists():
        state = torch.load(checkpoint_path, weights_only=False)
        controlnet.load_state_dict(state["controlnet"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    generator = torch.Generator().manual_seed(seed + step)
    if "generator" in state:  # the same batches as an uninterrupted run
        generator.set_state(state["generator"])
    with torch.no_grad():  # the frozen text encoder: every caption's embedding once
        tokens = tokenizer(latents["captions"], padding="max_length", max_length=MAX_TOKENS, truncation=True,
                           return_tensors="pt").input_ids
        empty = tokenizer("", padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        caption_embeddings = torch.cat([text_encoder(unique[i : i + 512])[0] for i in range(0, len(unique), 512)])
        empty_embedding = text_encoder(empty)[0]
    scale = latents["scaling_factor"]
    progress, saved = Progress("controlnet", step, steps, state.get("seconds", 0.0)), time.time()
    while step < steps:
        index = torch.randint(0, len(inverse), (batch,), generator=generator)
        mean, std = latents["mean"][index], latents["std"][index]
        clean = (mean + std * torch.randn(mean.shape, generator=generator)) * scale
        condition = edges[index].float().div(255).expand(-1, 3, -1, -1)
        flip = torch.rand(batch, generator=generator) < 0.5  # as in the UNet's training; the edges flip along
        clean = torch.where(flip[:, None, None, None], clean.flip(-1), clean)
        condition = torch.where(flip[:, None, None, None], condition.flip(-1), condition)
        context = caption_embeddings[inverse[index]]
        dropped = torch.rand(batch, generator=generator) < drop_caption  # for classifier-free guidance
        context = torch.where(dropped[:, None, None], empty_embedding, context)
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=generator)
        noisy = noise_schedule.add_noise(clean, noise, timesteps)
        down, mid = controlnet(noisy, timesteps, encoder_hidden_states=context, controlnet_cond=condition,
                               return_dict=False)
        prediction = unet(noisy, timesteps, encoder_hidden_states=context, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
        optimizer.step()
        step += 1
        progress.update(step, loss.item())
        if time.time() - saved > checkpoint_seconds or step == steps:
            state = {"controlnet": controlnet.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "batch": batch, "lr": lr, "drop_caption": drop_caption, "images": len(edges),
                     "generator": generator.get_state(), "threads": torch.get_num_threads(),
                     "init": state.get("init", str(init) if init else None), **progress.record()}
            save_atomically(state, checkpoint_path)
            saved = time.time()
    return state


def export_controlnet(run: Path, out: Path = CONTROL_BUNDLE, base_folder: Path = BUNDLE) -> Path:
    """The run's ControlNet as an fp16 diffusers folder, with training.json beside it."""
    state = torch.load(run / "controlnet.pt", weights_only=False)
    unet = UNet2DConditionModel.from_pretrained(base_folder, subfolder="unet", dtype=torch.float32)
    controlnet = new_controlnet(unet)
    controlnet.load_state_dict(state["controlnet"])
    out.mkdir(parents=True, exist_ok=True)
    controlnet.to(torch.float16).save_pretrained(out, safe_serialization=True)
    record = {"base_model": "pocket", "condition": "Canny edges (panosync.conditions.canny_edges, thresholds 100/200)",
              **{key: state.get(key) for key in ("images", "step", "batch", "lr", "drop_caption", "seconds", "loss",
                                                 "threads", "init")},
              "loss_note": "mean epsilon MSE over the last logged stretch of steps"}
    write_atomically(out / "training.json", json.dumps(record, indent=2) + "\n")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {out} ({size / 2**20:.1f} MiB, trained {state['step']} steps)")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "export"])
    parser.add_argument("--data", type=Path, default=Path("runs/pocket"), help="folder with data.npz and latents.pt")
    parser.add_argument("--run", type=Path, default=Path("runs/pocket-canny"), help="folder for the checkpoint")
    parser.add_argument("--steps", type=int, default=3000, help="total optimizer steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=CONTROL_BUNDLE, help="export folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--base", type=Path, default=BUNDLE, help="the pocket model folder the ControlNet is for")
    parser.add_argument("--init", type=Path, default=None,
                        help="start a new run from this exported ControlNet folder (to follow a retrained UNet)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.stage == "train":
        train_controlnet(args.data, args.run, args.steps, args.batch, args.lr, seed=args.seed, init=args.init,
                         base_folder=args.base)
    else:
        export_controlnet(args.run, args.out, args.base)


if __name__ == "__main__":
    main()
