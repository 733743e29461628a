"""Image inputs over HTTP (and on the page), on a tiny random-weight model loaded from a folder as
`panosync serve` loads it: an img2img, an extend or an inpainting job is the pipeline's panorama,
its PNG records the image and mask kept in the state folder by path and SHA-256 and makes the same
panorama again with `panosync generate --from-png`; every bad image input is a 422 naming the field
before anything is queued or kept; a ControlSync server refuses the image fields; the Ray worker
hands the images to its workers as pictures."""

import base64
import hashlib
import io
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from panosync.cli import main
from panosync.control import random_controlnet_like
from panosync.metadata import read_parameters
from panosync.models import resolve_model
from panosync.runner import Done, Made
from panosync.server.api import create_app
from panosync.server.generation import MASK_WITHOUT_IMAGE, PanoramaModel, image_inputs
from panosync.server.limits import Limits
from panosync.server.ray_worker import WorkersModel
from panosync.server.schema import FIELDS, IMAGE_FIELDS

# sync_pipe: 16-latent windows, VAE factor 2, so 32-pixel windows; views at stride 8.
TINY = dict(stride=8, num_inference_steps=2, sync_weight=0)
WAIT = {"Prefer": "wait=120"}


def png_base64(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def picture(width=64, height=32, seed=0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def mask(width=64, height=32, left=32) -> PIL.Image.Image:
    """White (repainted) from column `left` on, black (kept) before it."""
    pixels = np.zeros((height, width), dtype=np.uint8)
    pixels[:, left:] = 255
    return PIL.Image.fromarray(pixels)


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, sync_pipe):
    root = tmp_path_factory.mktemp("image-server")
    sync_pipe.save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def model(folders):
    return PanoramaModel.load(str(folders / "model"), "cpu", "float32")


@pytest.fixture
def client(model, tmp_path):
    with TestClient(create_app(model, tmp_path / "state")) as client:
        yield client


def served(client, job) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(client.get(job["urls"]["output"]).content)))


def as_uint8(images) -> np.ndarray:
    return (images[0] * 255).round().astype(np.uint8)


