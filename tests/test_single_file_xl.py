"""Loading one SDXL checkpoint in Stability's own (SGM) layout, as sd_xl_base_1.0.safetensors is published,
offline: the architecture comes from a diffusers folder of the same model (`config=`, --model-config), and the
panorama is the folder's, to the bit.

The tiny SDXL here differs from test_families.py's in its second text encoder, for two checks diffusers makes on a
checkpoint's keys and shapes that SDXL base passes and a narrower model would not:
- the family (`infer_diffusers_model_type`: "xl_base") is told by the key of OpenCLIP's 10th layer
  (conditioner.embedders.1.model.transformer.resblocks.9...): text_encoder_2 has 10 layers;
- each text encoder's weights are picked by comparing the checkpoint's CLIP position embedding's width with the
  encoder's (768 against 1280 in SDXL base): were the two widths equal, text_encoder_2 would silently get
  text_encoder's weights. Here they are 16 and 24, and the projection is 20 wide, so that its transpose shows.
"""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint
from ldm_checkpoint import save_sgm_xl_checkpoint
from safetensors import safe_open
from test_single_file import offline  # noqa: F401  (the fixture: no hub, an empty hub cache)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from panosync.families import SDXL, family_of_checkpoint
from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.registry import AutoSyncDiffusionPipeline
from panosync.tiny import tiny_random_xl_components
from panosync.xl import SyncDiffusionXLPipeline

