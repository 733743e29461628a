"""Images as inputs on the command: `generate --image/--mask/--strength/--image-at/--resize-image`
and `panosync upscale`. The files are checked and hashed before any model loads, the PNG records
them by path and SHA-256, --from-png makes the same panorama again and refuses a changed file; a
bad image or mask is one sentence and exit status 2. Tiny random models (sd_folder: 32-pixel
windows at VAE factor 2)."""

import hashlib

import numpy as np
import PIL.Image
import pytest

from panosync import models
from panosync.cli import main
from panosync.metadata import read_parameters, save_png

CANVAS = ["--stride", "8", "--steps", "2", "--seed", "5", "--quiet"]


def no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded")


def write(tmp_path, name, array, mode=None) -> str:
    path = tmp_path / name
    PIL.Image.fromarray(array, mode).save(path)
    return str(path)


def random_picture(tmp_path, name="photo.png", width=32, height=32, seed=0) -> str:
    rng = np.random.default_rng(seed)
    return write(tmp_path, name, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_extend_a_picture_records_it_and_from_png_makes_it_again(sd_folder, tmp_path, capsys, monkeypatch):
    photo = random_picture(tmp_path)
    out = tmp_path / "extended.png"
    assert main(["generate", "a land", "--model", str(sd_folder), "--image", photo, "--width", "96",
                 "--out", str(out), *CANVAS]) == 0
    made = np.asarray(PIL.Image.open(out))
    assert made.shape == (32, 96, 3)
    # centred, and kept but for the feather at its border (the VAE factor, 2 pixels)
    assert np.array_equal(made[:, 34:62], np.asarray(PIL.Image.open(photo))[:, 2:30])
    parameters = read_parameters(out)
    digest = hashlib.sha256(open(photo, "rb").read()).hexdigest()
    assert parameters["image"] == {"path": photo, "sha256": digest} and parameters["mask_image"] is None
    assert parameters["width"] == 96 and parameters["height"] == 32 and parameters["strength"] is None
    # recorded by its absolute path, so that --from-png finds it from any folder
    (tmp_path / "elsewhere").mkdir()
    relative = tmp_path / "relative.png"
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a land", "--model", str(sd_folder), "--image", "photo.png", "--width", "96",
                 "--out", str(relative), *CANVAS]) == 0
    assert read_parameters(relative)["image"]["path"] == photo
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(again)), made)
    # the picture changed since: the same panorama cannot be made, and it says so
    random_picture(tmp_path, seed=1)
    assert main(["generate", "--from-png", str(out), "--out", str(tmp_path / "third.png"), "--quiet"]) == 2
    assert "has changed since the PNG was made (its SHA-256 differs)" in capsys.readouterr().err


def test_img2img_and_inpainting_on_the_command(sd_folder, tmp_path):
    photo = random_picture(tmp_path, width=64)
    mask = np.zeros((32, 64), np.uint8)
    mask[:, 32:] = 255
    mask_path = write(tmp_path, "mask.png", mask)
    out = tmp_path / "inpainted.png"
    assert main(["generate", "a land", "--model", str(sd_folder), "--image", photo, "--mask", mask_path,
                 "--strength", "0.9", "--out", str(out), *CANVAS]) == 0
    made, source = np.asarray(PIL.Image.open(out)), np.asarray(PIL.Image.open(photo))
    assert made.shape == source.shape  # the canvas is the image's
    assert np.array_equal(made[:, :32], source[:, :32]) and not np.array_equal(made[:, 34:], source[:, 34:])
    assert read_parameters(out)["mask_image"]["path"] == mask_path
    out = tmp_path / "img2img.png"
    assert main(["generate", "a land", "--model", str(sd_folder), "--image", photo, "--strength", "0.5",
                 "--out", str(out), *CANVAS]) == 0
    assert read_parameters(out)["strength"] == 0.5


