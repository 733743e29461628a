"""Issue 27's evaluate and input items: hostile files and values give one sentence or the right result."""

import argparse
import io

import numpy as np
import PIL.Image
import pytest

from panosync import settings
from panosync.cli import main, output_path
from panosync.conditions import read_condition_image
from panosync.eval.command import read_prompts
from panosync.eval.measure import FeatureCache, read_cache_entry
from panosync.eval.plan import Plan, PlannedImage, images_to_make
from panosync.eval.report import comparison, markdown
from panosync.metadata import save_png
from panosync.vocabulary import vocabulary_warning


def test_prompts_that_are_binary_or_a_folder_are_one_sentence(tmp_path):
    binary = tmp_path / "prompts.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ValueError, match=r"prompts.bin is not UTF-8 text \(byte 0"):
        read_prompts(binary)
    with pytest.raises(ValueError, match="is a folder: give a text file"):
        read_prompts(tmp_path)


def entry(tmp_path, **arrays):
    path = tmp_path / "cache.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    return path


def test_a_damaged_cache_entry_is_recomputed_never_unpickled(tmp_path, monkeypatch, capsys):
    key, features = np.array([1, 2, 3], dtype=np.int64), np.zeros((2, 2048), np.float32)
    assert read_cache_entry(entry(tmp_path, key=key, features=features), 2) is not None
    assert read_cache_entry(entry(tmp_path, other=key), 2) is None  # other keys
    assert read_cache_entry(entry(tmp_path, key=key, features=np.array([{}], dtype=object)), 2) is None  # a pickle
    whole = entry(tmp_path, key=key, features=features).read_bytes()
    (tmp_path / "cache.npz").write_bytes(whole[: len(whole) // 2])  # truncated
    assert read_cache_entry(tmp_path / "cache.npz", 2) is None

    import torch

    from panosync.eval import fidelity, inception

    monkeypatch.setattr(inception, "load_inception", lambda device=None: "network")
    monkeypatch.setattr(fidelity, "inception_features", lambda images, network: torch.ones(len(images), 2048))
    out = tmp_path / "eval"
    picture = out / "references" / "000-seed0.png"
    picture.parent.mkdir(parents=True)
    picture.write_bytes(b"png")
    cache = out / "cache" / "inception" / "references" / "000-seed0.npz"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(whole[:100])
    assert FeatureCache(out, "cpu")(picture, [None, None], 32).shape == (2, 2048)
    assert "is damaged; it is removed" in capsys.readouterr().err and "allow_pickle" not in capsys.readouterr().err
    assert read_cache_entry(cache, 2) is not None  # made again
    cache.unlink()
    cache.mkdir()
    with pytest.raises(ValueError, match="is not a file, where the cache"):
        FeatureCache(out, "cpu")(picture, [None, None], 32)


def plan_of(tmp_path, path, width, height):
    parameters = {"prompt": "p", "seed": 0, "width": width, "height": height, "model": "m"}
    plan = Plan("m", None, ["p"], [0], {}, {}, tmp_path, argparse.Namespace())
    plan.images = [PlannedImage(path, None, "p", 0, parameters)]
    return plan


def test_a_kept_image_of_another_size_or_other_pixels_is_made_again(tmp_path, capsys):
    path = tmp_path / "references" / "000-seed0.png"
    path.parent.mkdir()
    plan = plan_of(tmp_path, path, 64, 64)
    save_png(PIL.Image.new("RGB", (64, 64), "green"), path, plan.images[0].parameters)
    assert images_to_make(plan) == []
    # re-saved at 32x32 with its metadata
    with PIL.Image.open(path) as picture:
        info = PIL.PngImagePlugin.PngInfo()
        for key, value in picture.info.items():
            if isinstance(value, str):
                info.add_text(key, value)
        picture.resize((32, 32)).save(path, pnginfo=info)
    assert images_to_make(plan) == plan.images
    assert "is 32x32 pixels, not the 64x64 its parameters make: it is made again" in capsys.readouterr().err
    # the same size, other pixels
    PIL.Image.new("RGB", (64, 64), "red").save(path, pnginfo=info)
    assert images_to_make(plan) == plan.images
    assert "holds other pixels than panosync wrote" in capsys.readouterr().err


def test_a_folder_where_a_reference_goes_is_one_sentence(tmp_path):
    path = tmp_path / "references" / "000-seed0.png"
    path.mkdir(parents=True)
    with pytest.raises(ValueError, match="is not a file, where a reference image goes: remove it"):
        images_to_make(plan_of(tmp_path, path, 64, 64))


def test_fid_and_kid_on_few_images_get_a_warning_and_no_verdict():
    from test_eval import constructed_results

    results = constructed_results()
    lines = "\n".join(comparison(results))
    fid_line = next(line for line in lines.splitlines() if line.startswith("| FID |"))
    kid_line = next(line for line in lines.splitlines() if line.startswith("| KID |"))
    for line in (fid_line, kid_line):
        measured_and_verdict = "|".join(line.split("|")[3:])  # the paper's claim says "not materially worse"
        assert "better" not in measured_and_verdict and "worse" not in measured_and_verdict, line
        assert "no verdict" in measured_and_verdict, line
    assert "**Warning:** FID and KID on too few images, 2 references" in markdown(results)
    results["references"]["count"] = 60
    for method in results["methods"]:
        method["crops"] = 60
    assert "no verdict" not in "\n".join(comparison(results)) and "**Warning:**" not in markdown(results)


def jpeg(image, **options):
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def test_a_condition_is_turned_by_its_exif_orientation_and_an_animated_one_refused():
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to show
    data = jpeg(PIL.Image.new("RGB", (64, 16), "white"), exif=exif.tobytes())
    assert read_condition_image(data, "photo.jpg").size == (16, 64)
    buffer = io.BytesIO()
    frames = [PIL.Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match=r"The condition image moving.gif is animated \(3 frames\): give one still"):
        read_condition_image(buffer.getvalue(), "moving.gif")


def test_long_names_and_values_are_cut_short_in_settings_sentences():
    huge = "x" * 1_000_000
    for call in (lambda: settings.fast_modes([huge, huge + "y"]), lambda: settings.check({"sync_decoder": huge}),
                 lambda: settings.check({"guidance_scale": 10.0 ** 300 * 10 ** 5}),
                 lambda: settings.fast_modes(huge)):
        with pytest.raises(ValueError) as refused:
            call()
        assert len(str(refused.value)) < 400, str(refused.value)[:300]
    assert settings.cut(huge).endswith("… (1,000,000 characters)") and len(settings.cut(huge)) < 120
    assert settings.listed(["a"] * 9) == "a, a, a, a, a and 4 more"


def test_out_with_an_extension_of_no_format_panosync_writes_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"--out .*x.tiff: panosync writes .png, .jpg, .jpeg, .webp files .* name "
                                         r"it x.png"):
        output_path(argparse.Namespace(out=str(tmp_path / "x.tiff"), quality=None), {"seed": 1})
    for name in ("x.PNG", "x.jpeg", "x.WebP"):
        assert output_path(argparse.Namespace(out=str(tmp_path / name), quality=None), {"seed": 1}).endswith(name)
    assert main(["generate", "a landscape", "--model", "tiny-random", "--out", str(tmp_path / "x.gif")]) == 2
    error = capsys.readouterr().err
    assert "writes .png, .jpg, .jpeg, .webp files" in error and error.count("\n") == 1


def test_pocket_warns_of_the_words_it_does_not_know():
    from panosync.models import resolve_model

    pocket = resolve_model("pocket")
    warning = vocabulary_warning(pocket, "a city street at night", "pocket")
    assert warning.startswith("pocket does not know the words: city, street (it knows: at, by, day, desert")
    assert vocabulary_warning(pocket, "snowy mountains at sunset", "pocket") is None
    assert vocabulary_warning(resolve_model("tiny-random"), "a city street", "tiny-random") is None


def test_an_image_whose_header_claims_billions_of_pixels_is_our_sentence():
    """The probe's 100000×100000 PNG header: Pillow's "decompression bomb DOS attack.." becomes one
    sentence of ours."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(ValueError, match=r"^Cannot read condition image huge.png: its header claims more pixels "
                                         r"than any image panosync reads .*: give a smaller image\.$"):
        read_condition_image(data, "huge.png")


@pytest.mark.slow
def test_a_pngs_stored_parameters_are_as_strictly_typed_as_recommended_json(tmp_path, capsys):
    """The probe's PNG whose fast_modes is the text "reuse_noise": refused in one sentence, not run."""
    from panosync.metadata import read_parameters

    made = tmp_path / "made.png"
    assert main(["generate", "a hill", "--model", "tiny-random", "--width", "512", "--steps", "1", "--quiet",
                 "--out", str(made)]) == 0
    parameters = read_parameters(made)
    save_png(PIL.Image.open(made).convert("RGB"), tmp_path / "edited.png", {**parameters, "fast_modes": "reuse_noise"})
    capsys.readouterr()
    code = main(["generate", "--from-png", str(tmp_path / "edited.png"), "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "The file's metadata: fast_modes must be a list" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_a_condition_that_is_a_device_fifo_or_folder_says_what_it_is(tmp_path):
    """The probe's /dev/zero as a condition was "No such condition image": it exists, and is a device."""
    import os

    from panosync.conditions import load_condition_image

    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    for path, kind in (("/dev/zero", "a device"), (fifo, "a FIFO"), (tmp_path, "a folder")):
        with pytest.raises(ValueError, match=f"^The condition image {path} is {kind}, not an image file\\.$"):
            load_condition_image(path)
    with pytest.raises(ValueError, match="^No such condition image: "):
        load_condition_image(tmp_path / "missing.png")