NARROW_XL = dict(window=16, vae_factor=2, unet_channels=(16, 32), vae_channels=8, text_width=16)
OPEN_CLIP = dict(hidden_size=24, intermediate_size=48, projection_dim=20, num_hidden_layers=10)
KWARGS = dict(width=64, height=32, stride=8, num_inference_steps=2, seed=1, output_type="np")  # synced (default weight)
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def tiny_xl_components() -> dict:
    """tiny_random_xl_components with a wider, 10-layer OpenCLIP-shaped text_encoder_2 and a UNet taking it
    (its cross-attention context is both encoders' states side by side, its added embedding the pooled one).
    Every weight is nudged off its initial value: a freshly made norm layer's ones and zeros are what a loader
    leaves in a weight it did not find, so a misnamed norm would otherwise load "equal"."""
    components = tiny_random_xl_components(**NARROW_XL)
    torch.manual_seed(1)
    text_config = {**components["text_encoder_2"].config.to_dict(), **OPEN_CLIP}
    components["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**text_config)).eval()
    unet = components["unet"].config
    components["unet"] = UNet2DConditionModel.from_config({
        **unet, "cross_attention_dim": NARROW_XL["text_width"] + OPEN_CLIP["hidden_size"],
        "projection_class_embeddings_input_dim": 6 * unet.addition_time_embed_dim + OPEN_CLIP["projection_dim"],
    }).eval()
    with torch.no_grad():
        for name in COMPONENTS:
            for weight in components[name].parameters():
                weight.add_(0.01 * torch.randn_like(weight))
    return components


@pytest.fixture(scope="module")
def xl(tmp_path_factory):
    """The tiny SDXL as a SyncDiffusionXLPipeline, saved as a diffusers folder by diffusers' own
    StableDiffusionXLPipeline (as SDXL base is published) and written as one SGM checkpoint."""
    components = tiny_xl_components()
    folder = tmp_path_factory.mktemp("sgm")
    published = StableDiffusionXLPipeline(**components, add_watermarker=False)
    published.save_pretrained(folder / "config")
    checkpoint = save_sgm_xl_checkpoint(published, folder / "tiny-sdxl.safetensors")
    pipe = SyncDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe, checkpoint, folder / "config"


def test_the_checkpoint_has_sdxl_bases_layout(xl):
    pipe, path, _ = xl
    with safe_open(str(path), framework="pt") as file:
        keys = set(file.keys())
        shape = lambda key: file.get_slice(key).get_shape()  # noqa: E731
        assert {key.split(".")[0] for key in keys} == {"model", "first_stage_model", "conditioner"}
        assert {key.split(".")[2] for key in keys if key.startswith("conditioner.")} == {"0", "1"}
        # the added embedding, a downsampler, the upsampler after an up block's attention, a cross-attention
        unet = ("label_emb.0.0.weight", "label_emb.0.2.bias", "input_blocks.2.0.op.weight",
                "output_blocks.1.2.conv.bias", "input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
                "middle_block.1.proj_in.weight")
        assert {f"model.diffusion_model.{key}" for key in unet} <= keys
        assert "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight" in keys
        open_clip = "conditioner.embedders.1.model."
        assert shape(open_clip + "positional_embedding") == [77, 24]
        assert shape(open_clip + "token_embedding.weight")[1] == 24
        assert shape(open_clip + "text_projection") == [24, 20]  # x @ P: the transpose of the Linear's weight
        assert shape(open_clip + "transformer.resblocks.9.attn.in_proj_weight") == [3 * 24, 24]
        assert {open_clip + f"transformer.resblocks.9.{name}" for name in (
            "attn.in_proj_bias", "attn.out_proj.weight", "ln_1.weight", "ln_2.bias", "mlp.c_fc.weight",
            "mlp.c_proj.bias")} | {open_clip + "ln_final.weight"} <= keys
        assert not any(key.startswith(open_clip) and ("self_attn" in key or ".q_proj." in key) for key in keys)
        # in_proj is q, k and v one above the other, in that order
        attention = pipe.text_encoder_2.text_model.encoder.layers[3].self_attn
        in_proj = file.get_tensor(open_clip + "transformer.resblocks.3.attn.in_proj_weight")
        assert torch.equal(in_proj, torch.cat([attention.q_proj.weight, attention.k_proj.weight,
                                               attention.v_proj.weight]))
    # what diffusers and panosync call it
    assert infer_diffusers_model_type(load_single_file_checkpoint(str(path))) == "xl_base"
    assert family_of_checkpoint(path) == SDXL


@pytest.mark.parametrize("loader", [SyncDiffusionXLPipeline, AutoSyncDiffusionPipeline])
def test_from_single_file_loads_every_weight_and_makes_the_same_panorama(xl, loader, offline):  # noqa: F811
    pipe, path, config = xl
    loaded = loader.from_single_file(str(path), config=str(config), local_files_only=True)
    assert type(loaded) is SyncDiffusionXLPipeline and isinstance(loaded.scheduler, DDIMScheduler)
    assert loaded.window == 16 and loaded.vae_scale_factor == 2 and loaded.config.force_zeros_for_empty_prompt
    for name in COMPONENTS:
        weights, original = getattr(loaded, name).state_dict(), getattr(pipe, name).state_dict()
        assert weights.keys() == original.keys(), name
        assert all(torch.equal(weights[key], original[key]) for key in original), name
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(loaded("a", **KWARGS).images, pipe("a", **KWARGS).images)


@pytest.mark.slow
def test_generate_from_the_checkpoint_as_from_its_folder_and_again_from_the_png(
        xl, tmp_path, offline, capsys):  # noqa: F811
    _, path, config = xl
    options = ["--width", "64", "--height", "32", "--stride", "8", "--steps", "2", "--seed", "3", "--quiet"]
    from_file, from_folder, again = tmp_path / "file.png", tmp_path / "folder.png", tmp_path / "again.png"
    assert main(["generate", "a land", "--model", str(path), "--model-config", str(config), *options,
                 "--out", str(from_file)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["generate", "a land", "--model", str(config), *options, "--out", str(from_folder)]) == 0
    parameters = read_parameters(from_file)
    assert parameters["model"] == str(path) and parameters["model_config"] == str(config)
    assert main(["generate", "--from-png", str(from_file), "--out", str(again), "--quiet"]) == 0
    file, folder, png = (np.asarray(PIL.Image.open(out), dtype=int) for out in (from_file, from_folder, again))
    assert file.shape == (32, 64, 3) and file.std() > 10
    assert np.array_equal(file, png)
    # The folder's weights are equal (the test above), but transformers loads them from a memory-mapped file at
    # offsets that are not all 64-byte aligned, and PyTorch's CPU matmul can round an unaligned weight's product
    # differently (text_encoder_2's projection here: 2e-7 in the pooled embedding): one value of 6144 one level apart.
    assert np.abs(file - folder).max() <= 1 and (file != folder).mean() < 0.01
