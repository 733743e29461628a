"""`panosync batch` with image inputs, on the bundled pocket model: a line's `image` and `mask_image`
are files (a relative path from the jobs file's folder), read, checked and hashed with the lines
before any model loads; the PNG records each by path and SHA-256 as `panosync generate` does (and
makes the same panorama again with --from-png); a bad image input is one sentence naming its line;
a changed picture makes its job again on a rerun; the Ray workers get the pictures too."""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from panosync.batch.jobs import read_jobs
from panosync.batch.run import run_batch
from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.models import resolve_model
from panosync.runner import LocalEngine, ModelSpec

# pocket: 64-pixel windows, VAE factor 4; three steps without the sync gradient: a fraction of a second a panorama
STEPS = dict(num_inference_steps=3, sync_weight=0)


def write_jobs(path: Path, *jobs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((job if isinstance(job, str) else json.dumps(job)) + "\n" for job in jobs))
    return path


def batch(jobs_file, out, *options):
    return main(["batch", str(jobs_file), "--model", "pocket", "--out", str(out), "--quiet", *options])


def picture(width=128, height=64, seed=0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def mask(width=128, height=64, left=64) -> PIL.Image.Image:
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[:, left:] = 255
    return PIL.Image.fromarray(pixels)


def pixels(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image)


def record(path: Path) -> dict:
    return {"path": os.path.abspath(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


@pytest.fixture
def pictures(tmp_path):
    """A folder of jobs and their pictures, the jobs naming them relative to it."""
    folder = tmp_path / "project"
    (folder / "pictures").mkdir(parents=True)
    picture().save(folder / "pictures" / "valley.png")
    picture(64, 64, seed=1).save(folder / "pictures" / "small.png")
    mask().save(folder / "pictures" / "sky.png")
    return folder


def test_image_lines_make_pngs_that_record_their_files(pictures, tmp_path, monkeypatch, capsys):
    jobs = write_jobs(pictures / "jobs.jsonl",
                      {"prompt": "a valley in autumn", "seed": 1, "name": "img2img", "image": "pictures/valley.png",
                       "strength": 0.7, **STEPS, "sync_weight": 20},  # one synced
                      {"prompt": "a valley", "seed": 2, "name": "inpainted", "image": "pictures/valley.png",
                       "mask_image": "pictures/sky.png", **STEPS},
                      {"prompt": "a wide valley", "seed": 3, "name": "extended", "image": "pictures/small.png",
                       "width": 192, "image_at": [128, 0], **STEPS},
                      {"prompt": "hills", "seed": 4, "name": "plain", "width": 128, **STEPS})
    monkeypatch.chdir(tmp_path)  # elsewhere: the paths are the jobs file's folder's
    out = tmp_path / "out"
    assert batch(Path("project") / "jobs.jsonl", out) == 0
    assert "4 made, 0 kept, 0 failed" in capsys.readouterr().out
    valley, sky = pictures / "pictures" / "valley.png", pictures / "pictures" / "sky.png"
    made = {name: read_parameters(out / f"{name}.png") for name in ("img2img", "inpainted", "extended", "plain")}
    assert made["img2img"]["image"] == record(valley) and made["img2img"]["mask_image"] is None
    assert made["img2img"]["strength"] == 0.7 and (made["img2img"]["width"], made["img2img"]["height"]) == (128, 64)
    assert made["inpainted"]["mask_image"] == record(sky) and made["inpainted"]["strength"] is None
    assert made["extended"]["image"] == record(pictures / "pictures" / "small.png")
    assert (made["extended"]["width"], made["extended"]["height"], made["extended"]["image_at"]) == (192, 64, [128, 0])
    # kept whole (but for the feather, the VAE factor's 4 pixels, where it meets the panorama)
    assert np.array_equal(pixels(out / "extended.png")[:, 132:], np.asarray(picture(64, 64, seed=1))[:, 4:])
    # a line without one records none, as the command does
    assert (made["plain"]["image"], made["plain"]["strength"], made["plain"]["resize_image"]) == (None, None, False)

    # the panorama `panosync generate` makes, which finds the pictures again from the PNG
    assert main(["generate", "--from-png", str(out / "inpainted.png"), "--out", "again.png", "--quiet"]) == 0
    assert np.array_equal(pixels("again.png"), pixels(out / "inpainted.png"))


BAD_IMAGE_LINES = [
    ({"image": "pictures/missing.png"}, "line 2: No such image: "),
    ({"image": 5}, "line 2: image must name an image file (a path; a relative one is read from the jobs file's "
                   "folder), got 5."),
    ({"image": "jobs.jsonl"}, "line 2: Cannot read image "),
    ({"image": "pictures/clear.png"}, "line 2: The image has transparency (mode RGBA)"),
    ({"image": "pictures/valley.png", "mask_image": "pictures/valley.png"}, "line 2: The mask has colours"),
    ({"image": "pictures/valley.png", "mask_image": "pictures/black.png"}, "line 2: The mask is all black"),
    ({"image": "pictures/valley.png", "mask_image": "pictures/small-mask.png"},
     "line 2: The mask is 64x64 pixels but the image is 128x64: give a mask of the image's size."),
    ({"mask_image": "pictures/sky.png"}, "line 2: mask_image says which of an image's pixels are repainted: give "
                                         "image too."),
    ({"image": "pictures/valley.png", "width": 64}, "line 2: The image is 128x64 pixels, larger than the 64x64 "
                                                    "canvas"),
    ({"image": "pictures/small.png", "width": 128, "image_at": [100, 0]},
     "line 2: An image of 64x64 pixels at 100,0 runs past the 128x64 canvas: place it at most at 64,0."),
    ({"image": "pictures/valley.png", "image_at": [1]}, "line 2: image_at must be two whole numbers X,Y"),
    ({"image": "pictures/valley.png", "strength": 0}, "line 2: strength must be more than 0 and at most 1, got 0."),
    ({"image": "pictures/valley.png", "strength": 0.2}, "line 2: strength 0.2 runs no step of 3"),
    ({"image": "pictures/odd.png"}, "line 2: width must be a multiple of 4 pixels (the VAE factor), got 130."),
]


@pytest.mark.parametrize("fields, words", BAD_IMAGE_LINES, ids=[words[8:40] for _, words in BAD_IMAGE_LINES])
def test_a_bad_image_line_is_one_sentence_naming_it_and_nothing_runs(pictures, tmp_path, capsys, monkeypatch,
                                                                     fields, words):
    from panosync.runner import local

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the lines were checked")

    monkeypatch.setattr(local, "PanoramaMaker", no_loading)
    PIL.Image.new("RGBA", (128, 64)).save(pictures / "pictures" / "clear.png")
    PIL.Image.new("L", (128, 64)).save(pictures / "pictures" / "black.png")
    mask(64, 64, 32).save(pictures / "pictures" / "small-mask.png")
    picture(130, 64).save(pictures / "pictures" / "odd.png")
    jobs = write_jobs(pictures / "jobs.jsonl", {"prompt": "hills", "width": 128, **STEPS},
                      {"prompt": "a valley", **STEPS, **fields})
    assert batch(jobs, tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("panosync: error: ") and "\n" not in error
    assert words in error, error
    assert not (tmp_path / "out").exists()  # not even line 1 was made


def test_a_changed_image_file_makes_its_job_again_on_resume(pictures, tmp_path, capsys):
    jobs = write_jobs(pictures / "jobs.jsonl",
                      {"prompt": "a valley", "name": "repainted", "image": "pictures/valley.png",
                       "mask_image": "pictures/sky.png", **STEPS},
                      {"prompt": "a valley", "seed": 5, "name": "other", "image": "pictures/small.png", **STEPS})
    out = tmp_path / "out"
    assert batch(jobs, out) == 0
    first = pixels(out / "repainted.png")
    assert batch(jobs, out) == 0
    assert "0 made, 2 kept" in capsys.readouterr().out  # unchanged: kept
    picture(seed=9).save(pictures / "pictures" / "valley.png")  # the same name, another picture
    assert batch(jobs, out) == 0
    captured = capsys.readouterr()
    assert "1 made, 1 kept" in captured.out
    assert "making again 1 PNG made before with other parameters" in captured.err and "repainted.png" in captured.err
    assert read_parameters(out / "repainted.png")["image"] == record(pictures / "pictures" / "valley.png")
    assert not np.array_equal(pixels(out / "repainted.png"), first)
    mask(left=32).save(pictures / "pictures" / "sky.png")  # a changed mask too
    assert batch(jobs, out) == 0
    assert "1 made, 1 kept" in capsys.readouterr().out


def test_before_the_canvas_is_known_a_mask_is_checked_and_the_placement_once_the_model_loads(pictures, tmp_path):
    """A model whose configs cannot be read before it loads (a hub id not in the cache) leaves a
    resized image's canvas unknown: the mask is checked with the lines all the same, the placement
    once the model has loaded, before any panorama is made."""
    unknown = dataclasses.replace(resolve_model("pocket"), geometry=None)
    PIL.Image.new("L", (128, 64)).save(pictures / "pictures" / "black.png")
    black = write_jobs(pictures / "black.jsonl", {"prompt": "a", "image": "pictures/valley.png",
                                                  "mask_image": "pictures/black.png", "resize_image": True})
    with pytest.raises(ValueError, match="black.jsonl line 1: The mask is all black"):
        read_jobs(black, {"model": "pocket"}, unknown)
    past = write_jobs(pictures / "past.jsonl", {"prompt": "a", "image": "pictures/small.png", "resize_image": True,
                                                "image_at": [250, 0], **STEPS})
    jobs = read_jobs(past, {"model": "pocket"}, unknown)
    assert jobs[0].parameters["width"] is None
    with pytest.raises(ValueError, match=r"past.jsonl line 1: An image of 64x64 pixels at 250,0 runs past the "
                                         r"256x64 canvas"):
        run_batch(jobs, tmp_path / "out", lambda on_step: LocalEngine(ModelSpec("pocket"), on_step), past,
                  {"kind": "local"}, quiet=True)
    assert not (tmp_path / "out" / "line-1.png").exists()


def test_a_png_made_before_panosync_took_images_is_kept(tmp_path, capsys):
    """Its metadata has none of the image inputs' keys: it was made with none, as a line without them asks."""
    from panosync.metadata import save_png
    from panosync.settings import IMAGE_NAMES

    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "hills", "seed": 7, "name": "old", "width": 128, **STEPS})
    assert batch(jobs, tmp_path / "out") == 0
    png = tmp_path / "out" / "old.png"
    older = {key: value for key, value in read_parameters(png).items() if key not in IMAGE_NAMES}
    with PIL.Image.open(png) as image:
        save_png(image.copy(), png, older)
    capsys.readouterr()
    assert batch(jobs, tmp_path / "out") == 0
    assert "0 made, 1 kept" in capsys.readouterr().out


def test_a_picture_changed_after_the_lines_were_read_fails_its_job_with_a_sentence(pictures, tmp_path):
    jobs_file = write_jobs(pictures / "jobs.jsonl",
                           {"prompt": "a valley", "name": "changed", "image": "pictures/valley.png", **STEPS},
                           {"prompt": "hills", "name": "fine", "width": 128, **STEPS})
    jobs = read_jobs(jobs_file, {"model": "pocket"}, resolve_model("pocket"))
    picture(seed=3).save(pictures / "pictures" / "valley.png")
    summary = run_batch(jobs, tmp_path / "out", lambda on_step: LocalEngine(ModelSpec("pocket"), on_step), jobs_file,
                        {"kind": "local"}, quiet=True)
    entries = {entry["name"]: entry for entry in summary["jobs"]}
    assert entries["fine"]["status"] == "made" and entries["changed"]["status"] == "failed"
    assert "changed after it was checked (its SHA-256 differs)" in entries["changed"]["error"]


@pytest.mark.slow
@pytest.mark.ray
def test_ray_workers_read_the_pictures_of_the_lines(pictures, tmp_path):
    """The workers get each line's picture and region mask by path and SHA-256 and read them
    themselves: the same PNGs as here. (One job holds both, a Ray batch being the slow part.)"""
    import logging

    ray = pytest.importorskip("ray")
    from panosync.runner.cluster import LOCAL_OBJECT_STORE_BYTES

    jobs = write_jobs(pictures / "jobs.jsonl",
                      {"prompt": "a valley", "seed": 6, "name": "inpainted", "image": "pictures/valley.png",
                       "mask_image": "pictures/sky.png", "regions": [{"mask": "pictures/sky.png", "prompt": "a red sky"}],
                       **STEPS})
    src = str(Path(__file__).parents[1] / "src")
    path = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray worker of one CPU computes (test_ray.py's local_ray says why)
    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    try:
        assert batch(jobs, tmp_path / "here-1", "--threads", "1") == 0
        assert batch(jobs, tmp_path / "ray", "--ray", "local", "--workers", "1", "--threads", "1") == 0
    finally:
        ray.shutdown()
        torch.set_num_threads(threads)
    assert (tmp_path / "ray" / "inpainted.png").read_bytes() == (tmp_path / "here-1" / "inpainted.png").read_bytes()
