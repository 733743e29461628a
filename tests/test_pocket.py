"""The bundled pocket model: it loads by name, offline, and draws what it is asked for."""

import json

import numpy as np
import pytest
import torch

from panosync.bundled import bundled_model_folder, recommended_settings
from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.pipeline import SyncDiffusionPipeline
from pocket.classify import classify
from pocket.quality import sample_windows

pytestmark = pytest.mark.skipif(bundled_model_folder("pocket") is None, reason="the pocket model is not bundled")


@pytest.fixture(scope="module")
def pocket():
    pipe = SyncDiffusionPipeline.from_pretrained("pocket")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_bundled_weights_are_small_fp16_safetensors():
    folder = bundled_model_folder("pocket")
    weights = list(folder.rglob("*.safetensors"))
    assert len(weights) == 3 and not list(folder.rglob("*.bin"))
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 25 * 2**20
    assert json.loads((folder / "training.json").read_text())["unet"]["step"] > 0


def test_pocket_loads_by_name_with_its_geometry(pocket):
    assert pocket.window == 16 and pocket.vae_scale_factor == 4
    assert pocket.unet.dtype == torch.float32  # stored in float16, loaded for the CPU
    assert type(pocket.scheduler).__name__ == "DDIMScheduler"


@pytest.mark.slow
@pytest.mark.parametrize("prompt,attribute,value", [("snowy mountains at night", "time", "night"),
                                                    ("green hills by day", "ground", "green"),
                                                    ("a sea at sunset", "time", "sunset")])
def test_a_sample_shows_what_the_prompt_names(pocket, prompt, attribute, value):
    settings = recommended_settings(bundled_model_folder("pocket"))
    images = sample_windows(pocket, prompt, seeds=[0, 1, 2, 3], steps=settings.get("num_inference_steps", 50),
                            guidance_scale=settings.get("guidance_scale", 7.5))
    named = [classify(image)[attribute] for image in images]
    assert named.count(value) >= 3, named


@pytest.mark.slow
def test_generate_with_pocket_from_the_command(tmp_path):
    out = tmp_path / "pocket.png"
    assert main(["generate", "green hills at night", "--model", "pocket", "--width", "256", "--steps", "10",
                 "--seed", "1", "--out", str(out), "--quiet"]) == 0
    parameters = read_parameters(out)
    assert parameters["model"] == "pocket" and parameters["height"] == 64 and parameters["width"] == 256
    recommended = recommended_settings(bundled_model_folder("pocket"))
    assert parameters["sync_weight"] == recommended["sync_weight"]
    assert parameters["fast_modes"] == recommended.get("fast_modes", [])


def test_recommended_settings_are_pipeline_keywords(pocket):
    settings = recommended_settings(bundled_model_folder("pocket"))
    quick = {**settings, "num_inference_steps": 2}  # the README's Python example, shortened
    image = pocket("snowy mountains", width=128, seed=3, output_type="np", **quick).images[0]
    assert image.shape == (64, 128, 3) and np.isfinite(image).all()
