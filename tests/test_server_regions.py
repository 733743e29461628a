"""Region prompts over HTTP and on the page, on a tiny random-weight model loaded from a folder as
`panosync serve` loads it: a box and a mask region reach the pipeline, the mask is kept in the state
folder by its content while a job refers to it, and the PNG records both (the box as given, the mask
by path and SHA-256) so that `panosync generate --from-png` makes it again; a region over the whole
canvas is its prompt's panorama; every bad region is a 422 whose one sentence names it, before
anything is queued or kept; a ControlSync server takes regions too; the Ray worker hands the masks
to its workers as pictures; the page's region table reaches the panorama and its preview."""

import base64
import json
import time

import numpy as np
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from panosync.cli import main
from panosync.control import random_controlnet_like
from panosync.metadata import read_parameters
from panosync.models import resolve_model
from panosync.server.api import create_app
from panosync.server.generation import PanoramaModel, region_inputs
from panosync.server.limits import Limits
from panosync.server.ray_worker import WorkersModel

from test_server_image import (PictureEngine, as_uint8, client, folders, model,  # noqa: F401 (fixtures)
                               png_base64, served, sha256)

# sync_pipe: 16-latent windows, VAE factor 2, so 32-pixel windows; a 64 × 32 canvas, views at stride 8.
TINY = dict(width=64, height=32, stride=8, num_inference_steps=2, sync_weight=0, seed=3)
WAIT = {"Prefer": "wait=120"}


def mask(width=64, height=32, box=(32, 0, 64, 32)) -> PIL.Image.Image:
    """White inside `box` (x0, y0, x1, y1), black elsewhere; all black for box None."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1] = 255
    return PIL.Image.fromarray(pixels)


def direct(model, job, regions) -> np.ndarray:
    """The job's panorama made by calling its pipeline directly with `regions`."""
    parameters = {name: value for name, value in job["parameters"].items() if name in model.defaults}
    return as_uint8(model.pipe(**{**parameters, "regions": regions}, output_type="np").images)


