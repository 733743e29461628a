"""Pocket + its Canny ControlNet (pocket-canny) on a wide procedural edge map: MultiDiffusion beside
SyncDiffusion, each with the ControlNet and without it (conditioning scale 0), on the same seeds.

    OMP_NUM_THREADS=1 python -m pocket.control_demo --seeds 8 --out docs/pocket-control

Writes OUT.png (the edge map on top, then per seed a MultiDiffusion row above a SyncDiffusion row,
both with the ControlNet), OUT.json (every figure) and OUT.md (the table). Measures, per method:
- edge F-score: the outputs' Canny edges against the condition's, 2 px tolerance (pocket/edge_match.py);
- the share of panoramas whose eight 64-px crops disagree on the time of day (pocket/classify.py);
- Intra-LPIPS (LPIPS-VGG over all pairs of the eight crops).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from panosync.bundled import recommended_settings
from panosync.conditions import canny_edges
from panosync.eval.perceptual import intra_lpips
from panosync.files import write_atomically
from panosync.lpips import load_lpips
from panosync.models import load_control_pipeline, resolve_controlnet, resolve_model
from .edge_match import TOLERANCE, edge_fscore
from .quality import crop_times
from .landscapes import render_landscape

PROMPT = "snowy mountains"  # no time of day: the model picks one, and the views must agree on it
CONDITION_SOURCE = {"time": "day", "ground": "snow", "terrain": "mountains"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=8, help="panoramas per method, seeds 0..N-1")
    parser.add_argument("--shown", type=int, default=4, help="seeds shown in the picture")
    parser.add_argument("--windows", type=int, default=8, help="panorama width in 64-px windows")
    parser.add_argument("--condition-seed", type=int, default=0, help="seed of the landscape the edges come from")
    parser.add_argument("--sync-baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run SyncDiffusion at scale 0 (the slowest of the four; MultiDiffusion's always runs)")
    parser.add_argument("--out", type=Path, default=Path("docs/pocket-control"))
    parser.add_argument("--markdown-only", action="store_true", help="rewrite OUT.md from OUT.json, generating nothing")
    args = parser.parse_args(argv)
    if args.markdown_only:
        report = json.loads(args.out.with_suffix(".json").read_text())
        args.seeds = len(report["methods"]["MultiDiffusion"]["panoramas"])
        write_atomically(args.out.with_suffix(".md"), markdown(report, args))
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    started = time.time()

    source = resolve_model("pocket")
    settings = recommended_settings(source.ref)
    pipe = load_control_pipeline(source, ["pocket-canny"])
    pipe.set_progress_bar_config(disable=True)
    size = pipe.window * pipe.vae_scale_factor
    width = args.windows * size
    landscape = render_landscape(CONDITION_SOURCE, args.condition_seed, width=width, height=size)
    condition = canny_edges(PIL.Image.fromarray(landscape))
    edges = np.asarray(condition)

    common = dict(num_inference_steps=settings["num_inference_steps"], guidance_scale=settings["guidance_scale"],
                  stride=settings["stride"], width=width, height=size, view_batch_size=32, output_type="np")
    synced = {k: v for k, v in settings.items() if k.startswith("sync_") or k == "fast_modes"}
    methods = {
        "MultiDiffusion": dict(sync_weight=0.0, controlnet_conditioning_scale=1.0),
        "SyncDiffusion": dict(**synced, controlnet_conditioning_scale=1.0),
        "MultiDiffusion, scale 0 (no ControlNet)": dict(sync_weight=0.0, controlnet_conditioning_scale=0.0),
    }
    if args.sync_baseline:
        methods["SyncDiffusion, scale 0 (no ControlNet)"] = dict(**synced, controlnet_conditioning_scale=0.0)
    lpips = load_lpips("vgg")
    report = {"prompt": PROMPT, "condition": {"source": CONDITION_SOURCE, "seed": args.condition_seed,
                                              "size": [width, size], "edge_pixels": float((edges[:, :, 0] > 0).mean())},
              "settings": {k: v for k, v in common.items() if k != "output_type"}, "edge_tolerance_px": TOLERANCE,
              "methods": {}}
    pictures: dict[str, list[np.ndarray]] = {}
    for method, extra in methods.items():
        rows, began = [], time.time()
        for seed in range(args.seeds):
            panorama = pipe(PROMPT, image=condition, seed=seed, **common, **extra).images[0]
            panorama = (panorama * 255).round().astype(np.uint8)
            match = edge_fscore(panorama, edges)
            times = crop_times(panorama, size)
            rows.append({"seed": seed, **{k: round(v, 4) for k, v in match.items()}, "crop_times": times,
                         "intra_lpips": round(intra_lpips(panorama, size, lpips), 4)})
            if seed < args.shown:
                pictures.setdefault(method, []).append(panorama)
            print(f"{method} seed {seed}: {rows[-1]}", file=sys.stderr, flush=True)
        report["methods"][method] = {
            "settings": {k: v for k, v in extra.items()},
            "edge_f": float(np.mean([r["f"] for r in rows])), "edge_f_std": float(np.std([r["f"] for r in rows])),
            "edge_precision": float(np.mean([r["precision"] for r in rows])),
            "edge_recall": float(np.mean([r["recall"] for r in rows])),
            "crops_disagree": float(np.mean([len(set(r["crop_times"])) > 1 for r in rows])),
            "intra_lpips": float(np.mean([r["intra_lpips"] for r in rows])),
            "seconds_per_panorama": round((time.time() - began) / args.seeds, 1), "panoramas": rows}
    report["seconds"] = round(time.time() - started)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    gap = np.full((4, width, 3), 255, np.uint8)
    stack = [edges, gap]
    for index in range(min(args.shown, args.seeds)):
        stack += [pictures["MultiDiffusion"][index], pictures["SyncDiffusion"][index], gap]
    picture = PIL.Image.fromarray(np.concatenate(stack))
    write_atomically(args.out.with_suffix(".png"), lambda file: picture.save(file, format="PNG"))
    write_atomically(args.out.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
    write_atomically(args.out.with_suffix(".md"), markdown(report, args))
    print(markdown(report, args))


def comparison(report: dict) -> list[str]:
    """The measured differences, in words, computed from the table (nothing here is typed in by hand)."""
    methods, lines = report["methods"], []
    for method in ("MultiDiffusion", "SyncDiffusion"):
        baseline = methods.get(f"{method}, scale 0 (no ControlNet)")
        if baseline:
            change = methods[method]["edge_f"] - baseline["edge_f"]
            lines.append(f"- {method}: the ControlNet changes the edge F-score from {baseline['edge_f']:.3f} (scale 0) to "
                         f"{methods[method]['edge_f']:.3f} ({change:+.3f}).")
    plain, synced = methods["MultiDiffusion"], methods["SyncDiffusion"]
    lines.append(f"- With the ControlNet, SyncDiffusion against MultiDiffusion: edge F-score {synced['edge_f']:.3f} vs "
                 f"{plain['edge_f']:.3f}; crops disagree on the time {synced['crops_disagree']:.0%} vs "
                 f"{plain['crops_disagree']:.0%}; Intra-LPIPS {synced['intra_lpips']:.3f} vs {plain['intra_lpips']:.3f}.")
    return ["Measured differences:", "", *lines]


def resolve_controlnet_folder() -> Path:
    return Path(resolve_controlnet("pocket-canny").ref)


def markdown(report: dict, args) -> str:
    width, height = report["condition"]["size"]
    s = report["settings"]
    training = json.loads((resolve_controlnet_folder() / "training.json").read_text())
    lines = [
        "# The pocket model following a wide edge map (pocket-canny ControlNet)", "",
        f"Made by `python -m pocket.control_demo --seeds {args.seeds}` in {report['seconds'] / 60:.0f} min on the CPU. "
        f"Condition: the Canny edges (thresholds 100/200, as `panosync control --preprocess canny`) of a "
        f"{width}x{height} procedural landscape ({', '.join(report['condition']['source'].values())}, seed "
        f"{report['condition']['seed']}), {report['condition']['edge_pixels']:.1%} of its pixels edges. Prompt "
        f"“{report['prompt']}” (no time of day), {s['num_inference_steps']} DDIM steps, guidance "
        f"{s['guidance_scale']}, stride {s['stride']}; SyncDiffusion with pocket's recommended sync settings "
        f"({', '.join(f'{k} {v}' for k, v in report['methods']['SyncDiffusion']['settings'].items() if k != 'controlnet_conditioning_scale')}).",
        "", f"The ControlNet: `ControlNetModel.from_unet` of pocket's UNet, trained by "
        f"`python -m pocket.control_train` on the Canny edges of pocket's {training['images']:,} training images "
        f"for {training['step']:,} steps of batch {training['batch']} (lr {training['lr']}, captions dropped "
        f"{training['drop_caption']:.0%} of the time) in {training['seconds'] / 60:.0f} min on the CPU, pocket frozen; "
        f"epsilon MSE {training.get('first_loss', float('nan')):.3f} at the start, {training['loss']:.3f} at the end.",
        "", "| method | panoramas | edge F-score | precision | recall | crops disagree on the time | Intra-LPIPS | s / panorama |",
        "|---|---|---|---|---|---|---|---|"]
    for method, m in report["methods"].items():
        lines.append(f"| {method} | {len(m['panoramas'])} | {m['edge_f']:.3f} ± {m['edge_f_std']:.3f} | "
                     f"{m['edge_precision']:.3f} | {m['edge_recall']:.3f} | {m['crops_disagree']:.0%} | "
                     f"{m['intra_lpips']:.3f} | {m['seconds_per_panorama']} |")
    lines += [
        "", f"Edge F-score: the Canny edges of the output (same thresholds) against the condition's edge pixels, "
        f"each counted as found when the other has an edge within {report['edge_tolerance_px']} px (precision: share "
        f"of the output's edges near a condition edge; recall: share of the condition's edges near an output edge). "
        f"Scale 0 runs the same pipeline with the ControlNet switched off: its F-score is what unrelated "
        f"mountains score against these edges by chance. Crops disagree: the share of panoramas whose eight "
        f"non-overlapping {height}-px crops do not all get the same time of day from `pocket.classify`. "
        f"Intra-LPIPS: LPIPS-VGG averaged over all pairs of those crops (lower: more alike).", "",
        *comparison(report), "", "Per panorama (crop times: d day, s sunset, n night):", "",
        "| method | seed | F | crop times | Intra-LPIPS |", "|---|---|---|---|---|"]
    for method, m in report["methods"].items():
        lines += [f"| {method} | {r['seed']} | {r['f']:.3f} | {r['crop_times']} | {r['intra_lpips']:.3f} |"
                  for r in m["panoramas"]]
    lines += ["", f"![edge map, then per seed MultiDiffusion above SyncDiffusion]({args.out.with_suffix('.png').name})",
              "", f"Top: the edge map. Then seeds 0–{min(args.shown, args.seeds) - 1}, each a MultiDiffusion row above "
              f"a SyncDiffusion row, both with the ControlNet at scale 1."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
