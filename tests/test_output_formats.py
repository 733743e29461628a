"""Panoramas as PNG, JPEG or WebP (metadata.save_panorama, issue 30): `--out`'s extension picks the
format; each carries the parameters (PNG text, JPEG/WebP XMP) and the digest of its pixels as
decoded; a loop-closed one carries GPano in every format, read alike by our reader and by PIL's;
`--from` (and its old name `--from-png`) reads any of them back; bad names and qualities are one
sentence before any model loads."""

import json

import numpy as np
import PIL.Image
import pytest

from panosync.cli import main
from panosync.metadata import (DIGEST, MAX_JPEG_XMP_BYTES, check_fits, pixels_digest, read_metadata,
                               read_parameters, save_panorama)
from panosync.photosphere import read_gpano

CANVAS = ["--width", "64", "--height", "32", "--stride", "8", "--steps", "2", "--seed", "5", "--quiet",
          "--threads", "1"]
FORMATS = {"png": "PNG", "jpg": "JPEG", "JPEG": "JPEG", "webp": "WEBP"}


def noise_image(width=512, height=64, seed=0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def xmp_of(path) -> str:
    with PIL.Image.open(path) as image:
        packet = image.info.get("xmp", image.info.get("XML:com.adobe.xmp"))
    return packet.decode("utf-8") if isinstance(packet, bytes) else packet


@pytest.mark.parametrize("extension", FORMATS)
def test_every_format_round_trips_its_parameters_and_the_digest_of_its_decoded_pixels(tmp_path, extension):
    parameters = {"prompt": 'a <sea> & "cliffs" — über', "seed": 7, "loop_closure": False,
                  "regions": [{"box": [0, 0, 8, 8], "prompt": "x</panosync:parameters>"}]}
    path = save_panorama(noise_image(), tmp_path / f"pano.{extension}", parameters)
    with PIL.Image.open(path) as image:
        assert image.format == FORMATS[extension]
        decoded = pixels_digest(image)
    stored = read_metadata(path)
    assert stored.pop(DIGEST) == decoded
    assert stored == parameters
    assert read_parameters(path) == parameters
    assert not read_gpano(xmp_of(path) or "")  # not loop-closed: no GPano


@pytest.mark.parametrize("extension", ["jpg", "webp"])
@pytest.mark.parametrize("width, height, top", [(2048, 512, 256), (512, 256, 0), (512, 64, 96)])
def test_a_loop_closed_jpeg_or_webp_carries_gpano(tmp_path, extension, width, height, top):
    path = save_panorama(PIL.Image.new("RGB", (width, height), (40, 90, 160)), tmp_path / f"pano.{extension}",
                         {"prompt": "a sea", "loop_closure": True})
    expected = {"ProjectionType": "equirectangular", "UsePanoramaViewer": "True",
                "FullPanoWidthPixels": str(width), "FullPanoHeightPixels": str(width // 2),
                "CroppedAreaImageWidthPixels": str(width), "CroppedAreaImageHeightPixels": str(height),
                "CroppedAreaLeftPixels": "0", "CroppedAreaTopPixels": str(top), "PoseHeadingDegrees": "0.0"}
    assert read_gpano(xmp_of(path)) == expected
    with PIL.Image.open(path) as image:  # another reader: PIL's (defusedxml)
        descriptions = image.getxmp()["xmpmeta"]["RDF"]["Description"]
    gpano = next(description for description in descriptions if "ProjectionType" in description)
    assert {name: value for name, value in gpano.items() if name in expected} == expected
    panosync = next(description for description in descriptions if "parameters" in description)
    assert json.loads(panosync["parameters"])["prompt"] == "a sea"


def test_quality_sets_the_jpeg_and_webp_compression(tmp_path):
    # a smooth picture, as a panorama's sky is: the default quality keeps it within a grey level or two
    x, y = np.meshgrid(np.linspace(0, 1, 512), np.linspace(0, 1, 64))
    smooth = PIL.Image.fromarray((np.stack([x, y, (x + y) / 2], -1) * 255).astype(np.uint8))
    for extension in ("jpg", "webp"):
        low = save_panorama(noise_image(), tmp_path / f"low.{extension}", {"seed": 1}, quality=30)
        high = save_panorama(noise_image(), tmp_path / f"high.{extension}", {"seed": 1}, quality=95)
        assert low.stat().st_size < high.stat().st_size * 0.6
        kept = np.asarray(PIL.Image.open(save_panorama(smooth, tmp_path / f"smooth.{extension}", {})), dtype=float)
        assert np.abs(kept - np.asarray(smooth, dtype=float)).mean() < 1.5


def test_parameters_too_long_for_a_jpeg_are_refused_before_and_on_writing(tmp_path):
    long = {"prompt": "é" * 2000, "regions": [{"prompt": "ü" * 2000, "negative_prompt": "ö" * 2000}] * 16}
    with pytest.raises(ValueError, match="more than a JPEG's metadata holds .* write a .png or .webp"):
        check_fits(long, tmp_path / "x.jpg")
    check_fits(long, tmp_path / "x.webp")
    with pytest.raises(ValueError, match="more than a JPEG's metadata holds"):
        save_panorama(noise_image(64, 32), tmp_path / "x.jpg", long)
    assert not (tmp_path / "x.jpg").exists()
    stored = save_panorama(noise_image(64, 32), tmp_path / "x.webp", long)  # WebP's XMP chunk has no such limit
    assert read_parameters(stored) == long
    assert MAX_JPEG_XMP_BYTES < 65_536


@pytest.mark.slow
def test_the_command_writes_each_format_and_from_reads_each_back(sd_folder, tmp_path, capsys):
    first = tmp_path / "first.png"
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--loop-closure", "--out",
                 str(first)]) == 0
    made = {"png": first}
    for extension, quality in (("jpg", ["--quality", "90"]), ("webp", [])):
        made[extension] = tmp_path / f"again.{extension}"
        # --from-png: the old name of --from, kept
        option = "--from" if extension == "jpg" else "--from-png"
        assert main(["generate", option, str(first), "--out", str(made[extension]), *quality, "--quiet"]) == 0
        with PIL.Image.open(made[extension]) as image:
            assert image.format == FORMATS[extension] and image.size == (64, 32)
        assert read_parameters(made[extension]) == read_parameters(first)
        assert read_gpano(xmp_of(made[extension]))["FullPanoWidthPixels"] == "64"
        # and back: the JPEG's or WebP's parameters make the PNG again, bit for bit
        again = tmp_path / f"from-{extension}.png"
        assert main(["generate", "--from", str(made[extension]), "--out", str(again), "--quiet"]) == 0
        assert np.array_equal(np.asarray(PIL.Image.open(again)), np.asarray(PIL.Image.open(first)))
    assert "Photo Sphere metadata" in capsys.readouterr().out


