"""Region prompts on the command: `generate --region X0,Y0,X1,Y1=PROMPT[:WEIGHT]` and `--region-mask
MASK.png=PROMPT[:WEIGHT]` (and `control`'s). The masks are read and hashed before any model loads and
every region is checked on the canvas then; the PNG records the regions as given, a mask by its path
and SHA-256; --from-png makes the same panorama again and refuses a changed mask; region options
replace the PNG's regions; a bad region is one sentence and exit status 2. Tiny random models
(sd_folder: 32-pixel windows at VAE factor 2)."""

import hashlib

import numpy as np
import PIL.Image
import pytest

from panosync import models
from panosync.cli import build_parser, main
from panosync.metadata import read_parameters

CANVAS = ["--width", "64", "--stride", "8", "--steps", "2", "--seed", "5", "--quiet"]


def no_loading(*args, **kwargs):
    raise AssertionError("the model was loaded")


def write_mask(tmp_path, name="city.png", width=64, height=32, left=40) -> str:
    """White from column `left` on: the region."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[:, left:] = 255
    PIL.Image.fromarray(pixels).save(tmp_path / name)
    return str(tmp_path / name)


def pixels(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image)


def test_the_two_options_make_one_list_in_the_command_lines_order():
    for command in ("generate", "control"):
        args = build_parser().parse_args([command, "a", "--region", "0,0,8,8=a", "--region-mask", "m.png=b",
                                          "--region", "8,0,16,8=c:2"])
        assert args.regions == [("box", "0,0,8,8=a"), ("mask", "m.png=b"), ("box", "8,0,16,8=c:2")]
    assert build_parser().parse_args(["generate", "a"]).regions is None
    with pytest.raises(SystemExit):  # no option made from the table's name
        build_parser().parse_args(["generate", "a", "--regions", "x"])
    # upscale's canvas is --scale's, and evaluate's metrics are of one prompt a panorama: neither takes regions
    for command in (["upscale", "in.png"], ["evaluate", "--prompts", "p", "--out", "o"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--region", "0,0,8,8=a"])


def test_regions_are_recorded_and_from_png_makes_the_panorama_again(sd_folder, tmp_path, capsys, monkeypatch):
    mask = write_mask(tmp_path)
    out = tmp_path / "regions.png"
    assert main(["generate", "a land", "--model", str(sd_folder), "--region-mask", f"{mask}=a city:2",
                 "--region", "0,0,24,32=a calm sea: at dawn", "--out", str(out), *CANVAS]) == 0
    plain = tmp_path / "plain.png"
    assert main(["generate", "a land", "--model", str(sd_folder), "--out", str(plain), *CANVAS]) == 0
    assert not np.array_equal(pixels(out), pixels(plain))  # the regions reached the pipeline
    digest = hashlib.sha256(open(mask, "rb").read()).hexdigest()
    # as given, in the command line's order; a colon in a prompt is the prompt's unless a number follows
    assert read_parameters(out)["regions"] == [
        {"mask": {"path": mask, "sha256": digest}, "prompt": "a city", "weight": 2.0},
        {"box": [0, 0, 24, 32], "prompt": "a calm sea: at dawn", "weight": 1.0}]
    assert read_parameters(plain)["regions"] is None

    # from another folder: the mask is found by its absolute path
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(out), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(pixels(again), pixels(out))
    assert read_parameters(again)["regions"] == read_parameters(out)["regions"]

    # region options replace every region of the PNG
    replaced = tmp_path / "replaced.png"
    assert main(["generate", "--from-png", str(out), "--region", "0,0,16,32=a hill", "--out", str(replaced),
                 "--quiet"]) == 0
    assert read_parameters(replaced)["regions"] == [{"box": [0, 0, 16, 32], "prompt": "a hill", "weight": 1.0}]

    # the mask changed since: the same panorama cannot be made, and it says so
    write_mask(tmp_path, left=20)
    capsys.readouterr()
    assert main(["generate", "--from-png", str(out), "--out", str(tmp_path / "third.png"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"The region mask {mask} has changed since the PNG was made (its SHA-256 differs)" in err, err
    assert "give every region again (--region, --region-mask)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "third.png").exists()


def black(tmp_path) -> str:
    return write_mask(tmp_path, "black.png", left=64)


def coloured(tmp_path) -> str:
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[..., 0] = 255
    PIL.Image.fromarray(pixels).save(tmp_path / "red.png")
    return str(tmp_path / "red.png")


BAD = [
    (lambda p: ["--region", "0,0,80,32=a sea"], "Region 1's box 0,0,80,32 reaches outside the 64×32 canvas"),
    (lambda p: ["--region", "0,0,8,8=a", "--region", "10,0,10,32=a sea"], "Region 2's box 10,0,10,32 is empty"),
    (lambda p: ["--region-mask", f"{write_mask(p, width=32, left=16)}=a city"],
     "Region 1's mask is 32×32 pixels: it must be the canvas's size, 64×32."),
    (lambda p: ["--region-mask", f"{black(p)}=a city"], "Region 1: The mask is all black: paint the region "
                                                         "white."),
    (lambda p: ["--region-mask", f"{coloured(p)}=a city"], "Region 1: The mask has colours"),
    (lambda p: ["--region-mask", f"{p / 'missing.png'}=a city"], "No such region mask: "),
    (lambda p: ["--region-mask", str(p)], "is not MASK.png=PROMPT"),
    (lambda p: ["--region", "0,0,64,32=a sea:0"], "The regions' weights add up to 0 around pixel (0, 0)"),
    (lambda p: ["--region", "0,0,32,32=a sea:11"], "the number after the last ':' (11) is read as the region's weight, "
                                                   "from 0 to 10"),
    (lambda p: ["--region", "0,0,32=a sea"], "the box before '=' must be four whole pixels X0,Y0,X1,Y1"),
    (lambda p: ["--region", "a sea"], "'a sea' is not X0,Y0,X1,Y1=PROMPT"),
    (lambda p: ["--region", "0,0,32,32= "], "is not X0,Y0,X1,Y1=PROMPT"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[message[:40] for _, message in BAD])
def test_a_bad_region_is_one_sentence_before_the_model_loads(sd_folder, tmp_path, monkeypatch, capsys, options,
                                                             message):
    monkeypatch.setattr(models, "load_pipeline", no_loading)
    code = main(["generate", "a", "--model", str(sd_folder), *CANVAS, *options(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_control_checks_its_regions_before_the_model_loads(sd_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_pipeline", no_loading)
    monkeypatch.setattr(models, "load_control_pipeline", no_loading)
    condition = write_mask(tmp_path, "edges.png")
    code = main(["control", "a", "--model", str(sd_folder), "--controlnet", "tiny-random", "--condition", condition,
                 "--region", "0,0,70,32=a sea", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "Region 1's box 0,0,70,32 reaches outside the 64×32 canvas" in err, err


def test_control_records_its_regions_and_from_png_makes_the_panorama_again(sd_folder, tmp_path):
    condition, mask = write_mask(tmp_path, "edges.png", left=30), write_mask(tmp_path)
    out = tmp_path / "control.png"
    assert main(["control", "a land", "--model", str(sd_folder), "--controlnet", "tiny-random", "--condition",
                 condition, "--region", "0,0,24,32=a sea:3", "--region-mask", f"{mask}=a city", "--out", str(out),
                 *CANVAS]) == 0
    regions = read_parameters(out)["regions"]
    assert [region["prompt"] for region in regions] == ["a sea", "a city"] and regions[1]["mask"]["path"] == mask
    again = tmp_path / "again.png"
    assert main(["control", "--from-png", str(out), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(pixels(again), pixels(out))
