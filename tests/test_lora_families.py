"""The issue's finish line on every family: `panosync generate "…" --model <SD, SDXL, SD3 or FLUX
folder> --lora <dir>:0.8 --loop-closure` makes a loop-closed panorama with the LoRA (a random one
for the tiny model, written by the family's diffusers save_lora_weights), which differs from the
LoRA-free one, records it, and `--from-png` makes it again bit for bit. Tiny random-weight folders
saved by each family's own diffusers pipeline, offline."""

import numpy as np
import PIL.Image
import pytest
from diffusers import FluxPipeline, StableDiffusion3Pipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.tiny import (tiny_random_components, tiny_random_flux_components, tiny_random_sd3_components,
                           tiny_random_xl_components)

from lora_files import save_random_lora

# family: (its diffusers pipeline, its tiny components, options of the pipeline's constructor)
FAMILIES = {
    "sd": (StableDiffusionPipeline, lambda: tiny_random_components(window=16, vae_factor=2),
           dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)),
    "sdxl": (StableDiffusionXLPipeline, lambda: tiny_random_xl_components(), dict(add_watermarker=False)),
    "sd3": (StableDiffusion3Pipeline, lambda: tiny_random_sd3_components(), {}),
    "flux": (FluxPipeline, lambda: tiny_random_flux_components(), {}),
}
# two 32-pixel windows round the loop, one high; the transformers take the window as an option
CANVAS = ["--width", "64", "--height", "32", "--stride", "8", "--steps", "2", "--loop-closure", "--seed", "3"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    pipeline, build, options = FAMILIES[request.param]
    components = build()
    model = tmp_path_factory.mktemp(f"{request.param}-model")
    pipeline(**components, **options).save_pretrained(model)
    lora = tmp_path_factory.mktemp(f"{request.param}-lora")
    save_random_lora(request.param, components, lora, seed=1)
    transformer = [] if request.param in ("sd", "sdxl") else ["--window", "32"]
    return request.param, model, lora, transformer


@pytest.mark.slow
def test_generate_with_a_lora_and_loop_closure_on_every_family(family, tmp_path, capsys):
    name, model, lora, transformer = family
    plain, styled, again = tmp_path / "plain.png", tmp_path / "styled.png", tmp_path / "again.png"
    common = ["generate", "a land", "--model", str(model), *CANVAS, *transformer, "--quiet"]
    assert main([*common, "--out", str(plain)]) == 0
    assert main([*common, "--lora", f"{lora}:0.8", "--out", str(styled)]) == 0
    assert main(["generate", "--from-png", str(styled), "--out", str(again), "--quiet"]) == 0

    recorded = read_parameters(styled)
    assert recorded["loop_closure"] is True
    assert [(entry["scale"], len(entry["sha256"])) for entry in recorded["loras"]] == [(0.8, 64)]
    pixels = {path.stem: np.asarray(PIL.Image.open(path), dtype=np.int16) for path in (plain, styled, again)}
    assert pixels["styled"].shape == (32, 64, 3)
    assert np.abs(pixels["styled"] - pixels["plain"]).max() > 0, f"{name}: the LoRA changed nothing"
    assert np.array_equal(pixels["again"], pixels["styled"]), f"{name}: --from-png made another panorama"