@pytest.mark.parametrize("options, message", [
    (["--out", "X/pano.gif"], "--out X/pano.gif: panosync writes .png, .jpg, .jpeg, .webp files (their metadata "
                              "holds the parameters), not .gif: name it pano.png or another of those."),
    (["--out", "X/pano.png", "--quality", "80"], "--quality applies to JPEG and WebP files, and X/pano.png is a PNG "
                                                 "(lossless): leave --quality out, or write a .jpg or .webp."),
    (["--out", "X/pano.jpg", "--quality", "0"], "--quality must be a whole number from 1 to 100, got 0."),
    (["--out", "X/pano.webp", "--quality", "101"], "--quality must be a whole number from 1 to 100, got 101."),
    (["--from", "X/damaged.jpg"], "Cannot read X/damaged.jpg as a PNG, JPEG or WebP"),
    (["--from", "X/plain.webp"], "X/plain.webp carries no panosync parameters"),
])
def test_bad_outputs_and_sources_are_one_sentence_before_any_model_loads(sd_folder, tmp_path, capsys, monkeypatch,
                                                                         options, message):
    from panosync import models

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_pipeline", no_loading)
    (tmp_path / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "plain.webp")
    options = [option.replace("X/", f"{tmp_path}/") for option in options]
    prompt = [] if "--from" in options else ["a land"]
    assert main(["generate", *prompt, "--model", str(sd_folder), *CANVAS, *options]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"panosync: error: {message.replace('X/', f'{tmp_path}/')}"), error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not list(tmp_path.glob("pano.*"))


def test_an_out_without_extension_is_a_png(sd_folder, tmp_path):
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--out", str(tmp_path / "pano")]) == 0
    with PIL.Image.open(tmp_path / "pano.png") as image:
        assert image.format == "PNG"