def test_upscale_doubles_a_panorama_with_its_own_prompt(sd_folder, tmp_path, capsys):
    small = tmp_path / "small.png"
    assert main(["generate", "a land at dusk", "--model", str(sd_folder), "--width", "64", "--height", "32",
                 "--out", str(small), *CANVAS]) == 0
    big = tmp_path / "big.png"
    assert main(["upscale", str(small), "--steps", "5", "--seed", "2", "--stride", "8", "--out", str(big),
                 "--quiet"]) == 0
    parameters = read_parameters(big)
    assert PIL.Image.open(big).size == (128, 64)
    assert parameters["prompt"] == "a land at dusk" and parameters["model"] == str(sd_folder)
    assert parameters["resize_image"] is True and parameters["strength"] == 0.2
    # a picture panosync did not make needs a prompt
    plain = random_picture(tmp_path, "plain.png")
    assert main(["upscale", plain, "--model", str(sd_folder), "--quiet"]) == 2
    assert "Give --prompt" in capsys.readouterr().err


def transparent(tmp_path):
    return write(tmp_path, "clear.png", np.zeros((32, 32, 4), np.uint8), "RGBA")


def coloured_mask(tmp_path):
    mask = np.zeros((32, 32, 3), np.uint8)
    mask[..., 0] = 255
    return write(tmp_path, "red.png", mask)


BAD = [
    (lambda p: ["--image", str(p / "missing.png")], "No such image"),
    (lambda p: ["--image", str(p)], "is a folder, not an image file"),
    (lambda p: ["--image", write_bytes(p, "broken.png", b"\x89PNG\r\n\x1a\nbroken")], "Cannot read image"),
    (lambda p: ["--image", transparent(p)], "The image has transparency"),
    (lambda p: ["--image", random_picture(p), "--mask", coloured_mask(p)], "The mask has colours"),
    (lambda p: ["--image", random_picture(p), "--mask", write(p, "black.png", np.zeros((32, 32), np.uint8))],
     "The mask is all black"),
    (lambda p: ["--image", random_picture(p), "--mask", write(p, "small.png", np.full((16, 16), 255, np.uint8))],
     "give a mask of the image's size"),
    (lambda p: ["--mask", write(p, "white.png", np.full((32, 32), 255, np.uint8))], "give --image too"),
    (lambda p: ["--image", random_picture(p, width=64), "--width", "32"], "larger than the 32x32 canvas"),
    (lambda p: ["--image", random_picture(p), "--width", "64", "--image-at", "40,0"], "runs past the 64x32 canvas"),
    (lambda p: ["--image", random_picture(p), "--image-at", "1"], "--image-at must be two whole numbers"),
    (lambda p: ["--image", random_picture(p), "--strength", "0"], "strength must be more than 0 and at most 1"),
    (lambda p: ["--image", random_picture(p, width=33)], "The image is 33x32 pixels, and the canvas takes its width"),
    (lambda p: ["--strength", "0.5"], "strength is an image input's setting: give image (--image) too"),
    (lambda p: ["--resize-image"], "resize_image is an image input's setting"),
    (lambda p: ["--image", random_picture(p), "--strength", "0.1", "--steps", "5"], "strength 0.1 runs no step"),
]


def write_bytes(tmp_path, name, data) -> str:
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


@pytest.mark.parametrize("options, message", BAD)
def test_a_bad_image_or_mask_is_one_sentence_before_the_model_loads(sd_folder, tmp_path, monkeypatch, capsys,
                                                                     options, message):
    monkeypatch.setattr(models, "load_pipeline", no_loading)
    try:
        code = main(["generate", "a", "--model", str(sd_folder), "--quiet", *options(tmp_path)])
    except SystemExit as exit:  # argparse's: an option's value of the wrong form
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_a_tampered_image_record_is_one_sentence(sd_folder, tmp_path, capsys):
    out = tmp_path / "tampered.png"
    save_png(PIL.Image.new("RGB", (32, 32)), out, {"prompt": "a", "model": str(sd_folder), "image": "photo.png"})
    assert main(["generate", "--from-png", str(out), "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
    assert "record of its image is not an object with path and sha256" in capsys.readouterr().err
