"""SD3 and FLUX through every front end: a folder saved by diffusers' own StableDiffusion3Pipeline or
FluxPipeline (as a downloaded model is) is picked by its model_index.json, makes a panorama with
the command (and again from its PNG), the server and the page; bad input is one sentence before
any weights load. Tiny random-weight models, offline."""

import dataclasses
import json
import shutil

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from diffusers import FluxPipeline, StableDiffusion3Pipeline

from panosync import models, settings
from panosync.cli import main
from panosync.flux import SyncDiffusionFluxPipeline
from panosync.metadata import read_parameters
from panosync.registry import AutoSyncDiffusionPipeline, family_defaults_after_loading
from panosync.sd3 import SyncDiffusion3Pipeline
from panosync.server.limits import Limits
from panosync.tiny import tiny_random_flux_components, tiny_random_sd3_components

FAMILIES = {"sd3": (StableDiffusion3Pipeline, tiny_random_sd3_components, SyncDiffusion3Pipeline, "Stable Diffusion 3/3.5"),
            "flux": (FluxPipeline, tiny_random_flux_components, SyncDiffusionFluxPipeline, "FLUX.1")}
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
    pipe = AutoSyncDiffusionPipeline.from_pretrained(path)
    assert type(pipe) is ours and type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.geometry == geometry


