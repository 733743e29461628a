"""A 360° look-around view of a loop-closed panorama, for the web page: a canvas that shows the
panorama as seen from the centre of a cylinder, turned by dragging (or the arrow keys) and zoomed
by scrolling. Self-contained HTML and JavaScript: nothing is loaded from elsewhere, so it works
offline.

A loop-closed panorama covers 360° across its width, so it is the inside of a cylinder whose
circumference is the image's width. Every column of the canvas looks along one direction; it
shows the panorama's column at that angle, stretched by the distance to the cylinder there, as
a pinhole camera would see it.
"""

from __future__ import annotations

import base64
import io

import PIL.Image

MAX_VIEWER_WIDTH = 4096  # the browser receives a JPEG at most this wide; the PNG download keeps every pixel

TEMPLATE = """<div class="pano360" data-src="${value}">
  <canvas tabindex="0" aria-label="360 degree view: drag or use the arrow keys to look around"></canvas>
  <div class="pano360-hint">360° view: drag or use ← → to look around, scroll to zoom</div>
</div>"""

CSS = """
.pano360 canvas { width: 100%; height: 320px; display: block; background: #111; cursor: grab; border-radius: 6px; }
.pano360 canvas:active { cursor: grabbing; }
.pano360-hint { font-size: 0.85em; opacity: 0.7; margin-top: 4px; }
"""

# `element`, `props` and `watch` are given by gr.HTML. The template re-renders (a new canvas) when
# the value changes, so the canvas is looked up on every draw and events are caught on `element`.
JS_ON_LOAD = """
const view = { image: null, yaw: 0, zoom: 1, dragX: null };

function canvas() { return element.querySelector('.pano360 canvas'); }

function draw() {
  const target = canvas();
  if (!target) return;
  const width = Math.max(160, Math.round(target.clientWidth || 640));
  const height = Math.max(120, Math.round(target.clientHeight || 320));
  if (target.width !== width || target.height !== height) { target.width = width; target.height = height; }
  const context = target.getContext('2d');
  context.fillStyle = '#111';
  context.fillRect(0, 0, width, height);
  const image = view.image;
  if (!image) return;
  const W = image.naturalWidth, H = image.naturalHeight;
  const radius = W / (2 * Math.PI);
  // at zoom 1 the panorama's height fills the canvas's height straight ahead
  const focal = view.zoom * height * radius / H;
  for (let x = 0; x < width; x++) {
    const angle = Math.atan((x + 0.5 - width / 2) / focal);
    const column = Math.floor(((view.yaw + angle) / (2 * Math.PI)) * W);
    const source = ((column % W) + W) % W;
    const tall = H * focal / (radius * Math.cos(angle));
    context.drawImage(image, source, 0, 1, H, x, (height - tall) / 2, 1, tall);
  }
}

function load() {
  const holder = element.querySelector('.pano360');
  const source = holder ? holder.dataset.src : '';
  if (!source) { view.image = null; draw(); return; }
  const image = new Image();
  image.onload = () => { view.image = image; view.yaw = 0; view.zoom = 1; draw(); };
  image.src = source;
}

function turn(pixels) {
  const target = canvas();
  if (!view.image || !target) return;
  const radius = view.image.naturalWidth / (2 * Math.PI);
  const focal = view.zoom * target.height * radius / view.image.naturalHeight;
  view.yaw += pixels / focal;
  draw();
}

element.addEventListener('pointerdown', (event) => {
  if (event.target !== canvas()) return;
  view.dragX = event.clientX;
  event.target.setPointerCapture(event.pointerId);
});
element.addEventListener('pointermove', (event) => {
  if (view.dragX === null) return;
  turn(view.dragX - event.clientX);  // drag the scene: it moves with the pointer
  view.dragX = event.clientX;
});
element.addEventListener('pointerup', () => { view.dragX = null; });
element.addEventListener('pointercancel', () => { view.dragX = null; });
element.addEventListener('keydown', (event) => {
  if (event.target !== canvas()) return;
  if (event.key === 'ArrowLeft') { turn(-40); event.preventDefault(); }
  if (event.key === 'ArrowRight') { turn(40); event.preventDefault(); }
});
element.addEventListener('wheel', (event) => {
  if (event.target !== canvas() || !view.image) return;
  view.zoom = Math.min(4, Math.max(0.5, view.zoom * Math.exp(-event.deltaY / 500)));
  draw();
  event.preventDefault();
}, { passive: false });
window.addEventListener('resize', draw);
watch('value', load);
load();
"""


def viewer_source(image: PIL.Image.Image) -> str:
    """The panorama as a data URL the viewer can load without a request of its own."""
    if image.width > MAX_VIEWER_WIDTH:
        image = image.resize((MAX_VIEWER_WIDTH, max(1, round(image.height * MAX_VIEWER_WIDTH / image.width))),
                             PIL.Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
