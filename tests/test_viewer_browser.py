"""The 360° view's Photo Sphere Viewer (vendored in src/panosync/server/static/, docs/viewer.md) in a
real browser: headless Chromium (Debian's `chromium`) driven by Playwright loads a panorama's JPEG
in a minimal page served from 127.0.0.1, and PSV places it on the sphere as the file's GPano XMP
says. The page test (test_server_ui.py) looks around in the same viewer on the web page."""

import base64
import functools
import http.server
import io
import shutil
import threading

import numpy as np
import PIL.Image
import pytest

from panosync.metadata import save_panorama
from panosync.photosphere import gpano_fields, read_gpano
from panosync.server.viewer import ASSETS, viewer_source

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                                             ".ci/run installs it")

PAGE = """<!doctype html>
<meta charset="utf-8">
<link rel="stylesheet" href="psv/core/index.css">
<div id="view" style="width: 640px; height: 320px"></div>
<script type="module">
  import { Viewer } from './psv/core/index.module.js';
  new Viewer({ container: 'view', panorama: new URLSearchParams(location.search).get('src') });
</script>
"""
# what PSV made of the file (its EquirectangularAdapter reads the XMP: useXmpData, on by default)
PANO_DATA = "() => document.getElementById('view').photoSphereViewer?.state.textureData?.panoData"


def landscape(width: int, height: int) -> PIL.Image.Image:
    """Sky over ground with hills that wrap round: a picture with a horizon and no noise."""
    x, y = np.meshgrid(np.arange(width) / width, np.arange(height) / height)
    ground = y > 0.5 + 0.15 * np.sin(6 * np.pi * x)
    sky = np.stack([120 + 80 * y, 160 + 60 * y, 235 + 0 * y], -1)
    grass = np.stack([60 + 40 * np.sin(2 * np.pi * x) ** 2, 140 - 40 * y, 60 + 0 * y], -1)
    return PIL.Image.fromarray(np.where(ground[..., None], grass, sky).astype(np.uint8))


def expected_pano_data(width: int, height: int) -> dict:
    fields = gpano_fields(width, height)
    return dict(fullWidth=fields["FullPanoWidthPixels"], fullHeight=fields["FullPanoHeightPixels"],
                croppedWidth=fields["CroppedAreaImageWidthPixels"], croppedHeight=fields["CroppedAreaImageHeightPixels"],
                croppedX=fields["CroppedAreaLeftPixels"], croppedY=fields["CroppedAreaTopPixels"])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The minimal page and the vendored viewer, served from a folder on 127.0.0.1: (URL, folder)."""
    folder = tmp_path_factory.mktemp("site")
    (folder / "view.html").write_text(PAGE)
    shutil.copytree(ASSETS, folder / "psv")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()
    thread.join()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # WebGL runs on SwiftShader here (ANGLE on Vulkan), with no flag beyond the sandbox's
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def pano_data_shown(browser, site, name: str) -> dict:
    """Load `name` (a file of the site's folder) in PSV; what it made of the file's metadata."""
    url, _ = site
    page = browser.new_page()
    try:
        elsewhere = []  # the viewer must work offline: no request may leave this machine
        page.on("request", lambda request: request.url.startswith((url, "data:", "blob:"))
                or elsewhere.append(request.url))
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{url}view.html?src={name}")
        try:
            page.wait_for_function(PANO_DATA, timeout=15_000)
        except Exception:
            raise AssertionError(f"PSV showed no panorama; page errors: {errors}") from None
        assert elsewhere == []
        return page.evaluate(PANO_DATA)
    finally:
        page.close()


@pytest.mark.browser
@needs_chromium
@pytest.mark.parametrize("width, height", [(512, 127), (256, 128)])
def test_the_viewer_places_a_jpeg_as_its_gpano_says(browser, site, width, height):
    """A loop-closed JPEG as panosync writes it: PSV reads the band from its XMP. 512 × 127 is a
    band whose top row (64, rounded down) PSV would put elsewhere by itself (65: it rounds half
    up), so it is right only when read from the file; 256 × 128 is the whole sphere."""
    _, folder = site
    name = f"pano-{width}x{height}.jpg"
    save_panorama(landscape(width, height), folder / name, {"loop_closure": True})
    shown = pano_data_shown(browser, site, name)
    assert {key: shown[key] for key in expected_pano_data(width, height)} == expected_pano_data(width, height)


@pytest.mark.browser
@needs_chromium
def test_the_viewer_places_the_pages_jpeg_as_its_gpano_says(browser, site):
    """The page's own JPEG (viewer_source): a panorama wider than the viewer's JPEG, scaled down
    (to 4096 × 513, a band PSV by itself would put a row lower), placed as its XMP says."""
    _, folder = site
    source = viewer_source(landscape(5000, 626))
    (folder / "page.jpg").write_bytes(base64.b64decode(source.split(",", 1)[1]))
    shown = pano_data_shown(browser, site, "page.jpg")
    assert {key: shown[key] for key in expected_pano_data(4096, 513)} == expected_pano_data(4096, 513)


def test_the_pages_jpeg_carries_the_gpano_of_its_own_size():
    """viewer_source: at most 4096 wide, with the GPano of the size sent; a panorama taller than the
    sphere is cut to the sphere (its middle W/2 rows)."""
    for size, sent in [((640, 80), (640, 80)), ((5000, 626), (4096, 513)), ((64, 48), (64, 32))]:
        source = viewer_source(landscape(*size))
        assert source.startswith("data:image/jpeg;base64,")
        with PIL.Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as jpeg:
            assert jpeg.format == "JPEG" and jpeg.size == sent
            gpano = read_gpano(jpeg.info["xmp"].decode("utf-8"))
        assert gpano == {name: str(value) for name, value in gpano_fields(*sent).items()}
