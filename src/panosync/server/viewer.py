"""The web page's 360° look-around view of a loop-closed panorama: Photo Sphere Viewer (PSV, the npm
package @photo-sphere-viewer/core, on three.js), vendored in static/photo-sphere-viewer/ by
scripts/vendor-viewer.sh and served by the page itself, so it works offline (docs/viewer.md).

The page hands the viewer a JPEG (a data URL) that carries the Photo Sphere XMP (GPano) of its own
size; PSV reads that XMP from the file to place the image on the sphere: a W × H panorama is the
band of a W × W/2 equirectangular sphere centred on the horizon (photosphere.py). Dragging or the
arrow keys (once the view has the focus) turn it, scrolling or the navbar zooms. It opens as tall
as the band (up to 90°) and never looks above or below it; zoomed out further, the band is seen
round the sphere, centred.

For a `gr.HTML(value, html_template=TEMPLATE, css_template=CSS, js_on_load=JS_ON_LOAD, head=HEAD,
apply_default_css=False)` (Gradio's default CSS would colour PSV's buttons as text), with ASSETS
among the page's allowed paths (ui.launch).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.parse
from pathlib import Path

import PIL.Image

from ..photosphere import gpano_fields, xmp_packet

MAX_VIEWER_WIDTH = 4096  # the browser receives a JPEG at most this wide; the PNG download keeps every pixel
ASSETS = (Path(__file__).parent / "static" / "photo-sphere-viewer").resolve()  # PSV and three.js, as vendored
# Gradio serves a file of an allowed path at gradio_api/file=<its absolute path>; relative to the page
ASSETS_URL = "gradio_api/file=" + urllib.parse.quote(ASSETS.as_posix(), safe="/:")

HEAD = f'<link rel="stylesheet" href="{ASSETS_URL}/core/index.css">'

# No ${value} here: gr.HTML redraws its template's elements when the rendered text changes, and
# that would take away the elements PSV adds to its container. The value reaches JS_ON_LOAD instead.
TEMPLATE = """<div class="pano360">
  <div class="pano360-view" tabindex="0" aria-label="360 degree view: drag or use the arrow keys to look around"></div>
  <div class="pano360-hint">360° view: drag or use the arrow keys to look around, scroll to zoom</div>
</div>"""

CSS = """
.pano360-view { width: 100%; height: 320px; border-radius: 6px; overflow: hidden; }
.pano360-hint { font-size: 0.85em; opacity: 0.7; margin-top: 4px; }
"""

# `element`, `props` and `watch` are given by gr.HTML; props.value is the JPEG's data URL. (The
# assets' URL is written in, not a prop: a gr.HTML shown by an update gets only the update's props.)
# Keys move the view only while it has the focus: PSV would otherwise take the arrow keys from the
# whole page.
JS_ON_LOAD = """
const container = element.querySelector('.pano360-view');
const psv = import(new URL(ASSETS_URL + '/core/index.module.js', document.baseURI).href);
let viewer = null;

// The latitudes (degrees) the image covers, from the GPano XMP PSV read from the file.
function band() {
  const data = viewer.state.textureData?.panoData;
  if (!data) return null;
  const top = 90 - 180 * data.croppedY / data.fullHeight;
  return { top, bottom: top - 180 * data.croppedHeight / data.fullHeight };
}

// Open as tall as the band (PSV's widest view is 90° tall): zoom in to half that, out to 90°.
function fitZoom() {
  const latitudes = band();
  if (!latitudes) return;
  const tall = Math.min(viewer.config.maxFov, latitudes.top - latitudes.bottom);
  viewer.setOption('minFov', Math.min(30, tall / 2));
  viewer.zoom(100 * (viewer.config.maxFov - tall) / (viewer.config.maxFov - viewer.config.minFov));
}

// Keep the view's top and bottom inside the band; a view taller than the band looks at its middle.
function keepInBand() {
  const latitudes = band();
  if (!latitudes) return;
  const { top, bottom } = latitudes;
  const half = viewer.state.vFov / 2;
  const lowest = bottom + half, highest = top - half;
  const pitch = viewer.getPosition().pitch * 180 / Math.PI;
  const kept = lowest > highest ? (top + bottom) / 2 : Math.min(highest, Math.max(lowest, pitch));
  if (Math.abs(kept - pitch) > 1e-3) viewer.rotate({ yaw: viewer.getPosition().yaw, pitch: kept * Math.PI / 180 });
}

// Show props.value; none (the page hides the view) lets the viewer go: its WebGL context and its
// listeners on the window, as gr.HTML takes the element away when hidden and makes a new one.
function show() {
  psv.then(({ Viewer }) => {
    const source = props.value;
    if (!source) {
      viewer?.destroy();
      viewer = null;
    } else if (viewer) {
      viewer.setPanorama(source, { transition: false, position: { yaw: 0, pitch: 0 } });
    } else {
      viewer = new Viewer({ container, panorama: source, navbar: ['zoom', 'move', 'fullscreen'], keyboard: false });
      viewer.addEventListener('panorama-loaded', fitZoom);
      viewer.addEventListener('position-updated', keepInBand);
      viewer.addEventListener('zoom-updated', keepInBand);
    }
  });
}

container.addEventListener('focusin', () => viewer?.startKeyboardControl());
container.addEventListener('focusout', () => viewer?.stopKeyboardControl());
container.addEventListener('pointerdown', () => container.focus());
watch('value', show);
show();
""".replace("ASSETS_URL", json.dumps(ASSETS_URL))


def viewer_source(image: PIL.Image.Image) -> str:
    """A loop-closed panorama as the viewer loads it: a JPEG data URL (no request of its own),
    at most MAX_VIEWER_WIDTH wide, carrying the GPano XMP of that JPEG's own size. A panorama taller
    than the sphere (H > W/2) is cut to its middle W/2 rows: all of the sphere there is."""
    if image.width > MAX_VIEWER_WIDTH:
        image = image.resize((MAX_VIEWER_WIDTH, max(1, round(image.height * MAX_VIEWER_WIDTH / image.width))),
                             PIL.Image.Resampling.LANCZOS)
    if image.height > image.width // 2:
        top = (image.height - image.width // 2) // 2
        image = image.crop((0, top, image.width, top + image.width // 2))
    packet = xmp_packet(gpano_fields(image.width, image.height))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90, xmp=packet.encode("utf-8"))
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
