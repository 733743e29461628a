"""Is the 360° wrap a seam? Compare it with the panorama's other view boundaries (issue 13, part 3).

On a loop-closed canvas the wrap (the last pixel column next to the first) is one more place where
a view begins: the views go all the way round and the decoder wraps too, so the diffusion treats it
like any other place (tests/test_pipeline.py turns the noise and gets the panorama turned by as
much). What can still set the wrap apart is SyncDiffusion's anchor: it sits in the middle of the
canvas, so the wrap is the one place farthest from it. This script measures, over many loop-closed
panoramas, the jump across the wrap (mean absolute difference of the two pixel columns) against
the jumps across the other view boundaries: the ratio to their mean, and the wrap's rank among them
(its percentile; about 50 % on average if the wrap is like any other boundary), for MultiDiffusion
and SyncDiffusion with the model's settings, then SyncDiffusion again with the anchor next to the
wrap, which tells the anchor's distance from any effect of the wrap itself.

    python -m pocket.wrap --out docs/pocket-wrap
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from panosync.files import write_atomically
from panosync.views import views_for_canvas
from .bar_measures import panorama
from .quality import load_for_measurement

PROMPT = "a landscape"


def column_jumps(image: np.ndarray) -> np.ndarray:
    """(W,) mean absolute difference between pixel column c and the one before it, round the circle:
    entry 0 is the wrap (column 0 against column W - 1)."""
    columns = image.astype(np.float64)
    return np.abs(columns - np.roll(columns, 1, axis=1)).mean(axis=(0, 2))


def boundary_columns(width: int, height: int, window: int, stride: int, factor: int) -> list[int]:
    """Pixel columns c (0 <= c < width) where some view of a loop-closed canvas begins or ends, that is,
    where the set of views covering column c differs from column c - 1's. 0 is the wrap."""
    views = views_for_canvas(height // factor, width // factor, window, stride, loop_closure=True)
    edges = {(view.left * factor) % width for view in views} | {(view.right * factor) % width for view in views}
    return sorted(edges)


def wrap_figures(image: np.ndarray, boundaries: list[int]) -> dict:
    """The wrap's jump, its ratio to the mean jump across the other boundaries, and its percentile among them;
    and, for comparison, the share of the other boundaries whose jump is over 2x the mean of the rest (the
    wrap included), the same test the wrap's ratio is put to."""
    jumps = column_jumps(image)
    others = np.array([jumps[c] for c in boundaries if c != 0])
    every = np.array([jumps[c] for c in boundaries])
    rest_means = (every.sum() - others) / (len(every) - 1)
    wrap = float(jumps[0])
    return {"wrap_jump": round(wrap, 3), "boundary_mean_jump": round(float(others.mean()), 3),
            "ratio": round(wrap / float(others.mean()), 3),
            "percentile": round(float((others < wrap).mean() + 0.5 * (others == wrap).mean()), 3),
            "others_above_2x": round(float((others > 2 * rest_means).mean()), 3)}


def summary(figures: list[dict]) -> dict:
    ratios = np.array([f["ratio"] for f in figures])
    percentiles = np.array([f["percentile"] for f in figures])
    return {"panoramas": len(figures), "mean_ratio": round(float(ratios.mean()), 3),
            "median_ratio": round(float(np.median(ratios)), 3), "worst_ratio": round(float(ratios.max()), 3),
            "mean_percentile": round(float(percentiles.mean()), 3),
            # a uniform percentile has standard deviation 1/sqrt(12)
            "percentile_standard_error": round(float(1 / np.sqrt(12 * len(figures))), 3),
            "share_above_2x": round(float((ratios > 2).mean()), 3),
            # None (valid JSON) for figures measured before this share was recorded
            "others_above_2x": (round(float(np.mean([f["others_above_2x"] for f in figures])), 3)
                                if all("others_above_2x" in f for f in figures) else None)}


def measure(pipe, prompt: str, seeds: list[int], width: int, settings: dict, sync: dict, anchor_at_wrap: bool) -> dict:
    """One method's wrap figures over loop-closed panoramas of `seeds`."""
    size = pipe.window * pipe.vae_scale_factor
    stride = settings.get("stride") or pipe.window // 4
    boundaries = boundary_columns(width, size, pipe.window, stride, pipe.vae_scale_factor)
    per_panorama = []
    placed = {**sync, "loop_closure": True, "anchor": 0 if anchor_at_wrap else None}
    for seed in seeds:
        image = panorama(pipe, prompt, seed, width, {**settings, "stride": stride}, placed)
        per_panorama.append({"seed": seed, **wrap_figures(image, boundaries)})
        print(json.dumps(per_panorama[-1]), file=sys.stderr, flush=True)
    return {"settings": sync, "anchor": "next to the wrap" if anchor_at_wrap else "middle (default)",
            **summary(per_panorama), "per_panorama": per_panorama}


def others_cell(summary: dict) -> str:
    """The other boundaries' share over 2x, or a dash for a report measured before it was recorded."""
    share = summary.get("others_above_2x")
    return "–" if share is None else f"{share:.0%}"


def markdown(report: dict) -> str:
    lines = ["# The 360° wrap against the other view boundaries", "",
             f"Measured by `python -m pocket.wrap` on model `{report['model']}` in "
             f"{report['seconds'] / 60:.0f} min: “{report['prompt']}”, {report['width']}×{report['height']}, "
             f"loop closure, seeds {report['seeds'][0]}–{report['seeds'][-1]}. "
             f"Settings: {json.dumps(report['settings'])}.",
             "", "Jump: the mean absolute difference between two neighbouring pixel columns (0–255). Ratio: the "
             "wrap's jump over the mean jump across the panorama's other view boundaries. Percentile: the wrap's "
             "rank among those boundaries (a wrap like any other boundary averages 50 %). Other boundaries "
             "> 2×: the share of the other boundaries whose jump is over twice the mean of the rest, the test "
             "the wrap's “> 2×” puts it to.", "",
             "| method | anchor | mean ratio | median | worst | > 2× | other boundaries > 2× | mean percentile |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in report["methods"].items():
        lines.append(f"| {name.split(' @ ')[0]} | {s['anchor']} | {s['mean_ratio']:.2f}× | "
                     f"{s['median_ratio']:.2f}× | {s['worst_ratio']:.2f}× | {s['share_above_2x']:.0%} | "
                     f"{others_cell(s)} | "
                     f"{s['mean_percentile']:.0%} ± {s['percentile_standard_error']:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pocket")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=3000)
    parser.add_argument("--windows", type=int, default=6, help="panorama width in windows")
    parser.add_argument("--out", type=Path, default=Path("docs/pocket-wrap"))
    args = parser.parse_args(argv)
    started = time.time()
    pipe, settings = load_for_measurement(args.model)
    size = pipe.window * pipe.vae_scale_factor
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    synced = {k: v for k, v in settings.items() if k.startswith("sync_") or k == "fast_modes"}
    methods = {"MultiDiffusion": ({"sync_weight": 0.0}, False), "SyncDiffusion": (synced, False),
               "SyncDiffusion @ wrap": (synced, True)}
    report = {"model": args.model, "prompt": args.prompt, "width": args.windows * size, "height": size,
              "seeds": seeds, "settings": settings, "methods": {}}
    for name, (sync, anchor_at_wrap) in methods.items():
        report["methods"][name] = measure(pipe, args.prompt, seeds, args.windows * size, settings, sync,
                                          anchor_at_wrap)
    report["seconds"] = round(time.time() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out.with_suffix(".json"), json.dumps(report, indent=2))
    write_atomically(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
