"""The README's picture: `make demo`'s panorama and two more prompts, each by MultiDiffusion, by
SyncDiffusion at the model's recommended settings (its default path: the fast preset) and in faithful
mode (presets.py), the same seed, on the bundled pocket model.

    python -m pocket.demo_picture --out docs/demo.png
"""

import argparse

import numpy as np
import PIL.Image

from panosync.bundled import bundled_model_folder, recommended_settings
from panosync.files import write_atomically
from panosync.models import load_pipeline
from panosync.presets import preset_changes
from .bar_report import labelled

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", default="docs/demo.png")
parser.add_argument("--scale", type=int, default=2, help="pixel repetition, for a readable picture")
args = parser.parse_args()

pipe = load_pipeline("pocket")
pipe.set_progress_bar_config(disable=True)
settings = recommended_settings(bundled_model_folder("pocket"))
rows = []
for prompt, seed in [("snowy mountains", 100), ("a landscape", 101), ("green hills at sunset", 100)]:
    for name, overrides in [("MultiDiffusion", {"sync_weight": 0.0}), ("SyncDiffusion, default", {}),
                            ("SyncDiffusion, faithful", preset_changes("faithful", settings))]:
        image = pipe(prompt, width=512, height=64, seed=seed, output_type="np", **{**settings, **overrides}).images[0]
        image = (image * 255).round().astype(np.uint8).repeat(args.scale, 0).repeat(args.scale, 1)
        rows.append(labelled(image, f"{name}\n“{prompt}”, seed {seed}", margin=170))
    rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
sheet = PIL.Image.fromarray(np.concatenate(rows[:-1]))
write_atomically(args.out, lambda file: sheet.save(file, format="PNG"))
print(f"wrote {args.out}")
