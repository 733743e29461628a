"""The pocket model's training stages, end to end at toy size: render, train, resume, export, load."""

import json

import numpy as np
import torch

from panosync.pipeline import SyncDiffusionPipeline
from panosync.pocket import train


def test_training_stages_resume_export_and_load(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    train.stage_data(run, count=12, seed=0)
    train.stage_vae(run, steps=2, batch=4, lr=1e-3, kl_weight=1e-6, seed=0)
    first = torch.load(run / "vae.pt", weights_only=False)
    train.stage_vae(run, steps=3, batch=4, lr=1e-3, kl_weight=1e-6, seed=0)  # resumes: one more step
    resumed = torch.load(run / "vae.pt", weights_only=False)
    assert (first["step"], resumed["step"]) == (2, 3)
    assert any(not torch.equal(first["model"][k], resumed["model"][k]) for k in first["model"])
    train.stage_unet(run, steps=2, batch=4, lr=1e-4, drop_caption=0.1, seed=0)
    out = tmp_path / "pocket"
    train.stage_export(run, out)

    weights = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert weights == ["text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"]
    record = json.loads((out / "training.json").read_text())
    assert record["vae"]["step"] == 3 and record["unet"]["step"] == 2 and record["data"]["images"] == 12

    pipe = SyncDiffusionPipeline.from_pretrained(out, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.window == train.WINDOW and pipe.vae_factor == train.VAE_FACTOR
    assert pipe.vae.config.scaling_factor == record["scaling_factor"]
    image = pipe("snowy mountains at night", width=128, num_inference_steps=2, seed=0, output_type="np").images
    assert image.shape == (1, 64, 128, 3) and np.isfinite(image).all()