def test_an_img2img_job_is_the_pipelines_panorama_and_its_png_makes_it_again(client, model, folders, tmp_path):
    image = picture()
    body = {"prompt": "a valley", **TINY, "seed": 3, "strength": 0.5, "image": "data:image/png;base64," +
            png_base64(image)}
    response = client.post("/predictions", json=body, headers=WAIT)
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "succeeded", job["error"]
    # progress counts the whole schedule: strength 0.5 runs its second half, and ends at the last step
    assert job["progress"]["step"] == job["progress"]["total"] == job["parameters"]["num_inference_steps"]
    # the canvas is the image's; the input names the kept file instead of echoing its base64
    assert (job["parameters"]["width"], job["parameters"]["height"]) == (64, 32)
    kept = client.app.state.store.images / job["input"]["image"]
    record = {"path": str(kept), "sha256": sha256(kept)}
    assert job["parameters"]["image"] == record and job["parameters"]["mask_image"] is None
    assert np.array_equal(np.asarray(PIL.Image.open(kept)), np.asarray(image))  # every pixel kept
    pixels = served(client, job)

    # the pipeline called directly with the same image
    parameters = {name: value for name, value in job["parameters"].items() if name not in IMAGE_FIELDS}
    expected = model.pipe(**parameters, image=image, strength=0.5, output_type="np").images
    assert np.array_equal(pixels, as_uint8(expected))
    assert not np.array_equal(pixels, as_uint8(model.pipe(**parameters, output_type="np").images))  # it mattered

    # the PNG records the image as the command does, and makes the same panorama again
    first, again = tmp_path / "served.png", tmp_path / "again.png"
    first.write_bytes(client.get(job["urls"]["output"]).content)
    stored = read_parameters(first)
    assert stored["image"] == record and stored["strength"] == 0.5 and stored["model"] == str(folders / "model")
    assert main(["generate", "--from-png", str(first), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(pixels, np.asarray(PIL.Image.open(again)))


def test_an_extend_and_an_inpainting_job_keep_the_users_pixels(client, model):
    image = picture(32, 32, seed=1)
    extend = client.post("/predictions", json={"prompt": "a valley", **TINY, "seed": 4, "width": 96,
                                               "image": png_base64(image), "image_at": [64, 0]}, headers=WAIT).json()
    assert extend["status"] == "succeeded", extend["error"]
    assert (extend["parameters"]["width"], extend["parameters"]["height"]) == (96, 32)  # the height the image's
    assert extend["parameters"]["image_at"] == [64, 0]
    pixels = served(client, extend)
    # kept whole, but for the feather (the VAE factor's 2 pixels) where it meets the panorama
    assert pixels.shape == (32, 96, 3) and np.array_equal(pixels[:, 66:], np.asarray(image)[:, 2:])

    photo = picture(seed=2)
    sent = {"prompt": "a valley", **TINY, "seed": 5, "image": png_base64(photo),
            "mask_image": png_base64(mask().convert("RGB"))}  # a grey RGB mask is one channel
    inpainted = client.post("/predictions", json=sent, headers=WAIT).json()
    assert inpainted["status"] == "succeeded", inpainted["error"]
    store = client.app.state.store
    kept_mask = store.images / inpainted["input"]["mask_image"]
    assert inpainted["parameters"]["mask_image"] == {"path": str(kept_mask), "sha256": sha256(kept_mask)}
    assert PIL.Image.open(kept_mask).mode == "L"  # kept as the one channel it is
    parameters = {name: value for name, value in inpainted["parameters"].items() if name not in IMAGE_FIELDS}
    expected = model.pipe(**parameters, image=photo, mask_image=mask(), output_type="np").images
    pixels = served(client, inpainted)
    assert np.array_equal(pixels, as_uint8(expected))
    assert np.array_equal(pixels[:, :30], np.asarray(photo)[:, :30])  # black: kept (but for the feather's edge)
    # the same image sent again is the same file
    again = client.post("/predictions", json={**sent, "seed": 6}, headers=WAIT).json()
    assert again["parameters"]["image"] == inpainted["parameters"]["image"]
    assert len(list(store.images.iterdir())) == 3  # two images and a mask


def transparent(mode="RGBA", size=(64, 32)) -> str:
    return png_base64(PIL.Image.new(mode, size))


# (fields besides the prompt, the field named, words the message must hold)
BAD_IMAGE_REQUESTS = [
    ({"image": 5}, "image", "image must be an image as base64 text or a data URL, got 5."),
    ({"image": "not an image!"}, "image", "image is neither base64 nor a data URL"),
    ({"image": "data:image/png,abc"}, "image", "image is a data URL but not a base64 one"),
    ({"image": base64.b64encode(b"plain text, not a picture").decode()}, "image",
     "Cannot read image sent as image: it is not an image file"),
    ({"image": "TRANSPARENT"}, "image", "The image sent as image has transparency (mode RGBA)"),
    ({"image": "PNG", "mask_image": "COLOURS"}, "mask_image", "The mask has colours: it must be one channel"),
    ({"image": "PNG", "mask_image": "BLACK"}, "mask_image", "The mask is all black"),
    ({"image": "PNG", "mask_image": "TRANSPARENT MASK"}, "mask_image", "The mask has transparency (mode LA)"),
    ({"image": "PNG", "mask_image": "SMALL MASK"}, "mask_image",
     "The mask is 32x32 pixels but the image is 64x32: give a mask of the image's size."),
    ({"mask_image": "MASK"}, "mask_image", MASK_WITHOUT_IMAGE),
    ({"image": "PNG", "width": 48}, "image", "The image is 64x32 pixels, larger than the 48x32 canvas: give a canvas "
                                             "at least its size, or resize_image (--resize-image) to fit it in."),
    ({"image": "PNG", "width": 96, "image_at": [40, 0]}, "image_at",
     "An image of 64x32 pixels at 40,0 runs past the 96x32 canvas: place it at most at 32,0."),
    ({"image": "PNG", "image_at": [1]}, "image_at", "image_at must be two whole numbers X,Y"),
    ({"image": "PNG", "image_at": [-1, 0]}, "image_at", "image_at: every value must be 0 or more, got -1."),
    ({"image": "PNG", "image_at": "0,0"}, "image_at", "image_at must be a list, got '0,0'."),
    ({"image": "PNG", "strength": 0}, "strength", "strength must be more than 0 and at most 1, got 0."),
    ({"image": "PNG", "strength": 0.1}, "strength", "strength 0.1 runs no step of 2"),
    ({"image": "PNG", "resize_image": "yes"}, "resize_image", "resize_image must be true or false, got 'yes'."),
    ({"image": "PNG 65x32"}, "width", "width must be a multiple of 2 pixels (the VAE factor), got 65."),
]


def with_images(fields: dict) -> dict:
    sent = {"PNG": png_base64(picture()), "PNG 65x32": png_base64(picture(65, 32)), "TRANSPARENT": transparent(),
            "COLOURS": png_base64(picture()), "BLACK": png_base64(PIL.Image.new("L", (64, 32))),
            "TRANSPARENT MASK": transparent("LA"), "SMALL MASK": png_base64(mask(32, 32, 16)),
            "MASK": png_base64(mask())}
    return {name: sent.get(value, value) if isinstance(value, str) else value for name, value in fields.items()}


@pytest.mark.parametrize("fields, field, message", BAD_IMAGE_REQUESTS,
                         ids=[f"{field}:{message[:28]}" for _, field, message in BAD_IMAGE_REQUESTS])
def test_a_bad_image_input_is_refused_with_its_field_before_anything_is_queued_or_kept(client, fields, field,
                                                                                       message):
    response = client.post("/predictions", json={"prompt": "a valley", **TINY, **with_images(fields)})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert [error["loc"][1] for error in answer["detail"]] == [field]  # ("body", field[, list index])
    assert answer["message"].startswith(field) and message in answer["message"]
    assert len(answer["message"]) < 400  # no base64 echoed back
    assert client.get("/predictions").json()["results"] == []
    store = client.app.state.store
    assert not store.images.exists() or list(store.images.iterdir()) == []  # nothing of it kept


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(model, tmp_path):
    with TestClient(create_app(model, tmp_path / "state", Limits(max_pixels=64 * 32))) as client:
        for field, sent in (("image", picture(64, 40)), ("mask_image", mask(64, 40))):
            response = client.post("/predictions", json={"prompt": "a", "image": png_base64(picture()),
                                                         field: png_base64(sent)})
            assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", field]
            assert "is 64x40 = 2,560 pixels, more than the 2,048 allowed" in response.json()["message"]


def test_the_schema_describes_the_image_fields(client):
    request = client.get("/openapi.json").json()["components"]["schemas"]["PredictionRequest"]
    assert tuple(request["properties"]) == FIELDS and set(IMAGE_FIELDS) <= set(FIELDS)
    properties = request["properties"]

    def kinds(name):
        return [option for option in properties[name].get("anyOf", [properties[name]]) if option["type"] != "null"]

    assert kinds("image") == [{"type": "string"}] and "base64" in properties["image"]["description"]
    assert kinds("mask_image") == [{"type": "string"}] and "black where it is kept" in \
        properties["mask_image"]["description"]
    assert kinds("image_at") == [{"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2,
                                  "maxItems": 2}]
    assert kinds("strength") == [{"type": "number", "exclusiveMinimum": 0, "maximum": 1}]
    assert kinds("resize_image") == [{"type": "boolean"}]


def test_image_files_are_kept_while_a_job_refers_to_them(client, model):
    store = client.app.state.store
    first = client.post("/predictions", json={"prompt": "a", **TINY, "image": png_base64(picture(seed=7))},
                        headers=WAIT).json()
    second = client.post("/predictions", json={"prompt": "a", **TINY, "image": png_base64(picture(seed=7)),
                                               "mask_image": png_base64(mask())}, headers=WAIT).json()
    assert first["status"] == second["status"] == "succeeded"
    image, kept_mask = store.images / first["input"]["image"], store.images / second["input"]["mask_image"]
    outputs = sum(path.stat().st_size for path in store.outputs.iterdir())
    # retention counts them with the outputs: what deleting the finished jobs would free
    assert store._bytes_used() == outputs + image.stat().st_size + kept_mask.stat().st_size
    assert client.delete(f"/predictions/{second['id']}").status_code == 204
    assert image.is_file() and not kept_mask.exists()  # the first job still refers to the image
    assert client.delete(f"/predictions/{first['id']}").status_code == 204
    assert list(store.images.iterdir()) == []
    # a file no job names (a crash between keeping it and queueing the job) is swept at the next start
    stray = store.images / "0123456789abcdef0123456789abcdef.png"
    picture().save(stray)
    store.close()
    store.open()
    assert not stray.exists()


def test_an_image_changed_after_its_job_was_queued_fails_the_job_with_a_sentence(client, tmp_path):
    # a long job ahead holds the worker while the queued job's image is changed
    ahead = client.post("/predictions", json={"prompt": "a", **TINY, "width": 64, "height": 32,
                                              "num_inference_steps": 500}).json()
    queued = client.post("/predictions", json={"prompt": "a", **TINY, "image": png_base64(picture(seed=8))}).json()
    assert queued["status"] == "queued"
    picture(seed=9).save(queued["parameters"]["image"]["path"])
    client.post(f"/predictions/{ahead['id']}/cancel")
    deadline = time.monotonic() + 60
    while (job := client.get(f"/predictions/{queued['id']}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "failed" and "changed after it was checked (its SHA-256 differs)" in job["error"]
    # a failed job keeps no image: removed just after the job is marked failed, so a poll may come between
    kept = Path(job["parameters"]["image"]["path"])
    deadline = time.monotonic() + 10
    while kept.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not kept.exists()
    # what the Ray worker reads too (serve --ray)
    changed = tmp_path / "changed.png"
    picture(seed=8).save(changed)
    record = {"path": str(changed), "sha256": sha256(changed)}
    assert np.array_equal(np.asarray(image_inputs({**job["parameters"], "image": record})["image"]),
                          np.asarray(picture(seed=8)))
    picture(seed=9).save(changed)
    with pytest.raises(ValueError, match="changed after it was checked"):
        image_inputs({**job["parameters"], "image": record})


def test_a_controlsync_server_refuses_the_image_fields(folders, sync_pipe, tmp_path):
    random_controlnet_like(sync_pipe.unet, sync_pipe.vae_scale_factor).save_pretrained(folders / "controlnet")
    control = PanoramaModel.load(str(folders / "model"), "cpu", "float32", controlnets=[str(folders / "controlnet")])
    condition = png_base64(picture())
    with TestClient(create_app(control, tmp_path / "state")) as client:
        for field, value in (("image", png_base64(picture())), ("mask_image", png_base64(mask())), ("strength", 0.5),
                             ("image_at", [0, 0]), ("resize_image", False)):
            response = client.post("/predictions", json={"prompt": "a", "condition": condition, field: value})
            assert response.status_code == 422, response.text
            assert [error["loc"][-1] for error in response.json()["detail"]] == [field]
            assert response.json()["message"] == (
                f"{field} is an image input's field, and this server makes ControlSync panoramas, which take none: "
                f"leave it out, or send it to a server started without --controlnet.")
        assert client.get("/predictions").json()["results"] == []
        schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictionRequest"]
        assert not set(IMAGE_FIELDS) & set(schema["properties"])  # not advertised either


class PictureEngine:
    """A Ray engine's calls, made here on the pipeline: what serve --ray hands its workers."""

    def __init__(self, pipe):
        self.pipe, self.on_step, self.calls, self.running = pipe, None, [], {}
        self.held = False  # no worker free: jobs stay queued

    def geometry(self):
        return self.pipe.geometry

    def runs_on(self):
        return "cpu", "float32"

    def family_defaults(self):
        return {}

    def free(self):
        return 0 if self.held else 1 - len(self.running)

    def submit(self, key, call):
        self.calls.append(call)
        self.running[key] = call

    def cancel(self, key):
        pass

    def wait(self, timeout):
        done = [Done(key, made=Made(self.pipe(**call).images[0], 0.1, "cpu", "float32"))
                for key, call in self.running.items()]
        self.running.clear()
        return done


def test_serve_on_ray_hands_the_workers_the_image_inputs_as_pictures(model, folders, tmp_path):
    engine = PictureEngine(model.pipe)
    workers = WorkersModel(str(folders / "model"), engine, source=resolve_model(str(folders / "model")))
    image, repainted = picture(seed=10), mask(left=16)
    with TestClient(create_app(workers, tmp_path / "state", engine=engine)) as client:
        job = client.post("/predictions", json={"prompt": "a", **TINY, "image": png_base64(image), "strength": 0.75,
                                                "mask_image": png_base64(repainted)}, headers=WAIT).json()
        assert job["status"] == "succeeded", job["error"]
        call = engine.calls[0]
        assert isinstance(call["image"], PIL.Image.Image) and np.array_equal(np.asarray(call["image"]),
                                                                             np.asarray(image))
        assert np.array_equal(np.asarray(call["mask_image"]), np.asarray(repainted))
        assert (call["strength"], call["image_at"], call["resize_image"]) == (0.75, None, False)
        png = tmp_path / "ray.png"
        png.write_bytes(client.get(job["urls"]["output"]).content)
        assert read_parameters(png)["mask_image"] == job["parameters"]["mask_image"]

        # an image changed in the state folder before its job is handed out fails that job, with the sentence
        engine.held = True
        queued = client.post("/predictions", json={"prompt": "a", **TINY, "image": png_base64(picture(seed=14))}).json()
        picture(seed=15).save(queued["parameters"]["image"]["path"])
        engine.held = False
        client.app.state.worker.notify()
        deadline = time.monotonic() + 30
        while (job := client.get(f"/predictions/{queued['id']}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job["status"] == "failed" and "changed after it was checked" in job["error"]
        assert len(engine.calls) == 1  # never handed out


def test_the_page_takes_an_image_and_a_mask_through_the_requests_checks(tmp_path, model):
    """The page's generate, as Gradio calls it: an uploaded image and mask reach the panorama, and
    the API's sentences refuse what it refuses."""
    import gradio as gr

    from panosync.server.ui import build_ui, corner, strength_for_mask

    page = build_ui(model, Limits(), tmp_path / "outputs")
    generate = next(fn for fn in page.fns.values() if fn.name == "generate")
    ids = [component.elem_id for component in generate.inputs]
    assert {"image", "mask_image", "strength", "image_at", "resize_image"} <= set(ids)
    picture(seed=11).save(tmp_path / "image.png")
    mask().save(tmp_path / "mask.png")
    chosen = {"prompt": "a valley", "width": 64, "height": 32, **TINY, "seed": 12, "randomize": False,
              "image": str(tmp_path / "image.png"), "mask_image": str(tmp_path / "mask.png"), "strength": 1.0,
              "image_at": ""}

    def run(**changes):
        values = {**chosen, **changes}
        return generate.fn(*[values.get(id, component.value) for id, component in zip(ids, generate.inputs)],
                           progress=lambda *args, **kwargs: None)

    path, *_ = run()
    stored = read_parameters(path)
    kept = tmp_path / "outputs" / "images"
    assert stored["image"]["path"].startswith(str(kept))
    assert stored["image"]["sha256"] == sha256(stored["image"]["path"])
    assert stored["mask_image"]["sha256"] == sha256(stored["mask_image"]["path"]) and stored["strength"] == 1.0
    parameters = {name: stored[name] for name in model.defaults if name not in IMAGE_FIELDS}
    expected = model.pipe(**parameters, image=picture(seed=11), mask_image=mask(), strength=1.0,
                          output_type="np").images
    assert np.array_equal(np.asarray(PIL.Image.open(path)), as_uint8(expected))
    for changes, sentence in (({"image_at": "40,0"}, "An image of 64x32 pixels at 40,0 runs past the 64x32 canvas"),
                              ({"image_at": "1"}, "image_at must be two whole numbers X,Y"),
                              ({"image": None}, MASK_WITHOUT_IMAGE),
                              ({"mask_image": str(tmp_path / "image.png")}, "The mask has colours")):
        with pytest.raises(gr.Error, match=sentence):
            run(**changes)
    without = read_parameters(run(image=None, mask_image=None)[0])  # no image: none recorded, as the command's
    assert (without["image"], without["strength"], without["image_at"]) == (None, None, None)
    assert corner(" 3, 4") == [3, 4] and corner("") is None
    assert strength_for_mask("mask.png", 0.8) == 1.0 and strength_for_mask(None, 1.0) == 0.8
    assert strength_for_mask("mask.png", 0.5) == 0.5


@pytest.mark.slow
@pytest.mark.browser
def test_the_page_uploads_an_image_and_a_mask_in_a_browser(tmp_path):
    """In headless Chromium: the uploaded image sets the canvas, the mask sets the strength to
    inpainting's, and the panorama's PNG names both."""
    import shutil
    import socket

    from conftest import make_pipe

    from panosync.server.ui import build_ui, launch
    from panosync.settings import model_defaults

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import expect, sync_playwright

    small = PanoramaModel(make_pipe(window=8, vae_factor=2), "tiny-test", model_defaults(resolve_model("tiny-random")))
    picture(48, 16, seed=13).save(tmp_path / "image.png")
    mask(48, 16, 24).save(tmp_path / "mask.png")
    page_app = build_ui(small, Limits(), tmp_path / "outputs")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch(page_app, tmp_path / "outputs", "127.0.0.1", port, block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1400})
                page.goto(f"http://127.0.0.1:{port}/")
                page.locator("#prompt textarea").fill("a valley")
                page.locator("#image-settings button.label-wrap").click()
                expect(page.locator("#strength input[type=number]")).to_have_value("0.8")
                page.locator("#image input[type=file]").set_input_files(str(tmp_path / "image.png"))
                expect(page.locator("#width input[type=number]")).to_have_value("48", timeout=30_000)
                expect(page.locator("#height input[type=number]")).to_have_value("16")
                page.locator("#mask_image input[type=file]").set_input_files(str(tmp_path / "mask.png"))
                expect(page.locator("#strength input[type=number]")).to_have_value("1", timeout=30_000)
                page.locator("#diffusion-settings button.label-wrap").click()
                field = page.locator("#num_inference_steps input[type=number]")
                field.fill("2")
                field.press("Enter")
                page.locator("#generate").click()
                expect(page.locator("#summary")).to_contain_text("48 × 16", timeout=120_000)
                assert "from the image" in page.locator("#summary").inner_text()
            finally:
                browser.close()
    finally:
        page_app.close()
    png = next((tmp_path / "outputs").glob("panosync-*.png"))
    stored = read_parameters(png)
    assert np.array_equal(np.asarray(PIL.Image.open(stored["image"]["path"])), np.asarray(picture(48, 16, seed=13)))
    assert np.array_equal(np.asarray(PIL.Image.open(stored["mask_image"]["path"])), np.asarray(mask(48, 16, 24)))
    assert stored["strength"] == 1.0 and stored["num_inference_steps"] == 2
