"""The family of a model: model_index.json, its configs or a checkpoint's keys name it before any
weights load (families.py), and the pipeline class it picks, for the library
(AutoSyncDiffusionPipeline, registry.py) and every front end (models.py)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from conftest import NARROW_XL
from panosync import models, settings
from panosync.families import (FAMILY_DEFAULTS, FAMILY_OF_CLASS, FAMILY_OF_TRANSFORMER, FLUX, SD, SD3, SDXL,
                               defaults_of, family_of_checkpoint, family_of_model_index, identify_checkpoint)
from panosync.cli import main
from panosync.control import ControlSyncXLPipeline, random_controlnet_like
from panosync.metadata import read_parameters
from panosync.pipeline import SyncDiffusionPipeline
from panosync.registry import AutoSyncDiffusionPipeline, family_of_pipeline
from panosync.tiny import tiny_random_components, tiny_random_xl_components
from panosync.xl import SyncDiffusionXLPipeline

SUPPORTED_SENTENCE = "runs Stable Diffusion 1.x/2.x, Stable Diffusion XL, Stable Diffusion 3/3.5 and FLUX.1 models."


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    SyncDiffusionPipeline(**tiny_random_components(window=16, vae_factor=2)).save_pretrained(folder)
    return folder


def test_auto_pipeline_picks_the_family_from_model_index(xl_folder, sd_folder):
    xl = AutoSyncDiffusionPipeline.from_pretrained(xl_folder)
    assert type(xl) is SyncDiffusionXLPipeline and type(xl.scheduler).__name__ == "DDIMScheduler"
    assert xl.config.force_zeros_for_empty_prompt
    assert type(AutoSyncDiffusionPipeline.from_pretrained(sd_folder)) is SyncDiffusionPipeline
    controlnet = random_controlnet_like(xl.unet, xl.vae_scale_factor)
    assert type(AutoSyncDiffusionPipeline.from_pretrained(xl_folder, controlnet=controlnet)) is ControlSyncXLPipeline
    assert family_of_pipeline(xl) == SDXL


def test_a_family_is_read_from_data_tables():
    """Unknown pipeline classes are judged by their transformer's class; a loaded pipeline's family is
    its class's; the FLUX pipeline's former class name still names FLUX (folders saved with it)."""
    assert FAMILY_OF_TRANSFORMER == {"SD3Transformer2DModel": SD3, "FluxTransformer2DModel": FLUX}
    custom = {"_class_name": "SomeoneElsesPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
              "vae": ["diffusers", "AutoencoderKL"]}
    assert family_of_model_index(custom) == FLUX
    assert FAMILY_OF_CLASS["SyncDiffusionFluxPipeline"] == FAMILY_OF_CLASS["SyncFluxPipeline"] == FLUX

    class Made:
        family = SD3

    assert family_of_pipeline(Made()) == SD3 and family_of_pipeline(object()) == SD


def test_sdxl_takes_diffusers_guidance_on_every_front_end(xl_folder):
    """SDXL's default guidance is 5 (diffusers' StableDiffusionXLPipeline's), not the paper's 7.5."""
    assert FAMILY_DEFAULTS[SDXL] == {"guidance_scale": 5.0} and defaults_of(SDXL) == {"guidance_scale": 5.0}
    assert settings.model_defaults(models.resolve_model(str(xl_folder)))["guidance_scale"] == 5.0
    assert settings.model_defaults(models.resolve_model("tiny-random"))["guidance_scale"] == 7.5  # SD: the paper's


def test_every_front_end_loads_the_family_of_the_model(xl_folder):
    source = models.resolve_model(str(xl_folder))
    assert source.family == "Stable Diffusion XL" and source.window == 16
    assert type(models.load_pipeline(source)) is SyncDiffusionXLPipeline
    control = models.load_control_pipeline(source, ["tiny-random"])
    assert type(control) is ControlSyncXLPipeline
    from panosync.server.generation import PanoramaModel

    assert type(PanoramaModel.load(str(xl_folder), device="cpu", dtype="float32").pipe) is SyncDiffusionXLPipeline


def flux_fill_like_folder(tmp_path):
    folder = tmp_path / "flux-fill"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxFillPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}))
    return folder


def test_an_unsupported_family_is_one_sentence_before_weights_load(tmp_path, capsys):
    folder = flux_fill_like_folder(tmp_path)  # no weights at all: nothing may try to load them
    with pytest.raises(ValueError, match=f"is FLUX.1 Fill \\(inpainting\\) \\(FluxFillPipeline\\), which panosync does "
                                         f"not run: it "
                                         f"{SUPPORTED_SENTENCE}"):
        models.resolve_model(str(folder))
    with pytest.raises(ValueError, match=SUPPORTED_SENTENCE):
        AutoSyncDiffusionPipeline.from_pretrained(folder)
    assert main(["generate", "a land", "--model", str(folder), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(SUPPORTED_SENTENCE) and len(error.splitlines()) == 1 and "Traceback" not in error


def test_a_checkpoints_family_is_read_from_its_keys(tmp_path):
    xl = tmp_path / "xl.safetensors"
    save_file({"conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": torch.zeros(2)}, str(xl))
    assert family_of_checkpoint(xl) == "Stable Diffusion XL"
    flux = tmp_path / "flux.safetensors"
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2),
               "guidance_in.in_layer.bias": torch.zeros(2), "img_in.weight": torch.zeros(2, 64)}, str(flux))
    assert family_of_checkpoint(flux) == "FLUX.1"
    assert settings.recommended_of(models.resolve_model(str(flux))) == {"guidance_scale": 3.5}  # dev
    schnell = tmp_path / "schnell.safetensors"  # no guidance input: FLUX.1 schnell, distilled to a few steps
    save_file({"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(2)}, str(schnell))
    assert identify_checkpoint(schnell) == ("FLUX.1", "schnell")
    assert settings.recommended_of(models.resolve_model(str(schnell)))["num_inference_steps"] == 4
    flux2 = tmp_path / "flux2.safetensors"
    save_file({"single_stream_modulation.lin.weight": torch.zeros(2)}, str(flux2))
    with pytest.raises(ValueError, match=SUPPORTED_SENTENCE):
        models.resolve_model(str(flux2))


@pytest.mark.slow
def test_generate_with_an_sdxl_folder_and_reproduce_it_from_the_png(xl_folder, tmp_path, capsys):
    first = tmp_path / "xl.png"
    code = main(["generate", "a land", "--model", str(xl_folder), "--width", "64", "--height", "32", "--stride", "8",
                 "--steps", "2", "--seed", "3", "--loop-closure", "--out", str(first), "--quiet"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    parameters = read_parameters(first)
    assert parameters["model"] == str(xl_folder) and parameters["loop_closure"] is True
    assert parameters["guidance_scale"] == 5.0  # SDXL's default (families.FAMILY_DEFAULTS)
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(first), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(again)))


def test_a_vae_in_place_of_the_models_own(xl_folder, tmp_path):
    """--vae: an fp16-safe VAE (here another tiny one) replaces the model's, and the PNG records it."""
    vae_folder = tmp_path / "vae"
    tiny_random_xl_components(**NARROW_XL, seed=9)["vae"].save_pretrained(vae_folder)
    pipe = models.load_pipeline(str(xl_folder), vae=str(vae_folder))
    assert torch.equal(pipe.vae.decoder.conv_in.weight, AutoencoderKL.from_pretrained(vae_folder).decoder.conv_in.weight)
    out = tmp_path / "vae.png"
    assert main(["generate", "a land", "--model", str(xl_folder), "--vae", str(vae_folder), "--width", "32",
                 "--height", "32", "--steps", "1", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    assert read_parameters(out)["vae"] == str(vae_folder)
    with pytest.raises(ValueError, match="not a diffusers VAE folder"):
        models.load_pipeline(str(xl_folder), vae=str(tmp_path))


def test_a_transformer_of_another_family_is_one_sentence_before_weights_load(tmp_path, capsys):
    """HunyuanDiT (like HiDream) has a transformer, a VAE and two text encoders, as SD3 and FLUX do:
    the transformer's class, not the components, says it is neither."""
    folder = tmp_path / "hunyuan"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanDiTPipeline", "_diffusers_version": "0.30.0",
        "transformer": ["diffusers", "HunyuanDiT2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "BertModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "BertTokenizer"], "tokenizer_2": ["transformers", "T5Tokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"]}))
    for part, config in (("transformer", {"_class_name": "HunyuanDiT2DModel", "sample_size": 128, "patch_size": 2}),
                         ("vae", {"_class_name": "AutoencoderKL", "block_out_channels": [128, 256, 512, 512]}),
                         ("scheduler", {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000})):
        (folder / part).mkdir()
        name = "scheduler_config.json" if part == "scheduler" else "config.json"
        (folder / part / name).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="is a HunyuanDiTPipeline \\(its transformer a HunyuanDiT2DModel\\), which "
                                         "panosync does not run"):
        models.resolve_model(str(folder))
    assert main(["generate", "a land", "--model", str(folder), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.endswith(SUPPORTED_SENTENCE) and len(error.splitlines()) == 1 and "Traceback" not in error
