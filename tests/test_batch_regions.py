"""`panosync batch` with region prompts, on the bundled pocket model: a line's `regions` are boxes and
masks, a mask an image file (a relative path from the jobs file's folder) read, checked and hashed
with the lines before any model loads; every region is checked on the canvas then (once the model
has loaded, for a model whose geometry is known only then); the PNG records the regions as
`panosync generate` does, and is the panorama generate makes; a changed mask makes its job again on
a rerun; a bad region is one sentence naming its line. (The Ray workers reading the masks: test_batch_image.py.)"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from panosync.batch.jobs import read_jobs
from panosync.batch.run import run_batch
from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.models import resolve_model
from panosync.runner import LocalEngine, ModelSpec

from test_batch_image import STEPS, batch, mask, pixels, record, write_jobs

REGIONS = [{"box": [0, 0, 48, 64], "prompt": "a sea"}, {"mask": "masks/city.png", "prompt": "a city", "weight": 2}]
CITY_FROM = 80  # the column the city's mask is white from


@pytest.fixture
def project(tmp_path):
    """A folder of jobs and their masks, the jobs naming them relative to it."""
    folder = tmp_path / "project"
    (folder / "masks").mkdir(parents=True)
    mask(left=CITY_FROM).save(folder / "masks" / "city.png")
    return folder


def test_a_line_with_regions_makes_the_png_generate_makes(project, tmp_path, monkeypatch, capsys):
    jobs = write_jobs(project / "jobs.jsonl",
                      {"prompt": "a valley", "seed": 1, "name": "regions", "width": 128, "regions": REGIONS, **STEPS},
                      {"prompt": "a valley", "seed": 1, "name": "plain", "width": 128, **STEPS})
    monkeypatch.chdir(tmp_path)  # elsewhere: the paths are the jobs file's folder's
    out = tmp_path / "out"
    assert batch(Path("project") / "jobs.jsonl", out) == 0
    city = project / "masks" / "city.png"
    made = read_parameters(out / "regions.png")
    assert made["regions"] == [{"box": [0, 0, 48, 64], "prompt": "a sea", "weight": 1.0},
                               {"mask": record(city), "prompt": "a city", "weight": 2}]
    assert read_parameters(out / "plain.png")["regions"] is None
    assert not np.array_equal(pixels(out / "regions.png"), pixels(out / "plain.png"))

    # the command's regions make the same panorama, and record them alike
    assert main(["generate", "a valley", "--model", "pocket", "--width", "128", "--seed", "1", "--steps", "3",
                 "--sync-weight", "0", "--region", "0,0,48,64=a sea", "--region-mask", f"{city}=a city:2",
                 "--out", "generated.png", "--quiet"]) == 0
    assert np.array_equal(pixels("generated.png"), pixels(out / "regions.png"))
    assert read_parameters("generated.png")["regions"] == made["regions"]
    # and generate --from-png finds the mask again from the batch's PNG
    assert main(["generate", "--from-png", str(out / "regions.png"), "--out", "again.png", "--quiet"]) == 0
    assert np.array_equal(pixels("again.png"), pixels(out / "regions.png"))

    # a rerun keeps it; a changed mask makes it again
    capsys.readouterr()
    assert batch(Path("project") / "jobs.jsonl", out) == 0
    assert "0 made, 2 kept" in capsys.readouterr().out
    mask(left=64).save(city)
    assert batch(Path("project") / "jobs.jsonl", out) == 0
    captured = capsys.readouterr()
    assert "1 made, 1 kept" in captured.out and "regions.png" in captured.err
    assert read_parameters(out / "regions.png")["regions"][1]["mask"] == record(city)


BAD_REGION_LINES = [
    ([{"box": [0, 0, 200, 64], "prompt": "a sea"}], "line 2: Region 1's box 0,0,200,64 reaches outside the 128×64 "
                                                     "canvas: keep it within 0,0,128,64."),
    ([{"box": [0, 0, 8, 8], "prompt": "a"}, {"box": [8, 0, 8, 64], "prompt": "a sea"}],
     "line 2: Region 2's box 8,0,8,64 is empty"),
    ([{"mask": "masks/missing.png", "prompt": "a city"}], "line 2: No such region mask: "),
    ([{"mask": 5, "prompt": "a city"}], "line 2: Region 1's mask must name an image file (a path; a relative one is "
                                        "read from the jobs file's folder), got 5."),
    ([{"mask": "masks/small.png", "prompt": "a city"}], "line 2: Region 1's mask is 64×64 pixels: it must be the "
                                                         "canvas's size, 128×64."),
    ([{"mask": "masks/black.png", "prompt": "a city"}], "line 2: Region 1: The mask is all black"),
    ([{"box": [0, 0, 128, 64], "prompt": "a sea", "weight": 0}], "line 2: The regions' weights add up to 0"),
    ([{"box": [0, 0, 8, 8], "prompt": "a sea", "weight": "heavy"}], "line 2: Region 1's weight must be a number"),
    ("a sea", "line 2: regions must be a list, got 'a sea'."),
    (["a sea"], "line 2: Region 1 must be a dict with box or mask, and prompt"),
    ([{"box": [0, 0, 8, 8]}], "line 2: Region 1 has no prompt"),
    ([{"box": [0, 0, 8, 8], "prompt": "a", "colour": "red"}], "line 2: Region 1 has unknown keys colour"),
    ([{"prompt": "a sea"}], "line 2: Region 1 needs a box or a mask"),
]


@pytest.mark.parametrize("regions, words", BAD_REGION_LINES, ids=[words[8:40] for _, words in BAD_REGION_LINES])
def test_a_bad_region_line_is_one_sentence_naming_it_and_nothing_runs(project, tmp_path, capsys, monkeypatch,
                                                                      regions, words):
    from panosync.runner import local

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the lines were checked")

    monkeypatch.setattr(local, "PanoramaMaker", no_loading)
    mask(64, 64, 32).save(project / "masks" / "small.png")
    mask(left=128).save(project / "masks" / "black.png")
    jobs = write_jobs(project / "jobs.jsonl", {"prompt": "hills", "width": 128, **STEPS},
                      {"prompt": "a valley", "width": 128, "regions": regions, **STEPS})
    assert batch(jobs, tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("panosync: error: ") and "\n" not in error
    assert words in error, error
    assert not (tmp_path / "out").exists()  # not even line 1 was made


def test_before_the_canvas_is_known_the_regions_are_checked_once_the_model_loads(project, tmp_path):
    """A model whose configs cannot be read before it loads (a hub id not in the cache) leaves the
    canvas unknown: the masks are read with the lines all the same, the regions checked on the
    canvas once the model has loaded, before any panorama is made."""
    unknown = dataclasses.replace(resolve_model("pocket"), geometry=None)
    missing = write_jobs(project / "missing.jsonl", {"prompt": "a", "regions": [{"mask": "masks/gone.png",
                                                                                 "prompt": "a city"}]})
    with pytest.raises(ValueError, match="missing.jsonl line 1: No such region mask"):
        read_jobs(missing, {"model": "pocket"}, unknown)
    outside = write_jobs(project / "outside.jsonl", {"prompt": "a", "regions": [{"box": [0, 0, 300, 64],
                                                                                 "prompt": "a sea"}], **STEPS})
    jobs = read_jobs(outside, {"model": "pocket"}, unknown)
    assert jobs[0].parameters["width"] is None
    with pytest.raises(ValueError, match=r"outside.jsonl line 1: Region 1's box 0,0,300,64 reaches outside the "
                                         r"256×64 canvas"):
        run_batch(jobs, tmp_path / "out", lambda on_step: LocalEngine(ModelSpec("pocket"), on_step), outside,
                  {"kind": "local"}, quiet=True)
    assert not (tmp_path / "out" / "line-1.png").exists()


def test_a_mask_changed_after_the_lines_were_read_fails_its_job_with_a_sentence(project, tmp_path):
    jobs_file = write_jobs(project / "jobs.jsonl",
                           {"prompt": "a valley", "name": "changed", "width": 128, "regions": REGIONS, **STEPS},
                           {"prompt": "hills", "name": "fine", "width": 128, **STEPS})
    jobs = read_jobs(jobs_file, {"model": "pocket"}, resolve_model("pocket"))
    mask(left=40).save(project / "masks" / "city.png")
    summary = run_batch(jobs, tmp_path / "out", lambda on_step: LocalEngine(ModelSpec("pocket"), on_step), jobs_file,
                        {"kind": "local"}, quiet=True)
    entries = {entry["name"]: entry for entry in summary["jobs"]}
    assert entries["fine"]["status"] == "made" and entries["changed"]["status"] == "failed"
    assert "The region mask" in entries["changed"]["error"]
    assert "changed after it was checked (its SHA-256 differs)" in entries["changed"]["error"]
