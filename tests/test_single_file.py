"""Loading one original-format (LDM / CompVis) checkpoint, as Stable Diffusion 1.x/2.x `.safetensors` files are
published, offline: the architecture comes from a diffusers folder of the same model (`config=`)."""

import logging

import huggingface_hub.constants
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline
from ldm_checkpoint import save_ldm_checkpoint
from safetensors import safe_open

from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.pipeline import SyncDiffusionPipeline

KWARGS = dict(width=64, height=32, stride=8, num_inference_steps=2, sync_weight=0, seed=1, output_type="np")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, sync_pipe):
    """The 32-pixel-window tiny model as one LDM checkpoint, and its configs as a diffusers folder saved as
    Stable Diffusion is published (a StableDiffusionPipeline with a PNDM scheduler)."""
    folder = tmp_path_factory.mktemp("ldm")
    components = {**sync_pipe.components, "scheduler": PNDMScheduler.from_config(sync_pipe.scheduler.config)}
    StableDiffusionPipeline(**components, safety_checker=None,
                            requires_safety_checker=False).save_pretrained(folder / "config")
    return save_ldm_checkpoint(sync_pipe, folder / "tiny-sd.safetensors"), folder / "config"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No hub, and an empty hub cache (huggingface_hub reads both settings once, when imported)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_the_checkpoint_has_the_original_layout(checkpoint):
    with safe_open(str(checkpoint[0]), framework="pt") as file:
        keys = set(file.keys())
        # the keys diffusers tells the model family and the text encoder by, and a VAE attention 1x1 convolution
        unet = {"input_blocks.2.0.op.weight", "output_blocks.1.2.conv.weight", "output_blocks.3.0.skip_connection.weight"}
        assert {f"model.diffusion_model.{key}" for key in unet} <= keys
        assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in keys
        assert file.get_slice("first_stage_model.decoder.mid.attn_1.q.weight").get_shape() == [32, 32, 1, 1]
    assert {key.split(".")[0] for key in keys} == {"model", "first_stage_model", "cond_stage_model"}


def test_from_single_file_loads_every_weight_and_makes_the_same_panorama(checkpoint, sync_pipe, offline):
    path, config = checkpoint
    pipe = SyncDiffusionPipeline.from_single_file(str(path), config=str(config), local_files_only=True)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.window == 16 and pipe.vae_scale_factor == 2
    for name in ("unet", "vae", "text_encoder"):
        loaded, original = getattr(pipe, name).state_dict(), getattr(sync_pipe, name).state_dict()
        assert loaded.keys() == original.keys(), name
        assert all(torch.equal(loaded[key], original[key]) for key in original), name
    pipe.set_progress_bar_config(disable=True)
    assert np.array_equal(pipe("a", **KWARGS).images, sync_pipe("a", **KWARGS).images)


def test_generate_from_a_checkpoint_with_its_config(checkpoint, tmp_path, offline, capsys):
    path, config = checkpoint
    out = tmp_path / "out.png"
    code = main(["generate", "a", "--model", str(path), "--model-config", str(config), "--width", "64",
                 "--height", "32", "--stride", "8", "--steps", "1", "--sync-weight", "0", "--seed", "1",
                 "--out", str(out), "--quiet"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    assert PIL.Image.open(out).size == (64, 32)
    assert read_parameters(out)["model_config"] == str(config)  # so that --from-png finds it again


def test_a_checkpoint_without_config_offline_fails_with_one_sentence(checkpoint, offline, capsys):
    # and without diffusers' warning that it is "attempting to download" the configs (it logs to the stderr it
    # found when imported, which capsys does not see: watch its logger instead)
    logged = []
    handler = logging.Handler()
    handler.emit = logged.append
    logger = logging.getLogger("diffusers.loaders.single_file")
    logger.addHandler(handler)
    try:
        code = main(["generate", "a", "--model", str(checkpoint[0]), "--quiet"])
    finally:
        logger.removeHandler(handler)
    err = capsys.readouterr().err
    assert code == 2 and not logged, err
    assert err.strip() == (
        f"panosync: error: Cannot tell the architecture of checkpoint {checkpoint[0]} offline: pass --model-config "
        f"with a diffusers folder of the same model (e.g. a saved stable-diffusion-2-base)."
    )


@pytest.mark.parametrize("config,message", [("PARENT", "has no model_index.json"),
                                            ("no-such-owner-xyz/no-such-model", "Cannot read the configs")])
def test_a_bad_model_config_fails_with_one_sentence(checkpoint, config, message, offline, capsys):
    config = str(checkpoint[1].parent) if config == "PARENT" else config
    code = main(["generate", "a", "--model", str(checkpoint[0]), "--model-config", config, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
