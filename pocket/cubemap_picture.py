"""docs/cubemap.md's pictures: a panorama of the whole sphere (512 × 256, above) and the six faces
`panosync export --cubemap` cuts from it, laid out as a cross (below), each face named; once for a
pocket panorama (docs/cubemap.png), once for a labelled pattern (docs/cubemap-pattern.png): a
colour for each quarter of longitude, brighter above the horizon, lines every 30°, a magenta north
cap and words at the horizon, which show each face's place and which way up it is.

    python -m pocket.cubemap_picture --out docs/cubemap.png --pattern-out docs/cubemap-pattern.png

The panorama is the one benchmarks/cubemap.py measures (runs/cubemap/pano.png, made with the
command in its docstring when missing, about four minutes on two cores).
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw

from panosync import cubemap
from panosync.cli import main
from panosync.files import write_atomically

ROOT = Path(__file__).resolve().parent.parent
PANORAMA = ROOT / "runs" / "cubemap" / "pano.png"

QUARTERS = [(220, 40, 40), (40, 180, 40), (40, 80, 220), (220, 200, 40)]  # around 0°, 90°, 180°, -90°
WORDS = [(0, "FRONT 0°"), (90, "RIGHT 90°"), (-90, "LEFT -90°"), (180, "BACK")]


def pattern(width: int = 512) -> np.ndarray:
    directions = cubemap.pixel_directions(width, width // 2)
    longitude = np.degrees(np.arctan2(directions[..., 0], directions[..., 2]))
    latitude = np.degrees(np.arcsin(directions[..., 1]))
    quarter = np.select([np.abs(longitude) <= 45, (longitude > 45) & (longitude <= 135), np.abs(longitude) > 135],
                        [0, 1, 2], 3)
    image = np.array(QUARTERS, np.uint8)[quarter]
    image[latitude < 0] //= 2
    line = 360 / width  # a pixel's width in degrees
    image[(np.abs((longitude + 180) % 30 - 15) > 15 - line) | (np.abs((latitude + 90) % 30 - 15) > 15 - line)] = 255
    image[latitude > 80] = (255, 0, 255)
    picture = PIL.Image.fromarray(image)
    draw = PIL.ImageDraw.Draw(picture)
    for longitude, word in WORDS:
        x = int((longitude + 180) / 360 * width) % width - 20
        for shift in (0, width):  # BACK straddles the seam: its halves, at the two edges, meet on nz
            draw.text((x + shift, width // 4 - 24), word, fill="black")
    return np.asarray(picture)


def sheet(panorama: np.ndarray) -> PIL.Image.Image:
    """The panorama above its faces' cross, each face named, through `panosync export` itself."""
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "sphere.png"
        PIL.Image.fromarray(panorama).save(source)
        if main(["export", str(source), "--cubemap", folder, "--overwrite"]) != 0:
            sys.exit(1)
        faces = {name: np.asarray(PIL.Image.open(Path(folder) / f"{name}.png").convert("RGB"))
                 for name in cubemap.FACES}
    picture = PIL.Image.fromarray(np.concatenate([panorama, np.full((8, panorama.shape[1], 3), 255, np.uint8),
                                                  cubemap.cross(faces, background=255)]))
    draw = PIL.ImageDraw.Draw(picture)
    size = faces["px"].shape[0]
    for name, (column, row) in cubemap.CROSS.items():
        left, top = column * size + 3, panorama.shape[0] + 8 + row * size + 3
        draw.rectangle((left - 1, top - 1, left + 13, top + 11), fill="black")
        draw.text((left + 1, top), name, fill="white")
    return picture


parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", default="docs/cubemap.png")
parser.add_argument("--pattern-out", default="docs/cubemap-pattern.png")
args = parser.parse_args()

if not PANORAMA.exists():
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cubemap.py"), "--panorama-only"], check=True)
for out, panorama in ((args.out, np.asarray(PIL.Image.open(PANORAMA).convert("RGB"))), (args.pattern_out, pattern())):
    picture = sheet(panorama)
    write_atomically(out, lambda file: picture.save(file, format="PNG"))
    print(f"wrote {out}")
