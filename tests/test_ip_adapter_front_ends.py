"""The IP-Adapter on the command's front ends (ip_adapters.py): what `--ip-adapter PATH_OR_HUB_ID[:SCALE]`
and `--ip-adapter-image FILE` take and refuse before any model loads, the PNG's record of both (with
each file's SHA-256) and `--from-png`, and batch. Adapters are random ones of the tiny models
(tests/ip_adapter_files.py), with a tiny random CLIP image encoder beside them."""

import hashlib
import json
import pickle

import numpy as np
import PIL.Image
import pytest

from ip_adapter_files import save_random_ip_adapter
from panosync.cli import main
from panosync.ip_adapters import (check_family_takes_image_prompt, ip_adapter_image_spec, ip_adapter_metadata,
                                  ip_adapter_of_options, ip_adapter_spec)
from panosync.metadata import read_parameters
from panosync.runner import ModelSpec

# sync_pipe's folder: 32-pixel windows, 3 views at stride 8; two steps are a fraction of a second
CANVAS = ["--width", "64", "--height", "32", "--stride", "8", "--steps", "2", "--seed", "3", "--quiet"]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, sync_pipe):
    """A folder holding ip-adapter.safetensors and image_encoder/, as diffusers lays them out."""
    folder = tmp_path_factory.mktemp("ip-adapter")
    save_random_ip_adapter(sync_pipe.unet, folder, seed=1)
    return folder