def test_the_server_gives_the_output_as_jpeg_or_webp_with_the_pngs_metadata(sync_pipe, tmp_path):
    import io

    from test_server_api import TINY, client_for, finished, wait_for
    from panosync.server.generation import PanoramaModel
    from panosync.settings import model_defaults
    from panosync.models import resolve_model

    served = PanoramaModel(sync_pipe, "tiny-test", model_defaults(resolve_model("tiny-random")))
    with client_for(served, tmp_path / "state") as client:
        job = client.post("/predictions", json={"prompt": "a land", **TINY, "seed": 3, "loop_closure": True}).json()
        job = wait_for(client, job["id"], finished)
        url = job["urls"]["output"]
        png = client.get(url)
        stored = read_parameters(io.BytesIO(png.content))
        answers = {"jpg": client.get(url, params={"format": "jpg", "quality": 80}),
                   "webp": client.get(url.replace("output.png", "output.webp")),
                   "jpeg": client.get(url.replace("output.png", "output.jpeg"))}
        for extension, answer in answers.items():
            assert answer.status_code == 200, answer.text
            kind = "webp" if extension == "webp" else "jpeg"
            assert answer.headers["content-type"] == f"image/{kind}"
            assert f'filename="panosync-{job["id"]}.{extension}"' in answer.headers["content-disposition"]
            with PIL.Image.open(io.BytesIO(answer.content)) as image:
                assert image.format == kind.upper() and image.size == (64, 32)
                assert read_gpano(image.info["xmp"].decode())["FullPanoHeightPixels"] == "32"
                digest = pixels_digest(image)
            again = read_metadata(io.BytesIO(answer.content))
            assert again.pop(DIGEST) == digest and again == stored
        # the quality is the JPEG's: a lower one is a smaller file
        assert len(client.get(url, params={"format": "jpg", "quality": 20}).content) < len(answers["jpg"].content)
        refused = {"png with a quality": client.get(url, params={"quality": 80}),
                   "a gif": client.get(url, params={"format": "gif"}),
                   "quality 0": client.get(url, params={"format": "jpg", "quality": 0}),
                   "output.gif": client.get(url.replace("output.png", "output.gif"))}
        for what, answer in refused.items():
            assert answer.status_code in (404, 422) and "message" in answer.json(), what
        assert "a PNG is lossless" in refused["png with a quality"].json()["message"]


@pytest.mark.slow
def test_batch_writes_jpeg_or_webp_that_a_rerun_keeps(tmp_path, capsys):
    from test_batch_image import STEPS, batch, write_jobs

    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "snowy mountains", "width": 128, "seed": 1, **STEPS},
                      {"prompt": "a desert", "width": 128, "seed": 2, "name": "desert", "loop_closure": True,
                       **STEPS})
    for extension, options in (("jpg", ["--quality", "85"]), ("webp", [])):
        out = tmp_path / extension
        assert batch(jobs, out, "--format", extension, *options) == 0
        assert sorted(path.name for path in out.iterdir() if path.suffix == f".{extension}") == [
            f"desert.{extension}", f"line-1.{extension}"]
        assert read_parameters(out / f"line-1.{extension}")["prompt"] == "snowy mountains"
        assert read_gpano(xmp_of(out / f"desert.{extension}"))["FullPanoWidthPixels"] == "128"
        capsys.readouterr()
        assert batch(jobs, out, "--format", extension, *options) == 0  # a rerun verifies the pixels and keeps them
        assert "0 made, 2 kept" in capsys.readouterr().out
    # PNG bytes under the .jpg name (a panosync PNG of the same job, renamed): made again as a JPEG
    assert batch(jobs, tmp_path / "png") == 0
    (tmp_path / "png" / "line-1.png").replace(tmp_path / "jpg" / "line-1.jpg")
    assert batch(jobs, tmp_path / "jpg", "--format", "jpg") == 0
    assert "1 made, 1 kept" in capsys.readouterr().out
    with PIL.Image.open(tmp_path / "jpg" / "line-1.jpg") as image:
        assert image.format == "JPEG"
    # a pipe where a file goes is not the batch's to replace
    import os
    (tmp_path / "webp" / "desert.webp").unlink()
    os.mkfifo(tmp_path / "webp" / "desert.webp")
    assert batch(jobs, tmp_path / "webp", "--format", "webp") == 2
    assert "desert.webp" in capsys.readouterr().err
    assert batch(jobs, tmp_path / "png", "--quality", "85") == 2
    assert capsys.readouterr().err.strip() == ("panosync: error: --quality applies to JPEG and WebP files, and "
                                               "line-1.png is a PNG (lossless): leave --quality out, or write a .jpg "
                                               "or .webp.")


