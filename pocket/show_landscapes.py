"""Save a contact sheet of pocket landscapes: every attribute combination, and some wide renders.

    python -m pocket.show_landscapes sheet.png [--seed 0] [--per-combination 3] [--wide 2]
                                                [--scale 2] [--classify]

The grid is 9 tiles wide: the 27 (time, ground, terrain) combinations, each rendered
`--per-combination` times with different seeds (3 by default: a 9x9 grid, one time and ground
per row, terrains mountains | hills | sea across).  Below it, `--wide` 512x64 renders.  With
--classify each tile is labelled with the hand-made classifier's answer (x marks a mistake).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from panosync.files import write_atomically

from .landscapes import ATTRIBUTES, render_landscape


def contact_sheet(seed: int = 0, per_combination: int = 3, wide: int = 2, wide_width: int = 512,
                  scale: int = 3, gap: int = 2, classify: bool = False) -> Image.Image:
    combos = list(itertools.product(*ATTRIBUTES.values()))
    tiles = []
    for k, (time, ground, terrain) in enumerate(combos):
        attrs = {"time": time, "ground": ground, "terrain": terrain}
        for j in range(per_combination):
            tiles.append((attrs, render_landscape(attrs, seed * 1000 + k * 10 + j)))
    grid_cols = 9
    grid_rows = -(-len(tiles) // grid_cols)
    tile = 64 * scale
    label_h = 12 if classify else 0
    width = grid_cols * (tile + gap) + gap
    wide_width_px = min(wide_width * scale, width - 2 * gap)
    wide_scale = wide_width_px / wide_width
    wide_h = int(round(64 * wide_scale))
    height = grid_rows * (tile + gap + label_h) + gap + wide * (wide_h + gap + 12) + gap
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if classify:
        from .classify import classify as classify_image
    for n, (attrs, image) in enumerate(tiles):
        r, c = divmod(n, grid_cols)
        x0, y0 = gap + c * (tile + gap), gap + r * (tile + gap + label_h)
        sheet.paste(Image.fromarray(image).resize((tile, tile), Image.NEAREST), (x0, y0))
        if classify:
            got = classify_image(image)
            text = " ".join(("" if got[k] == attrs[k] else "x") + got[k][:3] for k in ATTRIBUTES)
            draw.text((x0, y0 + tile), text, fill=(0, 0, 0))
    y = gap + grid_rows * (tile + gap + label_h)
    rng = np.random.default_rng(seed)
    for i in range(wide):
        attrs = {k: str(v[rng.integers(len(v))]) for k, v in ATTRIBUTES.items()}
        if i == 0:
            attrs = {"time": "sunset", "ground": "snow", "terrain": "mountains"}
        image = render_landscape(attrs, seed * 1000 + 900 + i, wide_width, 64)
        draw.text((gap, y), f"{wide_width}x64: " + ", ".join(attrs.values()), fill=(0, 0, 0))
        y += 12
        sheet.paste(Image.fromarray(image).resize((wide_width_px, wide_h), Image.NEAREST), (gap, y))
        y += wide_h + gap
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="PNG path to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-combination", type=int, default=3)
    parser.add_argument("--wide", type=int, default=2, help="number of 512x64 renders")
    parser.add_argument("--scale", type=int, default=2, help="pixel magnification of the tiles")
    parser.add_argument("--classify", action="store_true", help="label tiles with the classifier")
    args = parser.parse_args()
    sheet = contact_sheet(args.seed, args.per_combination, args.wide, scale=args.scale,
                          classify=args.classify)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out, lambda file: sheet.save(file, format="PNG"))
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