def test_a_box_and_a_mask_region_reach_the_pipeline_and_the_png_records_them(client, model, tmp_path):
    city = mask()
    regions = [{"box": [0, 0, 24, 32], "prompt": "a calm sea", "weight": 2.0},
               {"mask": "data:image/png;base64," + png_base64(city.convert("RGB")), "prompt": "a city",
                "negative_prompt": "fog"}]  # a grey RGB mask is one channel
    job = client.post("/predictions", json={"prompt": "hills", **TINY, "regions": regions}, headers=WAIT).json()
    assert job["status"] == "succeeded", job["error"]
    kept = client.app.state.store.images / job["input"]["regions"][1]["mask"]
    record = {"path": str(kept), "sha256": sha256(kept)}
    assert job["parameters"]["regions"] == [regions[0], {**regions[1], "mask": record}]
    assert job["input"]["regions"][0] == regions[0]  # the input names the kept mask, not its base64
    assert PIL.Image.open(kept).mode == "L" and np.array_equal(np.asarray(PIL.Image.open(kept)), np.asarray(city))
    pixels = served(client, job)
    assert np.array_equal(pixels, direct(model, job, [regions[0], {**regions[1], "mask": city}]))
    assert not np.array_equal(pixels, direct(model, job, None))  # the regions mattered

    # the PNG records them as the job's parameters (the box as given, the mask by path and SHA-256)
    first, again = tmp_path / "served.png", tmp_path / "again.png"
    first.write_bytes(client.get(job["urls"]["output"]).content)
    assert read_parameters(first)["regions"] == job["parameters"]["regions"]
    # … which the command reads back: the same panorama
    assert main(["generate", "--from-png", str(first), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(pixels, np.asarray(PIL.Image.open(again)))


def test_a_region_over_the_whole_canvas_is_its_prompts_panorama(client):
    region = client.post("/predictions", json={"prompt": "a city at night", **TINY, "region_base": 0, "regions": [
        {"box": [0, 0, 64, 32], "prompt": "snowy mountains"}]}, headers=WAIT).json()
    plain = client.post("/predictions", json={"prompt": "snowy mountains", **TINY}, headers=WAIT).json()
    assert region["status"] == plain["status"] == "succeeded"
    assert np.array_equal(served(client, region), served(client, plain))


def region_masks_kept(store) -> list[str]:
    return sorted(path.name for path in store.images.iterdir()) if store.images.exists() else []


def test_a_regions_mask_is_kept_while_a_job_refers_to_it(client):
    store = client.app.state.store
    sent = {"prompt": "hills", **TINY, "regions": [{"mask": png_base64(mask()), "prompt": "a city"}]}
    first = client.post("/predictions", json=sent, headers=WAIT).json()
    second = client.post("/predictions", json={**sent, "seed": 4}, headers=WAIT).json()
    assert first["status"] == second["status"] == "succeeded"
    kept = store.images / first["input"]["regions"][0]["mask"]
    assert region_masks_kept(store) == [kept.name]  # the same mask sent twice is one file
    # retention counts it with the outputs: what deleting the finished jobs would free
    assert store._bytes_used() == sum(path.stat().st_size for path in store.outputs.iterdir()) + kept.stat().st_size
    assert client.delete(f"/predictions/{first['id']}").status_code == 204
    assert kept.is_file()  # the second job still refers to it
    assert client.delete(f"/predictions/{second['id']}").status_code == 204
    assert region_masks_kept(store) == []
    # queued behind a long job, its mask is kept by the sweep a start makes, and goes when the job is cancelled
    ahead = client.post("/predictions", json={"prompt": "a", **TINY, "num_inference_steps": 500}).json()
    queued = client.post("/predictions", json=sent).json()
    assert queued["status"] == "queued"
    store._sweep_leftovers()
    assert kept.is_file()
    for job in (queued, ahead):
        client.post(f"/predictions/{job['id']}/cancel")
    deadline = time.monotonic() + 60
    while client.get(f"/predictions/{ahead['id']}").json()["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert region_masks_kept(store) == []


def test_a_regions_mask_is_read_back_from_its_file_and_a_changed_one_is_refused(tmp_path):
    """What a job (and the Ray worker) reads: the kept file as a picture, found with its SHA-256."""
    kept = tmp_path / "mask.png"
    mask().save(kept)
    box = {"box": [0, 0, 8, 8], "prompt": "a sea"}
    regions = [box, {"mask": {"path": str(kept), "sha256": sha256(kept)}, "prompt": "a city"}]
    read = region_inputs(regions)
    assert read[0] == box and np.array_equal(np.asarray(read[1]["mask"]), np.asarray(mask()))
    mask(box=(0, 0, 8, 8)).save(kept)
    with pytest.raises(ValueError, match="The region mask .* changed after it was checked"):
        region_inputs(regions)


# (regions, words of the message); every one names the region it refuses, in one sentence
BAD_REGIONS = [
    ([{"box": [0, 0, 80, 32], "prompt": "a"}], "Region 1's box 0,0,80,32 reaches outside the 64×32 canvas"),
    ([{"box": [0, 0, 8, 8], "prompt": "a"}, {"box": [10, 0, 10, 32], "prompt": "b"}], "Region 2's box 10,0,10,32 "
                                                                                      "is empty"),
    ([{"box": [0, 0, 32.5, 32], "prompt": "a"}], "Region 1's box must be four whole pixels"),
    ([{"box": "0,0,8,8", "prompt": "a"}], "Region 1's box must be four whole pixels"),
    ([{"mask": "SMALL", "prompt": "a"}], "Region 1's mask is 32×32 pixels: it must be the canvas's size, 64×32."),
    ([{"box": [0, 0, 8, 8], "prompt": "a"}, {"mask": "BLACK", "prompt": "b"}],
     "Region 2: The mask is all black: paint the region white."),
    ([{"mask": "COLOURS", "prompt": "a"}], "Region 1: The mask has colours"),
    ([{"mask": "TRANSPARENT", "prompt": "a"}], "Region 1: The mask has transparency"),
    ([{"mask": "not an image!", "prompt": "a"}], "Region 1's mask is neither base64 nor a data URL"),
    ([{"mask": "data:image/png,abc", "prompt": "a"}], "Region 1's mask is a data URL but not a base64 one"),
    ([{"mask": base64.b64encode(b"plain text").decode(), "prompt": "a"}],
     "Cannot read mask of region 1: it is not an image file"),
    ([{"mask": 5, "prompt": "a"}], "Region 1's mask must be an image as base64 text or a data URL, got 5."),
    ([{"box": [0, 0, 64, 32], "prompt": "a", "weight": 0}], "The regions' weights add up to 0 around pixel (0, 0)"),
    ([{"box": [0, 0, 8, 8], "prompt": "a", "weight": "heavy"}], "Region 1's weight must be a number from 0 to 10"),
    ([{"box": [0, 0, 8, 8], "prompt": "a", "weight": 11}], "Region 1's weight must be a number from 0 to 10, got 11."),
    ([{"box": [0, 0, 8, 8], "prompt": "a", "colour": "red"}], "Region 1 has unknown keys colour"),
    ([{"box": [0, 0, 8, 8], "prompt": 5}], "Region 1's prompt must be a non-empty text, got 5."),
    ([{"box": [0, 0, 8, 8], "prompt": "a\ud800b"}], "Region 1's prompt is not text: it holds a lone surrogate "
                                                    "(U+D800 at character 1)"),
    ([{"box": [0, 0, 8, 8], "prompt": "a", "negative_prompt": ["fog"]}], "Region 1's negative prompt must be"),
    ([{"box": [0, 0, 8, 8]}], "Region 1 has no prompt"),
    ([{"prompt": "a"}], "Region 1 needs a box or a mask"),
    ([{"box": [0, 0, 8, 8], "mask": "MASK", "prompt": "a"}], "Region 1 needs a box or a mask (one of them)"),
    (["a sea"], "Region 1 must be a dict with box or mask, and prompt, got 'a sea'."),
    ("a sea", "regions must be a list, got 'a sea'."),
    ({"box": [0, 0, 8, 8], "prompt": "a"}, "regions must be a list"),
    ([{"box": [0, 0, 8, 8], "prompt": "a"}] * 17, "17 regions are more than 16"),
]


def with_masks(regions):
    sent = {"SMALL": png_base64(mask(32, 32, (0, 0, 8, 8))), "BLACK": png_base64(mask(box=None)),
            "COLOURS": png_base64(PIL.Image.new("RGB", (64, 32), "red")),
            "TRANSPARENT": png_base64(PIL.Image.new("LA", (64, 32), (255, 128))), "MASK": png_base64(mask())}
    if not isinstance(regions, list):
        return regions
    return [{key: sent.get(value, value) if key == "mask" and isinstance(value, str) else value
             for key, value in region.items()} if isinstance(region, dict) else region for region in regions]


@pytest.mark.parametrize("regions, message", BAD_REGIONS, ids=[message[:36] for _, message in BAD_REGIONS])
def test_a_bad_region_is_one_sentence_naming_it_before_anything_is_queued_or_kept(client, regions, message):
    # a good mask region first: refused with the rest, it must not be kept either
    sent = [{"mask": png_base64(mask()), "prompt": "a city"}] if message.startswith("Region 2") else []
    regions = with_masks(regions)
    if sent:
        regions = sent + regions[1:]
    # as bytes: JSON may escape half a UTF-16 pair (\ud800), which no encoder would write as text
    body = json.dumps({"prompt": "hills", **TINY, "regions": regions}).encode()
    response = client.post("/predictions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert [error["loc"] for error in answer["detail"]] == [["body", "regions"]]
    assert message in answer["message"] and answer["message"].count(". ") == 0, answer["message"]
    assert len(answer["message"]) < 300  # no base64 echoed back
    assert client.get("/predictions").json()["results"] == []
    assert region_masks_kept(client.app.state.store) == []


def test_a_regions_mask_over_the_pixel_limit_is_refused_from_its_header(model, tmp_path):
    with TestClient(create_app(model, tmp_path / "state", Limits(max_pixels=64 * 32))) as client:
        response = client.post("/predictions", json={"prompt": "a", **TINY, "regions": [
            {"mask": png_base64(mask(64, 40)), "prompt": "a city"}]})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "regions"]
        assert "The mask of region 1 is 64x40 = 2,560 pixels, more than the 2,048 allowed" in response.json()["message"]


def test_the_schema_describes_a_region(client):
    properties = client.get("/openapi.json").json()["components"]["schemas"]["PredictionRequest"]["properties"]
    regions = properties["regions"]
    assert "box [x0, y0, x1, y1]" in regions["description"] and "mask" in regions["description"]
    array = next(option for option in regions["anyOf"] if option["type"] == "array")
    assert array["maxItems"] == 16
    assert set(array["items"]["properties"]) == {"box", "mask", "prompt", "negative_prompt", "weight"}
    assert array["items"]["required"] == ["prompt"] and array["items"]["additionalProperties"] is False


def test_a_controlsync_server_takes_regions(folders, sync_pipe, tmp_path):
    random_controlnet_like(sync_pipe.unet, sync_pipe.vae_scale_factor).save_pretrained(folders / "controlnet")
    control = PanoramaModel.load(str(folders / "model"), "cpu", "float32", controlnets=[str(folders / "controlnet")])
    condition = png_base64(PIL.Image.new("RGB", (64, 32), "white"))  # the canvas is the condition's
    fields = {"prompt": "hills", "condition": condition, "stride": 8, "num_inference_steps": 2, "seed": 3}
    with TestClient(create_app(control, tmp_path / "state")) as client:
        outside = client.post("/predictions", json={**fields, "regions": [{"box": [0, 0, 80, 32], "prompt": "a"}]})
        assert outside.status_code == 422 and "outside the 64×32 canvas" in outside.json()["message"]
        regions = [{"box": [0, 0, 32, 32], "prompt": "a sea"}, {"mask": png_base64(mask()), "prompt": "a city"}]
        job = client.post("/predictions", json={**fields, "regions": regions}, headers=WAIT).json()
        assert job["status"] == "succeeded", job["error"]
        png = tmp_path / "control.png"
        png.write_bytes(client.get(job["urls"]["output"]).content)
        assert read_parameters(png)["regions"][1]["mask"]["sha256"] == sha256(job["parameters"]["regions"][1]["mask"]
                                                                                ["path"])
        plain = client.post("/predictions", json=fields, headers=WAIT).json()
        assert not np.array_equal(served(client, job), served(client, plain))  # the regions reached the pipeline
        assert "regions" in client.get("/openapi.json").json()["components"]["schemas"]["PredictionRequest"][
            "properties"]


def test_serve_on_ray_hands_the_workers_the_regions_masks_as_pictures(model, folders, tmp_path):
    engine = PictureEngine(model.pipe)
    workers = WorkersModel(str(folders / "model"), engine, source=resolve_model(str(folders / "model")))
    regions = [{"box": [0, 0, 24, 32], "prompt": "a sea"}, {"mask": png_base64(mask()), "prompt": "a city"}]
    with TestClient(create_app(workers, tmp_path / "state", engine=engine)) as client:
        job = client.post("/predictions", json={"prompt": "hills", **TINY, "regions": regions}, headers=WAIT).json()
        assert job["status"] == "succeeded", job["error"]
        handed = engine.calls[0]["regions"]
        assert handed[0] == regions[0] and handed[1]["prompt"] == "a city"
        assert isinstance(handed[1]["mask"], PIL.Image.Image)
        assert np.array_equal(np.asarray(handed[1]["mask"]), np.asarray(mask()))
        png = tmp_path / "ray.png"
        png.write_bytes(client.get(job["urls"]["output"]).content)
        assert read_parameters(png)["regions"] == job["parameters"]["regions"]


def test_the_pages_region_table_reaches_the_panorama_and_its_preview(model, tmp_path):
    """The page's generate, as Gradio calls it: the table's boxes (empty rows skipped) are the
    request's regions, checked with the API's sentences; the preview draws them on the canvas."""
    import gradio as gr

    from panosync.server.ui import build_ui, regions_preview

    page = build_ui(model, Limits(), tmp_path / "outputs")
    generate = next(fn for fn in page.fns.values() if fn.name == "generate")
    ids = [component.elem_id for component in generate.inputs]
    empty = [None, None, None, None, "", None]
    table = [[0, 0, 24.0, 32, "a calm sea", 2.0], empty, [32, 0, 64, 32, "a city", None], empty]
    chosen = {"prompt": "hills", **TINY, "randomize": False, "regions": table}

    def run(**changes):
        values = {**chosen, **changes}
        return generate.fn(*[values.get(id, component.value) for id, component in zip(ids, generate.inputs)],
                           progress=lambda *args, **kwargs: None)

    path, *_ = run()
    stored = read_parameters(path)
    regions = [{"box": [0, 0, 24, 32], "prompt": "a calm sea", "weight": 2}, {"box": [32, 0, 64, 32],
                                                                             "prompt": "a city"}]
    assert stored["regions"] == regions
    parameters = {name: stored[name] for name in model.defaults}
    assert np.array_equal(np.asarray(PIL.Image.open(path)),
                          as_uint8(model.pipe(**parameters, output_type="np").images))
    assert read_parameters(run(regions=[empty] * 4)[0])["regions"] is None  # only empty rows: no regions
    with pytest.raises(gr.Error, match="Region 2's box 32,0,80,32 reaches outside the 64×32 canvas"):
        run(regions=[table[0], [32, 0, 80, 32, "a city", None]])
    with pytest.raises(gr.Error, match="Region 1's prompt must be a non-empty text"):
        run(regions=[[0, 0, 8, 8, "", None]])

    # the preview: the canvas fitted in its box, each region's box tinted over it, redrawn as they change
    preview = next(fn for fn in page.fns.values() if fn.name == "regions_preview")
    assert [component.elem_id for component in preview.inputs] == ["width", "height", "regions"]
    picture = np.asarray(regions_preview(64, 32, [[0, 0, 16, 32, "a sea", None], empty]), dtype=int)
    assert picture.shape == (256, 512, 3)  # 64 × 32 fitted in 768 × 256
    background = picture[128, 400]
    assert np.abs(picture[128, 64] - background).sum() > 30  # inside the box: tinted
    assert np.array_equal(picture[128, 200], background)  # right of it (x 25 of 64): the canvas
    assert regions_preview(None, 32, table) is None