def test_the_server_answers_a_format_the_panorama_does_not_fit_or_a_damaged_output_with_a_4xx(sync_pipe, tmp_path):
    from test_server_api import TINY, client_for, finished, wait_for
    from panosync.server.generation import PanoramaModel
    from panosync.settings import model_defaults
    from panosync.models import resolve_model

    served = PanoramaModel(sync_pipe, "tiny-test", model_defaults(resolve_model("tiny-random")))
    with client_for(served, tmp_path / "state") as client:
        long = {"prompt": "&" * 2000, "negative_prompt": "&" * 2000,
                "regions": [{"box": [0, 0, 64, 32], "prompt": "&" * 2000, "weight": 0.5}] * 16}
        job = wait_for(client, client.post("/predictions", json={**long, **TINY, "seed": 1}).json()["id"], finished)
        assert job["status"] == "succeeded", job["error"]
        answer = client.get(job["urls"]["output"].replace("output.png", "output.jpg"))
        assert answer.status_code == 422 and "more than a JPEG's metadata holds" in answer.json()["message"]
        assert client.get(job["urls"]["output"].replace("output.png", "output.webp")).status_code == 200
        # the PNG kept, damaged on the server's disk: a 410 that says so, not a 500
        other = wait_for(client, client.post("/predictions", json={"prompt": "a", **TINY}).json()["id"], finished)
        kept = tmp_path / "state" / "outputs" / f"{other['id']}.png"
        kept.write_bytes(kept.read_bytes()[:200])
        answer = client.get(other["urls"]["output"], params={"format": "jpg"})
        assert answer.status_code == 410 and "damaged" in answer.json()["message"], answer.text


def test_damaged_pipes_and_bombs_given_to_from_are_one_sentence(tmp_path, capsys):
    import os
    import zlib

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    # a PNG whose header claims 60000 × 60000 pixels, carrying panosync parameters
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (60000).to_bytes(4, "big") * 2 + b"\x01\x00\x00\x00\x00")
                     + chunk(b"tEXt", b'panosync\x00{"prompt": "a"}') + chunk(b"IEND", b""))
    edited = tmp_path / "edited.jpg"
    save_panorama(noise_image(64, 32), edited, {"prompt": "a sea"})
    edited.write_bytes(edited.read_bytes().replace(b"a sea", b"\xff\xfe sea"))
    for path, words in ((fifo, "is a folder, device, pipe or socket, not a panorama file"),
                        (bomb, "has more pixels than any panorama panosync makes"),
                        (edited, "carries panosync parameters that are not UTF-8 text")):
        assert main(["generate", "--from", str(path)]) == 2
        error = capsys.readouterr().err
        assert words in error and error.count("\n") == 1 and "Traceback" not in error, error


def test_out_does_not_replace_a_file_panosync_did_not_write_unless_asked(sd_folder, tmp_path, capsys):
    precious = tmp_path / "precious.jpg"
    precious.write_bytes(b"the user's own file")
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--out", str(precious)]) == 2
    assert "exists and was not written by panosync: give --overwrite" in capsys.readouterr().err
    assert precious.read_bytes() == b"the user's own file"
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--out", str(precious),
                 "--overwrite"]) == 0
    assert read_parameters(precious)["prompt"] == "a land"
    # a panorama panosync wrote is replaced, as a make again replaces what it made
    assert main(["generate", "a lake", "--model", str(sd_folder), *CANVAS, "--out", str(precious)]) == 0
    assert read_parameters(precious)["prompt"] == "a lake"
    for name in ("trailing.", ".jpg"):
        assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--out", str(tmp_path / name)]) == 2
        assert "has no name before its extension" in capsys.readouterr().err


def test_a_webp_wider_than_webp_allows_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="A WebP is at most 16,383 pixels a side"):
        check_fits({"width": 16384, "height": 512}, tmp_path / "wide.webp")
    check_fits({"width": 16384, "height": 512}, tmp_path / "wide.jpg")


def test_a_jpeg_records_an_image_input_and_a_region_mask_as_files(sd_folder, tmp_path):
    picture, mask = tmp_path / "picture.png", tmp_path / "mask.png"
    noise_image(64, 32).save(picture)
    PIL.Image.new("L", (64, 32), 255).save(mask)
    out = tmp_path / "from-image.jpg"
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--image", str(picture),
                 "--region-mask", f"{mask}=a sea", "--out", str(out)]) == 0
    stored = read_parameters(out)
    assert stored["image"]["path"] == str(picture) and stored["regions"][0]["mask"]["path"] == str(mask)
    again = tmp_path / "again.png"
    assert main(["upscale", str(out), "--model", str(sd_folder), "--scale", "1.5", "--steps", "5", "--quiet",
                 "--out", str(tmp_path / "up.jpg")]) == 0
    assert read_parameters(tmp_path / "up.jpg")["width"] == 96
    assert main(["generate", "--from", str(out), "--out", str(again), "--quiet"]) == 0
