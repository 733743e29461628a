"""The pocket model's training stages, end to end at toy size: render, train, resume, export, load."""

import json

import numpy as np
import pytest
import torch

from panosync.pipeline import SyncDiffusionPipeline
from pocket import train


@pytest.mark.training
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
    assert pipe.window == train.WINDOW and pipe.vae_scale_factor == train.VAE_FACTOR
    assert pipe.vae.config.scaling_factor == record["scaling_factor"]
    image = pipe("snowy mountains at night", width=128, num_inference_steps=2, seed=0, output_type="np").images
    assert image.shape == (1, 64, 128, 3) and np.isfinite(image).all()

    # Fine-tuning the export under the shifted schedule: a new run adopts its autoencoder and weights,
    # and the export's scheduler carries the schedule the UNet learned.
    tuned_run, tuned = tmp_path / "tuned", tmp_path / "pocket-tuned"
    tuned_run.mkdir()
    train.stage_data(tuned_run, count=12, seed=0)
    train.stage_unet(tuned_run, steps=1, batch=4, lr=1e-6, drop_caption=0.1, seed=1, snr_shift=16.0, init=out)
    state = torch.load(tuned_run / "unet.pt", weights_only=False)
    start = SyncDiffusionPipeline.from_pretrained(out, dtype=torch.float32).unet.state_dict()
    assert state["snr_shift"] == 16.0 and state["step"] == 1
    assert max((state["unet"][k] - start[k]).abs().max() for k in start) < 1e-3  # one tiny step from the export
    with pytest.raises(SystemExit, match="--snr-shift 16.0"):
        train.stage_unet(tuned_run, steps=2, batch=4, lr=1e-6, drop_caption=0.1, seed=0)
    train.stage_export(tuned_run, tuned)
    shifted = SyncDiffusionPipeline.from_pretrained(tuned, dtype=torch.float32).scheduler
    torch.testing.assert_close(shifted.alphas_cumprod, train.training_noise_schedule(16.0).alphas_cumprod)


def signal_to_noise(alphas_cumprod):
    return alphas_cumprod / (1 - alphas_cumprod)


def test_the_shifted_schedule_divides_the_noisy_end_and_keeps_the_clean_end():
    plain = train.training_noise_schedule().alphas_cumprod.double()
    shifted = train.training_noise_schedule(16.0).alphas_cumprod.double()
    ratio = signal_to_noise(plain) / signal_to_noise(shifted)
    assert abs(ratio[-1] - 16) < 1e-2 and abs(ratio[0] - 1) < 1e-4 and abs(ratio[499] - 4) < 0.05
    assert (shifted.diff() < 0).all()  # still a noising process: every step adds noise
    assert train.noise_schedule_config() == {k: v for k, v in train.noise_schedule_config(16.0).items()
                                             if k != "trained_betas"}
