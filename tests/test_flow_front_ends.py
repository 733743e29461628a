"""SD3 and FLUX through every front end: a folder saved by diffusers' own StableDiffusion3Pipeline or
FluxPipeline (as a downloaded model is) is picked by its model_index.json, makes a panorama with
the command (and again from its PNG), the server and the page; bad input is one sentence before
any weights load. Tiny random-weight models, offline."""

import dataclasses
import json

import numpy as np
import PIL.Image
import pytest
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from panosync import models, settings
from panosync.auto import AutoSyncPipeline
from panosync.cli import main
from panosync.flux import SyncFluxPipeline
from panosync.metadata import read_parameters
from panosync.sd3 import SyncDiffusion3Pipeline
from panosync.server.limits import Limits
from panosync.tiny import tiny_random_flux_components, tiny_random_sd3_components

FAMILIES = {"sd3": (StableDiffusion3Pipeline, tiny_random_sd3_components, SyncDiffusion3Pipeline, "Stable Diffusion 3/3.5"),
            "flux": (FluxPipeline, tiny_random_flux_components, SyncFluxPipeline, "FLUX.1")}
CANVAS = ["--window", "32", "--width", "64", "--height", "32", "--stride", "8", "--steps", "2"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def folder(request, tmp_path_factory):
    theirs, build, _, _ = FAMILIES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    theirs(**build()).save_pretrained(path)
    return request.param, path


def test_the_folder_is_picked_by_its_family_before_weights_load(folder):
    family, path = folder
    _, _, ours, name = FAMILIES[family]
    source = models.resolve_model(str(path))
    assert source.family == name
    geometry = source.geometry  # from the configs alone
    assert geometry.window == (16 if family == "sd3" else 128) and geometry.vae_factor == 2
    assert geometry.window_multiple == 2
    pipe = AutoSyncPipeline.from_pretrained(path)
    assert type(pipe) is ours and type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert settings.geometry_of_pipeline(pipe) == geometry


def test_flux_schnell_takes_its_four_steps_by_default_wherever_its_variant_is_read(tmp_path, capsys):
    """schnell (a FLUX transformer without a guidance input) defaults to 4 steps, as diffusers documents
    it, where dev keeps the paper's 50: from the folder's configs before loading, and from the loaded
    pipeline for a model whose family was known only then. An option still wins."""
    dev, schnell = tmp_path / "dev", tmp_path / "schnell"
    FluxPipeline(**tiny_random_flux_components()).save_pretrained(dev)
    FluxPipeline(**tiny_random_flux_components(guidance_embeds=False)).save_pretrained(schnell)
    assert (models.resolve_model(str(dev)).variant, models.resolve_model(str(schnell)).variant) == (None, "schnell")
    canvas = [arg for arg in CANVAS if arg not in ("--steps", "2")]
    steps = {}
    for path, extra in ((dev, ["--steps", "3"]), (schnell, []), (schnell, ["--steps", "2"])):
        out = tmp_path / f"{path.name}{len(extra)}.png"
        assert main(["generate", "a land", "--model", str(path), *canvas, *extra, "--seed", "3", "--out", str(out),
                     "--quiet"]) == 0
        steps[out.stem] = read_parameters(out)["num_inference_steps"]
    assert steps == {"dev2": 3, "schnell0": 4, "schnell2": 2}
    assert settings.recommended_of(models.resolve_model(str(dev))).get("num_inference_steps") is None
    loaded = AutoSyncPipeline.from_pretrained(schnell)
    assert settings.family_defaults_after_loading(loaded) == {"guidance_scale": 3.5, "num_inference_steps": 4}
    assert settings.family_defaults_after_loading(loaded, explicit={"num_inference_steps"}) == {"guidance_scale": 3.5}
    assert settings.family_defaults_after_loading(AutoSyncPipeline.from_pretrained(dev)) == {"guidance_scale": 3.5}


def configs_only(folder, into):
    """The configs of a saved model folder, without its weights or tokenizers: what a hub snapshot
    holds when only they were fetched."""
    import shutil

    for config in ["model_index.json", *(str(path.relative_to(folder)) for path in folder.glob("*/*config.json"))]:
        (into / config).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / config, into / config)
    return into


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty local hub cache, offline; a test may turn the hub on (with its answers faked)."""
    import huggingface_hub

    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_a_cached_hub_model_is_known_before_it_loads(tmp_path, hub):
    """A hub model in the local cache: its model_index.json names the family, its transformer's
    config the variant (schnell) and its configs the geometry, so defaults and canvas are right
    before any weights load."""
    schnell = tmp_path / "schnell"
    FluxPipeline(**tiny_random_flux_components(guidance_embeds=False)).save_pretrained(schnell)
    repo = hub / "models--someone--tiny-schnell"
    configs_only(schnell, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    source = models.resolve_model("someone/tiny-schnell")
    assert (source.kind, source.family, source.variant) == ("hub", "FLUX.1", "schnell")
    assert source.geometry == models.resolve_model(str(schnell)).geometry and source.geometry.window == 128
    assert settings.recommended_of(source)["num_inference_steps"] == 4


def test_an_uncached_hub_model_has_its_configs_fetched_alone_before_it_loads(tmp_path, hub, monkeypatch):
    """Online, a hub model not in the cache has its configs fetched on their own (no weights), so
    batch, evaluate and serve know its family's defaults from the start; when even they cannot be had
    (a gated model without a token) it is known once loaded, as before."""
    import huggingface_hub

    dev = tmp_path / "dev"
    FluxPipeline(**tiny_random_flux_components()).save_pretrained(dev)
    fetched = configs_only(dev, tmp_path / "fetched")
    asked = []

    def snapshot_download(repo_id, allow_patterns=None, **options):
        asked.append((repo_id, allow_patterns))
        return str(fetched)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, timeout=None: None)  # it exists
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    source = models.resolve_model("someone/tiny-dev")
    assert asked == [("someone/tiny-dev", models.CONFIG_FILES)]
    assert not any(pattern.endswith((".safetensors", ".bin", "*")) for pattern in models.CONFIG_FILES)
    assert (source.family, source.variant, source.geometry) == ("FLUX.1", None, models.resolve_model(str(dev)).geometry)
    assert settings.recommended_of(source) == {"guidance_scale": 3.5}

    def gated(repo_id, **options):
        raise huggingface_hub.errors.GatedRepoError("gated", response=None)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    source = models.resolve_model("someone/tiny-dev")
    assert (source.kind, source.family, source.geometry) == ("hub", None, None)
