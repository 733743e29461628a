"""The web page in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright sets a
prompt, generates a tiny loop-closed panorama, finds the image and looks around in the 360° view;
with a ControlNet, uploads a condition and gets a panorama that follows it."""

import io
import shutil
import socket

import numpy as np
import PIL.Image
import pytest

from conftest import make_pipe
from panosync.settings import model_defaults
from panosync.metadata import read_parameters
from panosync.models import resolve_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                                          ".ci/run installs it")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def page_url(tmp_path):
    from panosync.server.generation import PanoramaModel
    from panosync.server.limits import Limits
    from panosync.server.ui import build_ui, launch

    # 16-pixel windows (window 8, VAE factor 2): a panorama in a second or two on a CPU
    model = PanoramaModel(make_pipe(window=8, vae_factor=2), "tiny-test", model_defaults(resolve_model("tiny-random")))
    page = build_ui(model, Limits(), tmp_path / "outputs")
    port = free_port()
    launch(page, tmp_path / "outputs", "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


def set_number(page, elem_id, value):
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Enter")


def at_rest(page, element, state):
    """`state` (a JS function of `element`) once two readings 100 ms apart agree: after PSV's inertia."""
    readings = [element.evaluate(state)]
    for _ in range(50):
        page.wait_for_timeout(100)
        readings.append(element.evaluate(state))
        if readings[-1] == readings[-2]:
            return readings[-1]
    raise AssertionError(f"the 360° view is still moving after 5 s: {readings[-1]}")


def test_page_generates_a_panorama_and_looks_around_it(page_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            elsewhere = []  # the page must work offline: no request may leave this machine
            page.on("request", lambda request: request.url.startswith((page_url, "data:", "blob:"))
                    or elsewhere.append(request.url))
            page.goto(page_url)
            page.locator("#prompt textarea").fill("a green landscape with hills")
            set_number(page, "width", 48)
            set_number(page, "height", 16)
            page.locator("#loop_closure input[type=checkbox]").check()
            page.locator("#diffusion-settings button.label-wrap").click()  # open the accordions
            page.locator("#sync-settings button.label-wrap").click()
            page.locator("#preset").get_by_text("fast", exact=True).click()
            # the fast preset: the paper's 50 steps, synced in the first quarter (13)
            expect(page.locator("#num_inference_steps input[type=number]")).to_have_value("50")
            expect(page.locator("#sync_threshold input")).to_have_value("13")
            set_number(page, "num_inference_steps", 3)
            page.locator("#sync_threshold input").fill("1")  # one synced step: quick, and still SyncDiffusion
            page.locator("#dice").click()  # a new seed, kept for this run
            expect(page.locator("#randomize input[type=checkbox]")).not_to_be_checked()
            seed = int(page.locator("#seed input").input_value())
            page.locator("#generate").click()

            image = page.locator("#panorama img")
            expect(image).to_be_visible(timeout=120_000)
            expect(page.locator("#summary")).to_contain_text("48 × 16", timeout=10_000)
            size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
            assert size == [48, 16]

            # the download is the PNG with every parameter, as the command writes it
            with page.expect_download() as download_info:
                page.locator("#download").click()
            png = tmp_path / "download.png"
            download_info.value.save_as(png)
            parameters = read_parameters(png)
            assert parameters["prompt"] == "a green landscape with hills" and parameters["loop_closure"] is True
            assert parameters["num_inference_steps"] == 3 and parameters["sync_threshold"] == 1
            assert parameters["model"] == "tiny-test" and parameters["seed"] == seed
            assert PIL.Image.open(png).size == (48, 16)

            # the 360° view (Photo Sphere Viewer) shows the panorama as the band of a sphere its GPano
            # says it is, turns when dragged or with the arrow keys, and zooms when scrolled
            view = page.locator("#viewer .pano360-view")
            expect(view.locator("canvas")).to_be_visible()
            page.wait_for_function("() => document.querySelector('#viewer .pano360-view')"
                                   ".photoSphereViewer?.state.textureData?.panoData", timeout=30_000)
            state = ("v => { const psv = v.photoSphereViewer; return { ...psv.getPosition(),"
                     " zoom: psv.getZoomLevel(), pano: psv.state.textureData.panoData }; }")
            before = view.evaluate(state)
            assert {key: before["pano"][key] for key in ("fullWidth", "fullHeight", "croppedWidth", "croppedHeight",
                                                         "croppedX", "croppedY")} == dict(
                fullWidth=48, fullHeight=24, croppedWidth=48, croppedHeight=16, croppedX=0, croppedY=4)
            box = view.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 - 150, box["y"] + box["height"] / 2, steps=5)
            page.mouse.up()
            dragged = at_rest(page, view, state)
            assert dragged["yaw"] != before["yaw"]
            page.keyboard.down("ArrowRight")  # the view has the focus since it was dragged
            page.wait_for_timeout(200)
            page.keyboard.up("ArrowRight")
            assert at_rest(page, view, state)["yaw"] != dragged["yaw"]
            page.mouse.wheel(0, -300)
            assert at_rest(page, view, state)["zoom"] > before["zoom"]

            assert elsewhere == []

            screenshot = tmp_path / "panosync-ui.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
            assert np.asarray(PIL.Image.open(screenshot)).std() > 0
        finally:
            browser.close()


@pytest.fixture
def control_page_url(tmp_path):
    from panosync.control import ControlSyncPipeline, random_controlnet_like
    from panosync.server.generation import PanoramaModel
    from panosync.server.limits import Limits
    from panosync.server.ui import build_ui, launch

    base = make_pipe(window=8, vae_factor=2)
    pipe = ControlSyncPipeline(**base.components, controlnet=random_controlnet_like(base.unet, base.vae_scale_factor))
    model = PanoramaModel(pipe, "tiny-test", model_defaults(resolve_model("tiny-random"), control=True),
                          controlnets=["tiny-random"])
    page = build_ui(model, Limits(), tmp_path / "outputs")
    port = free_port()
    launch(page, tmp_path / "outputs", "127.0.0.1", port, block=False)
    yield f"http://127.0.0.1:{port}/"
    page.close()


def test_control_page_follows_an_uploaded_condition(control_page_url, tmp_path):
    """Upload a photo: the canvas takes its size and the page shows its Canny edges; the panorama
    follows them, and its PNG names the condition and every control setting."""
    from playwright.sync_api import expect, sync_playwright

    from panosync.conditions import prepare_condition

    rng = np.random.default_rng(0)
    photo = PIL.Image.fromarray(rng.integers(0, 256, (2, 6, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1))
    photo.save(tmp_path / "photo.png")  # 48 x 16: blocks of colour, sharp edges
    expected_edges = prepare_condition(photo, 48, 16, False, "canny", 100, 200)[0].permute(1, 2, 0).mul(255).byte()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(control_page_url)
            page.locator("#prompt textarea").fill("a city at dusk")
            # the steps first: set long before generating, so that the page has taken the new value by then
            page.locator("#diffusion-settings button.label-wrap").click()
            set_number(page, "num_inference_steps", 2)
            page.locator("#condition input[type=file]").set_input_files(str(tmp_path / "photo.png"))
            expect(page.locator("#width input[type=number]")).to_have_value("48", timeout=30_000)
            expect(page.locator("#height input[type=number]")).to_have_value("16")
            page.locator("#preprocess").get_by_text("canny", exact=True).click()
            preview = page.locator("#control_view img")
            expect(preview).to_be_visible(timeout=30_000)  # the edges, before generating
            # the preview is re-rendered while the preprocessing settles: wait for the final image's
            # size itself (a wrong size times out) rather than read one that may be replaced meanwhile
            page.wait_for_function("() => { const img = document.querySelector('#control_view img');"
                                   " return img && img.naturalWidth === 48 && img.naturalHeight === 16; }",
                                   timeout=30_000)
            set_number(page, "controlnet_conditioning_scale", 0.5)
            expect(page.locator("#num_inference_steps input[type=number]")).to_have_value("2")
            page.locator("#generate").click()

            expect(page.locator("#panorama img")).to_be_visible(timeout=120_000)
            expect(page.locator("#summary")).to_contain_text("48 × 16, seed", timeout=10_000)
            assert "following the condition" in page.locator("#summary").inner_text()
            # the condition shown is the Canny edge map the ControlNet saw
            shown = page.locator("#control_view img")
            expect(shown).to_be_visible()
            edges = page.request.get(shown.get_attribute("src")).body()
            assert np.array_equal(np.asarray(PIL.Image.open(io.BytesIO(edges)).convert("RGB")), expected_edges.numpy())

            with page.expect_download() as download_info:
                page.locator("#download").click()
            png = tmp_path / "download.png"
            download_info.value.save_as(png)
            parameters = read_parameters(png)
            assert PIL.Image.open(png).size == (48, 16)
            assert {name: parameters[name] for name in ("preprocess", "canny_low", "canny_high", "controlnet_conditioning_scale",
                                                        "controlnet", "num_inference_steps")} == dict(
                preprocess="canny", canny_low=100, canny_high=200, controlnet_conditioning_scale=[0.5], controlnet=["tiny-random"],
                num_inference_steps=2)
            stored = PIL.Image.open(parameters["condition"][0])
            assert np.array_equal(np.asarray(stored), np.asarray(photo))  # the photo, kept beside the panoramas
            page.screenshot(path=str(tmp_path / "panosync-ui-control.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'panosync-ui-control.png'}")
        finally:
            browser.close()


def test_the_page_hands_a_number_over_as_typed_for_the_requests_checks(tmp_path):
    """Gradio rounded a typed seed of 7.5 to 8 (precision 0) and refused 1000 in its own words
    (minimum and maximum): the page's numbers now reach the request's checks as typed."""
    import json

    from pydantic import ValidationError

    from panosync.server.generation import PanoramaModel
    from panosync.server.limits import Limits
    from panosync.server.schema import PredictionRequest, describe_error
    from panosync.server.ui import build_ui, page_values

    model = PanoramaModel(make_pipe(window=8, vae_factor=2), "tiny-test", model_defaults(resolve_model("tiny-random")))
    config = json.loads(json.dumps(build_ui(model, Limits(), tmp_path / "outputs").get_config_file(), default=str))
    numbers = {c["props"]["elem_id"]: c["props"] for c in config["components"]
               if c.get("type") == "number" and c["props"].get("elem_id") in ("seed", "sync_threshold", "anchor")}
    assert set(numbers) == {"seed", "sync_threshold", "anchor"}
    for name, props in numbers.items():
        assert props.get("precision") is None and props.get("minimum") is None and props.get("maximum") is None, name
    for fields, sentence in (({"seed": 7.5}, "seed must be a whole number, got 7.5."),
                             ({"seed": 7.0, "sync_threshold": -1.0}, "sync_threshold must be from 0 to 1000, got -1.")):
        with pytest.raises(ValidationError) as refused:
            PredictionRequest(prompt="a", **page_values(tuple(fields), tuple(fields.values())))
        assert describe_error(refused.value.errors()[0]) == sentence