@pytest.mark.slow
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
    loaded = AutoSyncDiffusionPipeline.from_pretrained(schnell)
    assert family_defaults_after_loading(loaded) == {"guidance_scale": 3.5, "num_inference_steps": 4}
    assert family_defaults_after_loading(loaded, explicit={"num_inference_steps"}) == {"guidance_scale": 3.5}
    assert family_defaults_after_loading(AutoSyncDiffusionPipeline.from_pretrained(dev)) == {"guidance_scale": 3.5}


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
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # models.configs_cache
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
    """Online, a hub model not in the cache has its configs fetched on their own (no weights), kept
    beside the Hugging Face cache, so batch, evaluate and serve know its family's defaults from the
    start, and offline later it is still "not in the local cache" (its weights are not) rather than
    a loader's traceback; when even the configs cannot be had (a gated model without a token) it is
    known once loaded, as before."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    dev = tmp_path / "dev"
    FluxPipeline(**tiny_random_flux_components()).save_pretrained(dev)
    asked = []

    def snapshot_download(repo_id, allow_patterns=None, cache_dir=None, **options):
        """The hub's client, faked: the files the patterns keep, in the cache's layout."""
        asked.append((repo_id, cache_dir))
        files = [str(path.relative_to(dev)) for path in dev.rglob("*") if path.is_file()]
        snapshot = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "0123abcd"
        for name in filter_repo_objects(files, allow_patterns=allow_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(dev / name, snapshot / name)
        (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
        (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
        return str(snapshot)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "model_info", lambda repo_id, timeout=None: None)  # it exists
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    source = models.resolve_model("someone/tiny-dev")
    assert asked == [("someone/tiny-dev", models.configs_cache())] and tmp_path in models.configs_cache().parents
    fetched = {str(path.relative_to(models.configs_cache())).split("/", 3)[-1]
               for path in models.configs_cache().rglob("*") if path.is_file() and "snapshots" in path.parts}
    assert fetched and all(name.endswith(".json") for name in fetched), fetched  # no weights, no tokenizer
    assert (source.family, source.variant, source.geometry) == ("FLUX.1", None, models.resolve_model(str(dev)).geometry)
    assert settings.recommended_of(source) == {"guidance_scale": 3.5}
    assert models.resolve_model("someone/tiny-dev") == source and len(asked) == 1  # the fetched configs serve again
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        models.resolve_model("someone/tiny-dev")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def gated(repo_id, **options):
        raise huggingface_hub.errors.GatedRepoError("gated", response=None)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    source = models.resolve_model("someone/gated-dev")
    assert (source.kind, source.family, source.geometry) == ("hub", None, None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **options: str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no model_index.json: it is not a diffusers model"):
        models.resolve_model("someone/a-checkpoint-repo")


def test_generate_with_the_folder_and_reproduce_it_from_the_png(folder, tmp_path, capsys):
    family, path = folder
    first = tmp_path / "first.png"
    code = main(["generate", "a land", "--model", str(path), *CANVAS, "--seed", "3", "--loop-closure",
                 "--dtype", "float32", "--out", str(first), "--quiet"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    parameters = read_parameters(first)
    assert parameters["window"] == 32 and parameters["loop_closure"] is True
    assert PIL.Image.open(first).size == (64, 32)
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(first), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(again)))


def test_the_command_in_bfloat16_with_fast_modes(folder, tmp_path):
    family, path = folder
    out = tmp_path / "fast.png"
    assert main(["generate", "a land", "--model", str(path), *CANVAS, "--seed", "1", "--dtype", "bfloat16",
                 "--fast", "reuse_noise", "--fast", "no_unet_backward", "--sync-image-scale", "0.5",
                 "--out", str(out), "--quiet"]) == 0
    image = np.asarray(PIL.Image.open(out))
    assert image.shape == (32, 64, 3) and image.std() > 2


@pytest.mark.parametrize("options, sentence", [
    (["--fast", "dpm_solver"], "dpm_solver is for the UNet models' DDPM schedule"),
    (["--window", "33"], "window must be a multiple of 4 pixels for this model, got 33."),
    (["--window", "4"], "window must be at least 16 pixels (LPIPS-VGG compares views of 16 pixels or more), got 4."),
    (["--window", "32", "--stride", "17"], "stride must be between 1 and the window size (16 latent pixels)"),
])
def test_bad_input_is_one_sentence_before_weights_load(folder, tmp_path, capsys, monkeypatch, options, sentence):
    family, path = folder

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(models, "load_pipeline", no_loading)
    out = tmp_path / "never.png"
    assert main(["generate", "a land", "--model", str(path), "--steps", "1", *options, "--out", str(out),
                 "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert sentence in error and len(error.splitlines()) == 1 and not out.exists()


def test_controlsync_with_the_command_and_again_from_its_png(folder, tmp_path):
    family, path = folder
    condition = tmp_path / "edges.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)).save(condition)
    out = tmp_path / "control.png"
    code = main(["control", "a land", "--model", str(path), "--condition", str(condition), "--controlnet",
                 "tiny-random", "--window", "32", "--stride", "8", "--steps", "2", "--seed", "1", "--out", str(out),
                 "--quiet"])
    assert code == 0 and PIL.Image.open(out).size == (64, 32)
    again = tmp_path / "again.png"
    assert main(["control", "--from-png", str(out), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(again)))


def test_a_controlnet_of_another_familys_kind_is_one_sentence_before_weights_load(folder, tmp_path, capsys,
                                                                                  monkeypatch):
    family, path = folder

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(models, "load_pipeline", no_loading)
    condition = tmp_path / "edges.png"
    PIL.Image.new("RGB", (64, 32)).save(condition)
    assert main(["control", "a land", "--model", str(path), "--condition", str(condition), "--controlnet",
                 "pocket-canny", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    kind = "Stable Diffusion 3/3.5 model takes SD3ControlNetModel" if family == "sd3" else \
        "FLUX.1 model takes FluxControlNetModel"
    assert f"is of class ControlNetModel, but this {kind} ControlNets" in error
    assert len(error.splitlines()) == 1


def test_the_server_takes_a_window_and_makes_its_canvas(folder):
    from panosync.server.generation import PanoramaModel

    family, path = folder
    model = PanoramaModel.load(str(path), device="cpu", dtype="float32")
    assert type(model.pipe) is FAMILIES[family][2] and model.device.type == "cpu"
    parameters = model.prepare({"prompt": "a land", "window": 32, "num_inference_steps": 1, "seed": 2}, Limits())
    assert (parameters["width"], parameters["height"], parameters["stride"]) == (128, 32, 4)  # four windows
    image = model.generate({**parameters, "width": 64})
    assert image.size == (64, 32)
    with pytest.raises(ValueError, match="window must be a multiple of 4 pixels"):
        model.prepare({"prompt": "a land", "window": 30}, Limits())


@pytest.mark.slow
def test_the_page_has_a_window_input_for_the_family(folder, tmp_path):
    pytest.importorskip("gradio")
    from panosync.server.generation import PanoramaModel
    from panosync.server.ui import build_ui

    family, path = folder
    pipe = models.load_pipeline(str(path))
    model = PanoramaModel(pipe, str(path), settings.model_defaults(models.resolve_model(str(path))))
    page = build_ui(model, Limits(), tmp_path / "outputs")
    config = json.loads(json.dumps(page.get_config_file(), default=str))
    window = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "window")
    assert window["props"]["value"] == model.window * model.vae_factor
    assert window["props"].get("interactive") is not False


@pytest.mark.slow
def test_evaluate_with_a_flux_folder_at_a_chosen_window(tmp_path, tiny_clip, capsys):
    pytest.importorskip("torchmetrics")
    path = tmp_path / "flux"
    FluxPipeline(**tiny_random_flux_components()).save_pretrained(path)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("snowy mountains\n")
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(path), "--prompts", str(prompts), "--seeds", "0-1", *CANVAS,
                 "--sync-threshold", "1", "--clip-model", str(tiny_clip), "--examples", "1", "--out", str(out),
                 "--quiet", "--dtype", "float32"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["canvas"] == {"width": 64, "height": 32, "crop_size": 32, "crops_per_panorama": 2}
    assert read_parameters(out / "panoramas/syncdiffusion/000-seed0.png")["window"] == 32


def test_the_familys_guidance_is_the_default_of_every_front_end(folder, tmp_path):
    family, path = folder
    expected = 7.0 if family == "sd3" else 3.5  # diffusers' pipelines' (FLUX.1-dev's is distilled)
    source = models.resolve_model(str(path))
    assert settings.model_defaults(source)["guidance_scale"] == expected
    out = tmp_path / "default.png"
    assert main(["generate", "a land", "--model", str(path), *CANVAS, "--seed", "1", "--out", str(out),
                 "--quiet"]) == 0
    assert read_parameters(out)["guidance_scale"] == expected
    (path / "recommended.json").write_text(json.dumps({"guidance_scale": 2.0}))
    try:
        assert settings.model_defaults(source)["guidance_scale"] == 2.0  # the model's own file comes first
    finally:
        (path / "recommended.json").unlink()


def test_the_server_makes_controlsync_panoramas(folder):
    from panosync.server.generation import PanoramaModel

    family, path = folder
    model = PanoramaModel.load(str(path), device="cpu", dtype="float32", controlnets=["tiny-random"])
    assert model.control
    assert type(model.pipe).__name__ == ("ControlSync3Pipeline" if family == "sd3" else "ControlSyncFluxPipeline")
    condition = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 64, 3), dtype=np.uint8))
    parameters = model.prepare({"prompt": "a land", "condition": [condition], "window": 32, "stride": 8,
                                "num_inference_steps": 1, "seed": 2}, Limits())
    assert model.generate(parameters).size == (64, 32)


@pytest.mark.slow
def test_a_model_whose_family_is_known_only_once_loaded_gets_its_familys_defaults(tmp_path, monkeypatch):
    """A hub model whose configs could not be had before it loads (models._hub_configs): its family
    (and so FLUX's guidance 3.5) is known only once it loads; the command and the server then take
    the family's defaults unless told otherwise."""
    from panosync.server.generation import PanoramaModel

    path = tmp_path / "flux"
    FluxPipeline(**tiny_random_flux_components()).save_pretrained(path)
    resolve = models.resolve_model

    def family_unknown(model):
        source = resolve(model)
        return dataclasses.replace(source, family=None)

    monkeypatch.setattr(models, "resolve_model", family_unknown)
    first = tmp_path / "first.png"
    assert main(["generate", "a land", "--model", str(path), *CANVAS, "--seed", "1", "--out", str(first),
                 "--quiet"]) == 0
    assert read_parameters(first)["guidance_scale"] == 3.5
    told = tmp_path / "told.png"
    assert main(["generate", "a land", "--model", str(path), *CANVAS, "--seed", "1", "--guidance-scale", "5",
                 "--out", str(told), "--quiet"]) == 0
    assert read_parameters(told)["guidance_scale"] == 5
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(told), "--out", str(again), "--quiet"]) == 0
    assert read_parameters(again)["guidance_scale"] == 5
    monkeypatch.setattr("panosync.server.generation.resolve_model", family_unknown)
    assert PanoramaModel.load(str(path), device="cpu", dtype="float32").defaults["guidance_scale"] == 3.5