def random_png(path, seed=0, size=64):
    PIL.Image.fromarray((np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")).save(path)
    return path


@pytest.fixture
def image(tmp_path):
    return random_png(tmp_path / "prompt.png")


def pixels(path):
    with PIL.Image.open(path) as picture:
        return np.asarray(picture)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_sentence(capsys, code, *words):
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    return err


# ------------------------------------------------------------------------------------ checking


def test_a_spec_is_checked_hashed_and_stays_picklable(adapter, image):
    spec = ip_adapter_spec(f"{adapter}:0.7")
    assert spec.scale == 0.7 and spec.weight_name == "ip-adapter.safetensors" and spec.image_encoder is None
    assert spec.sha256 == sha256(adapter / "ip-adapter.safetensors")
    assert spec.encoder_path == str((adapter / "image_encoder").absolute())
    prompt = ip_adapter_image_spec(str(image))
    assert prompt.sha256 == sha256(image)
    model = ModelSpec("tiny-random", ip_adapter=spec, ip_adapter_image=prompt)
    assert pickle.loads(pickle.dumps(model)) == model  # what a Ray worker receives
    assert ip_adapter_metadata(spec, prompt) == {
        "ip_adapter": {"source": str(adapter), "weight_name": "ip-adapter.safetensors", "scale": 0.7,
                       "sha256": spec.sha256, "image_encoder": None},
        "ip_adapter_image": {"path": str(image), "sha256": prompt.sha256}}
    assert ip_adapter_metadata(None, None) == {}  # a PNG without reads as before
    # the file itself, and a subfolder's file named by --ip-adapter-weight-name
    assert ip_adapter_spec(str(adapter / "ip-adapter.safetensors")).weight_name is None
    assert ip_adapter_spec(str(adapter.parent), f"{adapter.name}/ip-adapter.safetensors").sha256 == spec.sha256


def test_controlsync_on_sd3_and_flux_takes_no_image_prompt():
    from panosync.families import FLUX, SD, SD3

    check_family_takes_image_prompt(SD, control=True)
    check_family_takes_image_prompt(FLUX, control=False)
    for family in (SD3, FLUX):
        with pytest.raises(ValueError, match=f"ControlSync on {family} takes no image prompt: leave --ip-adapter"):
            check_family_takes_image_prompt(family, control=True)


def _bad_inputs(tmp_path, adapter, image):
    from safetensors.torch import save_file
    import torch

    pickled = tmp_path / "ip-adapter.bin"
    pickled.write_bytes(b"not read")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really")
    lora = tmp_path / "lora.safetensors"
    save_file({"unet.down.lora_A.weight": torch.zeros(2)}, str(lora))
    lonely = tmp_path / "lonely"  # an adapter file with no image_encoder/ beside it
    lonely.mkdir()
    (lonely / "ip-adapter.safetensors").write_bytes((adapter / "ip-adapter.safetensors").read_bytes())
    pickled_encoder = tmp_path / "encoder"
    pickled_encoder.mkdir()
    (pickled_encoder / "config.json").write_text("{}")
    (pickled_encoder / "pytorch_model.bin").write_bytes(b"not read")
    transparent = tmp_path / "transparent.png"
    PIL.Image.new("RGBA", (8, 8)).save(transparent)
    both = ["--ip-adapter", str(adapter), "--ip-adapter-image", str(image)]
    return [
        (["--ip-adapter", str(tmp_path / "missing.safetensors"), "--ip-adapter-image", str(image)],
         "no such file or folder"),
        (["--ip-adapter", str(adapter), "--ip-adapter-image", str(tmp_path / "missing.png")],
         "No such IP-Adapter image"),
        (["--ip-adapter-image", str(image)], "--ip-adapter-image is the image prompt of an IP-Adapter: give "
                                             "--ip-adapter too"),
        (["--ip-adapter", str(adapter)], "--ip-adapter needs --ip-adapter-image"),
        (["--ip-adapter-weight-name", "ip-adapter.safetensors"], "give --ip-adapter too"),
        (["--ip-adapter-image-encoder", str(adapter / "image_encoder")], "give --ip-adapter too"),
        (["--ip-adapter", str(pickled), "--ip-adapter-image", str(image)], "a pickle that can run code"),
        (["--ip-adapter", str(adapter), "--ip-adapter-image", str(garbage)],
         "Cannot read IP-Adapter image", "not an image file"),
        (["--ip-adapter", str(adapter), "--ip-adapter-image", str(transparent)],
         "The IP-Adapter image has transparency"),
        (["--ip-adapter", str(lora), "--ip-adapter-image", str(image)], "holds no IP-Adapter weights"),
        (["--ip-adapter", f"{adapter}:20", "--ip-adapter-image", str(image)],
         "The scale of --ip-adapter", "must be from -10 to 10, got 20"),
        (["--ip-adapter", str(lonely), "--ip-adapter-image", str(image)],
         "has no image_encoder/ folder beside it: give --ip-adapter-image-encoder"),
        ([*both, "--ip-adapter-image-encoder", str(pickled_encoder)], "holds no .safetensors weights",
         "pytorch_model.bin"),
        ([*both, "--ip-adapter-image-encoder", "someone/no-such-encoder"],
         "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
        (["--ip-adapter", "someone/no-such-adapter", "--ip-adapter-image", str(image)],
         "is a hub id: name its file with --ip-adapter-weight-name"),
        (["--ip-adapter", "someone/no-such-adapter", "--ip-adapter-weight-name", "models/a.safetensors",
          "--ip-adapter-image", str(image)], "is not in the local Hugging Face cache"),
        ([*both, "--ip-adapter-weight-name", "../ip-adapter.safetensors"], "must be a file name, or a path within"),
    ]


def test_bad_inputs_are_one_sentence_before_any_model_loads(sd_folder, adapter, image, tmp_path, monkeypatch,
                                                            capsys):
    from panosync import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    for options, *words in _bad_inputs(tmp_path, adapter, image):
        code = main(["generate", "a", "--model", str(sd_folder), *CANVAS, "--out", str(tmp_path / "x.png"),
                     *options])
        one_sentence(capsys, code, *words)
        assert not (tmp_path / "x.png").exists()


def test_an_ip_adapter_of_another_model_is_one_sentence(sd_folder, image, tmp_path, capsys):
    """An adapter of a wider model (other channels, another text width): diffusers refuses its shapes."""
    from panosync.tiny import tiny_random_components

    wider = tiny_random_components(window=8, vae_factor=2, unet_channels=(64, 128), text_width=48)["unet"]
    save_random_ip_adapter(wider, tmp_path / "wider")
    capsys.readouterr()
    code = main(["generate", "a", "--model", str(sd_folder), *CANVAS, "--out", str(tmp_path / "x.png"),
                 "--ip-adapter", str(tmp_path / "wider"), "--ip-adapter-image", str(image)])
    one_sentence(capsys, code, "is an IP-Adapter for another model: its layers do not fit")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------ the command


@pytest.mark.slow
def test_generate_records_the_ip_adapter_and_from_png_remakes_it_until_a_file_changes(tmp_path, capsys):
    """The bundled tiny-random, as `--model tiny-random` takes it (one 512-pixel window, one step)."""
    from panosync.models import load_pipeline, resolve_model

    folder = tmp_path / "adapter"
    save_random_ip_adapter(load_pipeline(resolve_model("tiny-random")).unet, folder, seed=1)
    image = random_png(tmp_path / "prompt.png")
    options = ["generate", "a", "--model", "tiny-random", "--width", "512", "--height", "512", "--steps", "1",
               "--seed", "1", "--quiet"]
    plain, prompted, again = tmp_path / "plain.png", tmp_path / "prompted.png", tmp_path / "again.png"
    assert main([*options, "--out", str(plain)]) == 0
    assert main([*options, "--out", str(prompted), "--ip-adapter", f"{folder}:0.7", "--ip-adapter-image",
                 str(image)]) == 0
    stored = read_parameters(prompted)
    assert stored["ip_adapter"] == {"source": str(folder), "weight_name": "ip-adapter.safetensors", "scale": 0.7,
                                    "sha256": sha256(folder / "ip-adapter.safetensors"), "image_encoder": None}
    assert stored["ip_adapter_image"] == {"path": str(image), "sha256": sha256(image)}
    assert "ip_adapter" not in read_parameters(plain)
    assert not np.array_equal(pixels(plain), pixels(prompted))
    assert main(["generate", "--from-png", str(prompted), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(pixels(prompted), pixels(again)) and read_parameters(again) == stored
    # the image prompt changed after the fact: the picture would differ, and the command says so
    random_png(image, seed=9)
    capsys.readouterr()
    code = main(["generate", "--from-png", str(prompted), "--out", str(tmp_path / "changed.png"), "--quiet"])
    one_sentence(capsys, code, f"The IP-Adapter image {image} has changed since the PNG was made (its SHA-256 "
                               f"differs)", "--ip-adapter-image")
    image.unlink()
    code = main(["generate", "--from-png", str(prompted), "--out", str(tmp_path / "gone.png"), "--quiet"])
    one_sentence(capsys, code, "The IP-Adapter image the PNG was made with cannot be loaded again",
                 "give --ip-adapter-image")


def test_from_png_refuses_a_changed_or_missing_file_before_any_model_loads(sd_folder, adapter, tmp_path,
                                                                           monkeypatch, capsys):
    """A PNG's record (written here as generate writes it) names files that changed since."""
    from panosync import models
    from panosync.metadata import save_png

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    image = random_png(tmp_path / "prompt.png")
    copy = tmp_path / "copy"
    weights = (adapter / "ip-adapter.safetensors").read_bytes()
    (copy / "image_encoder").mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (copy / "image_encoder" / name).write_bytes((adapter / "image_encoder" / name).read_bytes())
    (copy / "ip-adapter.safetensors").write_bytes(weights)
    adapter_spec, image_spec = ip_adapter_of_options(str(copy), image=str(image))
    png = tmp_path / "made.png"
    save_png(PIL.Image.new("RGB", (64, 32)), png, {"prompt": "a", "model": str(sd_folder), "seed": 3, "width": 64,
                                                   "height": 32, "stride": 8, "num_inference_steps": 2,
                                                   **ip_adapter_metadata(adapter_spec, image_spec)})
    out = ["--out", str(tmp_path / "x.png"), "--quiet"]
    # unchanged, the PNG's adapter and image are found again (here the model load is where it stops)
    assert ip_adapter_of_options(None, stored=read_parameters(png)) == (adapter_spec, image_spec)
    random_png(image, seed=5)
    one_sentence(capsys, main(["generate", "--from-png", str(png), *out]),
                 "The IP-Adapter image", "has changed since the PNG was made")
    random_png(image, seed=0)
    (copy / "ip-adapter.safetensors").write_bytes(weights[:-4] + b"\0\0\0\1")
    one_sentence(capsys, main(["generate", "--from-png", str(png), *out]),
                 f"The IP-Adapter {copy} has changed since the PNG was made", "--ip-adapter")
    (copy / "ip-adapter.safetensors").unlink()
    one_sentence(capsys, main(["generate", "--from-png", str(png), *out]),
                 "The IP-Adapter the PNG was made with cannot be loaded again", "give --ip-adapter")


# ------------------------------------------------------------------------------------ batch


@pytest.mark.slow
def test_batch_takes_an_ip_adapter_and_its_image_for_every_panorama(sd_folder, adapter, image, tmp_path, capsys):
    canvas = dict(width=64, height=32, stride=8, num_inference_steps=2, seed=3)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"prompt": "a hill", "name": "hill", **canvas}) + "\n"
                    + json.dumps({"prompt": "a lake", "name": "lake", **canvas}) + "\n")
    out = tmp_path / "out"
    options = ["--ip-adapter", f"{adapter}:0.7", "--ip-adapter-image", str(image)]
    assert main(["batch", str(jobs), "--model", str(sd_folder), "--out", str(out), "--quiet", *options]) == 0
    for name in ("hill", "lake"):
        stored = read_parameters(out / f"{name}.png")
        assert stored["ip_adapter"]["scale"] == 0.7 and stored["ip_adapter_image"]["sha256"] == sha256(image)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ip_adapter"]["sha256"] == sha256(adapter / "ip-adapter.safetensors")
    assert summary["ip_adapter_image"] == {"path": str(image), "sha256": sha256(image)}
    # the batch's picture is generate's with the same image prompt, and not the one without
    made = tmp_path / "made.png"
    assert main(["generate", "a hill", "--model", str(sd_folder), *CANVAS, "--out", str(made), *options]) == 0
    assert np.array_equal(pixels(out / "hill.png"), pixels(made))
    # a rerun without the adapter makes the PNGs again: they were made with it
    capsys.readouterr()
    assert main(["batch", str(jobs), "--model", str(sd_folder), "--out", str(out), "--quiet"]) == 0
    assert "2 made, 0 kept" in capsys.readouterr().out and "ip_adapter" not in read_parameters(out / "hill.png")
    assert not np.array_equal(pixels(out / "hill.png"), pixels(made))
    # the scale reaches the adapter: at 0 the image prompt adds nothing
    off = tmp_path / "off.png"
    assert main(["generate", "a hill", "--model", str(sd_folder), *CANVAS, "--out", str(off), "--ip-adapter",
                 f"{adapter}:0", "--ip-adapter-image", str(image)]) == 0
    assert np.array_equal(pixels(out / "hill.png"), pixels(off)) and read_parameters(off)["ip_adapter"]["scale"] == 0


def test_batch_and_evaluate_check_the_image_prompt_before_loading(sd_folder, adapter, tmp_path, monkeypatch,
                                                                  capsys):
    from panosync import models

    monkeypatch.setattr(models, "load_pipeline", lambda *a, **k: pytest.fail("a model was loaded"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hills\n")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "hills"}\n')
    bad = ["--model", str(sd_folder), "--ip-adapter", str(adapter), "--ip-adapter-image",
           str(tmp_path / "missing.png")]
    for command in (["evaluate", "--prompts", str(prompts), "--seeds", "0-1", "--out", str(tmp_path / "eval")],
                    ["batch", str(jobs), "--out", str(tmp_path / "out")]):
        one_sentence(capsys, main([*command, *bad]), "No such IP-Adapter image")
    assert not (tmp_path / "eval").exists() and not (tmp_path / "out").exists()
