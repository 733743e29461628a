"""Does a texture made with `tile xy` tile? The jump where its edges meet against its other view
boundaries, on both axes (issue 30), as pocket.wrap measures the 360° wrap.

With tile xy the views go round both axes and the decoder wraps both ways, so where the right edge
meets the left and the bottom meets the top is one more place where views begin. This script makes
textures with pocket's recommended (synced) settings on seeds never used before, and measures, for
the columns and for the rows, the jump across the meeting edges (the mean absolute difference of the
two pixel lines) against the jumps across the other view boundaries: the ratio to their mean and
the edge's percentile among them (about 50 % if it is like any other boundary). The same canvas
made without tile is the control: its edges were never neighbours, so they jump.

    python -m pocket.tile --out docs/tile
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

from panosync.files import write_atomically
from panosync.views import views_for_canvas
from .quality import load_for_measurement
from .wrap import summary, wrap_figures

PROMPT = "snowy mountains"


def boundaries(length: int, other: int, window: int, stride: int, factor: int) -> list[int]:
    """Pixel lines (0 <= c < length) along one axis of a canvas that tiles where some view begins or
    ends; 0 is where the edges meet. `other`: the canvas's side along the other axis."""
    views = views_for_canvas(other // factor, length // factor, window, stride, loop_closure=True)
    return sorted({(view.left * factor) % length for view in views} | {(view.right * factor) % length
                                                                       for view in views})


def texture(pipe, seed: int, side: int, settings: dict, tile: str | None) -> np.ndarray:
    image = pipe(PROMPT, width=side, height=side, seed=seed, tile=tile, view_batch_size=32, output_type="np",
                 **settings).images[0]
    return (image * 255).round().astype(np.uint8)


def figures(image: np.ndarray, lines: list[int]) -> dict:
    """The wrap figures of the columns (left meets right) and of the rows (top meets bottom)."""
    return {"columns": wrap_figures(image, lines), "rows": wrap_figures(image.transpose(1, 0, 2), lines)}


def repeated(image: np.ndarray, times: int = 2) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.tile(image, (times, times, 1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--control-seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=9800)  # never used before this measurement
    parser.add_argument("--windows", type=int, default=2, help="the texture's side in windows")
    parser.add_argument("--out", type=Path, default=Path("docs/tile"))
    args = parser.parse_args(argv)
    started = time.time()
    pipe, recommended = load_for_measurement("pocket")
    factor = pipe.vae_scale_factor
    side = args.windows * pipe.window * factor
    stride = recommended.get("stride") or pipe.window // 4
    settings = {key: value for key, value in recommended.items() if value is not None}
    lines = boundaries(side, side, pipe.window, stride, factor)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    report = {"model": "pocket", "prompt": PROMPT, "side": side, "settings": settings, "seeds": seeds, "methods": {}}
    pictures = {}
    for name, tile, chosen in (("tile xy", "xy", seeds), ("no tile (control)", None, seeds[:args.control_seeds])):
        per_texture = []
        for seed in chosen:
            image = texture(pipe, seed, side, settings, tile)
            pictures.setdefault(name, image)
            per_texture.append({"seed": seed, **figures(image, lines)})
            print(json.dumps(per_texture[-1]), file=sys.stderr, flush=True)
        report["methods"][name] = {
            axis: summary([entry[axis] for entry in per_texture]) for axis in ("columns", "rows")}
        report["methods"][name]["per_texture"] = per_texture
    report["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out.with_suffix(".json"), json.dumps(report, indent=1) + "\n")
    # the first texture of each, repeated 2 × 2: a seam would show as a cross in the middle
    tiled, control = (repeated(pictures[name]) for name in ("tile xy", "no tile (control)"))
    gap = 16
    sheet = PIL.Image.new("RGB", (tiled.width * 2 + gap, tiled.height), "white")
    sheet.paste(tiled, (0, 0))
    sheet.paste(control, (tiled.width + gap, 0))
    write_atomically(args.out.with_suffix(".png"), lambda file: sheet.save(file, format="PNG"))
    print(json.dumps({name: {axis: method[axis] for axis in ("columns", "rows")}
                      for name, method in report["methods"].items()}, indent=1))


if __name__ == "__main__":
    main()