def test_the_page_makes_a_chosen_windows_canvas(folder, tmp_path):
    """Changing the window refills width, height and stride with that window's canvas, which the
    sliders can show (from the smallest window up; stride up to the largest window), and the page
    makes it."""
    pytest.importorskip("gradio")
    from panosync.server.generation import PanoramaModel
    from panosync.server.ui import build_ui

    family, path = folder
    pipe = models.load_pipeline(str(path))
    model = PanoramaModel(pipe, str(path), settings.model_defaults(models.resolve_model(str(path))))
    page = build_ui(model, Limits(), tmp_path / "outputs")
    blocks = {block.elem_id: block for block in page.blocks.values() if getattr(block, "elem_id", None)}
    step = model.geometry.window_multiple * model.vae_factor
    assert blocks["width"].minimum == blocks["height"].minimum == step
    assert blocks["stride"].maximum >= (model.geometry.max_window or 4 * model.window)  # FLUX: no bound of its own
    change = next(function for function in page.fns.values() if function.name == "canvas_of_window")
    assert [block.elem_id for block in change.inputs] == ["window", "width", "height", "stride"]
    assert [block.elem_id for block in change.outputs] == ["width", "height", "stride"]
    for window in (step, blocks["stride"].maximum * model.vae_factor):
        assert change.fn(window, 1, 2, 3) == (4 * window, window, max(1, window // model.vae_factor // 4))
    assert change.fn(step + 1, 1, 2, 3) == (1, 2, 3)  # refused: the canvas stays, the request says why
    generate = next(function for function in page.fns.values() if function.name == "generate")
    values = {block.elem_id: block.value for block in generate.inputs}
    window = 16  # neither family's default (FLUX's 256, SD3's 32 pixels here)
    width, height, stride = change.fn(window, values["width"], values["height"], values["stride"])
    values.update(prompt="a land", randomize=False, window=window, width=width, height=height, stride=stride,
                  num_inference_steps=1)
    outputs = generate.fn(*[values[block.elem_id] for block in generate.inputs], progress=lambda *a, **k: None)
    assert PIL.Image.open(outputs[0]).size == (4 * window, window)
    assert read_parameters(outputs[0])["window"] == window


@pytest.mark.slow
def test_evaluate_gives_a_model_whose_family_is_known_only_once_loaded_its_familys_defaults(tmp_path, tiny_clip,
                                                                                              monkeypatch):
    """As the command does: a hub model whose configs could not be had (neither its shape nor its
    family known before it loads) is evaluated with its family's guidance, unless an option sets it."""
    pytest.importorskip("torchmetrics")
    path = tmp_path / "flux"
    FluxPipeline(**tiny_random_flux_components()).save_pretrained(path)
    resolve = models.resolve_model
    monkeypatch.setattr(models, "resolve_model",
                        lambda model: dataclasses.replace(resolve(model), family=None, geometry=None))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("snowy mountains\n")
    for options, expected in (([], 3.5), (["--guidance-scale", "5"], 5)):
        out = tmp_path / f"eval{len(options)}"
        assert main(["evaluate", "--model", str(path), "--prompts", str(prompts), "--seeds", "0-1", *CANVAS,
                     "--steps", "1", "--methods", "syncdiffusion", "--sync-threshold", "1", "--clip-model",
                     str(tiny_clip), "--examples", "0", "--out", str(out), "--quiet", "--dtype", "float32",
                     *options]) == 0
        assert read_parameters(out / "panoramas/syncdiffusion/000-seed0.png")["guidance_scale"] == expected
