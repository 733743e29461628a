"""How often single windows show the terrain their prompt names, per guidance scale.

A synced panorama copies its anchor window, so it can show the prompt's terrain only as reliably as
one window of the model does; this prints that share, with the model's other recommended settings.
The windows are the bars' references (seeds from 5000), not the panoramas' seeds:

    python -m pocket.guidance_probe --model pocket --guidance 5 7.5 10
"""
from __future__ import annotations

import argparse

from .bar_measures import REFERENCE_SEEDS_FROM, named_share, windows
from .panorama_bars import shared_settings
from .quality import load_for_measurement

TERRAIN_PROMPTS = {"mountains": "snowy mountains", "hills": "green hills at sunset"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pocket")
    parser.add_argument("--guidance", type=float, nargs="+", default=[5.0, 7.5])
    parser.add_argument("--windows", type=int, default=64, help="single windows per prompt (seeds from 5000)")
    args = parser.parse_args(argv)
    pipe, settings = load_for_measurement(args.model)
    for guidance in args.guidance:
        shares = {terrain: named_share(windows(pipe, prompt, REFERENCE_SEEDS_FROM, args.windows,
                                               shared_settings(settings, guidance=guidance)), "terrain", terrain)
                  for terrain, prompt in TERRAIN_PROMPTS.items()}
        print(f"{args.model} guidance {guidance:g}: " +
              ", ".join(f"{terrain} {share:.1%}" for terrain, share in shares.items()), flush=True)


if __name__ == "__main__":
    main()
