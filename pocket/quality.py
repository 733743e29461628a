"""The pocket model's quality bars, measured and printed (issue 3):

1. the attribute classifier's accuracy on generator images;
2. prompt adherence: samples of prompts that name a time of day show it;
3. diversity: samples of a prompt without a time of day use several;
4. the montage failure and its fix: crops of MultiDiffusion panoramas disagree on the time of day,
   SyncDiffusion's agree, and Intra-LPIPS falls.

    python -m pocket.quality --model pocket --out docs/pocket-quality

These bars reward any picture that agrees with itself, blotches included. The bars that also ask the
crops to stay pictures of the prompt (fidelity to single windows, adherence on crops; issue 13) are
`panorama_bars`: python -m pocket.panorama_bars --out docs/pocket-bars
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from panosync.eval.crops import crops
from panosync.eval.perceptual import intra_lpips
from panosync.files import write_atomically
from panosync.lpips import load_lpips
from .classify import accuracy, classify_time
from .landscapes import make_dataset


FAITHFUL = "SyncDiffusion, faithful gradient"


@torch.no_grad()
def sample_windows(pipe, prompt: str, seeds: list[int], steps: int = 50, guidance_scale: float = 7.5,
                   negative_prompt: str = "") -> np.ndarray:
    """Single-window samples, batched: the same images as `pipe(prompt, width=window, height=window,
    seed=s)` for each seed (one view, nothing to sync), uint8 (N, H, W, 3)."""
    window, channels = pipe.window, pipe.unet.config.in_channels
    noise = torch.cat([torch.randn((1, channels, window, window), generator=torch.Generator().manual_seed(s))
                       for s in seeds])
    embeddings = pipe.backbone.encode_prompt([prompt], [negative_prompt], pipe.device)
    pipe.scheduler.set_timesteps(steps)
    latents = noise * pipe.scheduler.init_noise_sigma
    for t in pipe.scheduler.timesteps:
        latents = pipe.scheduler.step(pipe.backbone.guided_prediction(latents, t, embeddings, guidance_scale), t, latents).prev_sample
    images = pipe.decode_to_unit(latents).permute(0, 2, 3, 1).cpu().numpy()
    return (images * 255).round().astype(np.uint8)


def load_for_measurement(model: str):
    """The pipeline (progress bar off) and the settings its folder recommends ({} for any other
    model): what every pocket measurement starts from."""
    from panosync.bundled import recommended_settings
    from panosync.models import load_pipeline, resolve_model

    source = resolve_model(model)
    pipe = load_pipeline(source)
    pipe.set_progress_bar_config(disable=True)
    return pipe, recommended_settings(source.ref) if source.kind == "folder" else {}


def crop_times(panorama: np.ndarray, size: int) -> str:
    """The time of day of each non-overlapping crop of a uint8 panorama, a letter each (d day, s sunset,
    n night): a panorama whose letters differ mixes times of day."""
    return "".join(classify_time(tile)[0] for tile in crops(panorama, size))


def time_shares(images) -> dict[str, float]:
    names = [classify_time(image) for image in images]
    return {name: names.count(name) / len(names) for name in sorted(set(names))}


def bars(report: dict) -> list[tuple[str, str, bool]]:
    """Each quality bar of issue 3: (what, measured, met)."""
    rows = []
    for attribute, share in report["classifier_accuracy"].items():
        rows.append((f"classifier accuracy, {attribute} (≥ 95 %)", f"{share:.1%}", share >= 0.95))
    for prompt, share in report["prompt_adherence"].items():
        rows.append((f"adherence, “{prompt}” (≥ 90 %)", f"{share:.1%}", share >= 0.90))
    for prompt, shares in report["diversity"].items():
        text = ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
        rows.append((f"diversity, “{prompt}” (≥ 2 times of day, none > 75 %)", text,
                     len(shares) >= 2 and max(shares.values()) <= 0.75))
    plain, synced = report["montage"]["MultiDiffusion"], report["montage"]["SyncDiffusion"]
    rows.append(("MultiDiffusion panoramas whose crops disagree on the time (≥ 30 %)",
                 f"{plain['disagreement']:.1%}", plain["disagreement"] >= 0.30))
    rows.append(("SyncDiffusion: at least halves that share", f"{synced['disagreement']:.1%}",
                 synced["disagreement"] <= plain["disagreement"] / 2))
    drop = 1 - synced["intra_lpips"] / plain["intra_lpips"]
    rows.append(("Intra-LPIPS lower by ≥ 15 % relative",
                 f"{plain['intra_lpips']:.3f} → {synced['intra_lpips']:.3f} ({drop:.0%} lower)", drop >= 0.15))
    return rows


def montage_table(report: dict) -> list[str]:
    """Each panorama method's figures, with the seeds each was measured on."""
    montage = report["montage"]
    lines = ["| method | panoramas (seeds from 0) | crops disagree | Intra-LPIPS | s / panorama |",
             "|---|---|---|---|---|"]
    for method, figures in montage.items():
        lines.append(f"| {method} | {figures['panoramas']} | {figures['disagreement']:.1%} | "
                     f"{figures['intra_lpips']:.3f} ± {figures['intra_lpips_std']:.3f} | "
                     f"{figures['seconds_per_panorama']} |")
    if FAITHFUL in montage:
        count = montage[FAITHFUL]["panoramas"]
        for method in ("MultiDiffusion", "SyncDiffusion"):
            times = montage[method]["crop_times"][:count]
            distances = montage[method]["per_panorama_intra_lpips"][:count]
            share = sum(len(set(t)) > 1 for t in times) / count
            lines.append(f"| {method}, the same {count} seeds | {count} | {share:.1%} | {np.mean(distances):.3f} | |")
        modes = ", ".join(montage["SyncDiffusion"]["settings"].get("fast_modes", []))
        lines += ["", f"SyncDiffusion runs with the recommended settings, fast modes ({modes}) included. "
                      f"“{FAITHFUL}” has the same settings with the paper's gradient, through the UNet; "
                      f"the last two rows are the other methods on its seeds."]
    return lines


def markdown(report: dict, picture: str) -> str:
    settings = ", ".join(f"{k} {v}" for k, v in report["settings"].items())
    lines = ["# The pocket model's quality bars", "",
             f"Measured by `python -m pocket.quality` on model `{report['model']}` with its recommended "
             f"settings ({settings}) in {report['seconds'] / 60:.0f} min on the CPU.", "",
             "| bar | measured | met |", "|---|---|---|"]
    lines += [f"| {what} | {measured} | {'yes' if met else '**no**'} |" for what, measured, met in bars(report)]
    lines += ["", "Panoramas of “snowy mountains”, the same seeds for every method (crops classified by the "
              "classifier; Intra-LPIPS over all pairs of non-overlapping crops):", "", *montage_table(report)]
    lines += ["", f"![MultiDiffusion above SyncDiffusion, same seeds]({picture})", "",
              "Each pair of rows: the same seed and prompt (“snowy mountains”, no time of day), MultiDiffusion "
              "above, SyncDiffusion below."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pocket")
    parser.add_argument("--out", type=Path, default=Path("docs/pocket-quality"))
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--panoramas", type=int, default=32)
    parser.add_argument("--windows", type=int, default=8, help="panorama width in windows")
    parser.add_argument("--faithful-panoramas", type=int, default=0,
                        help="where the recommended settings use fast modes, also measure SyncDiffusion without "
                             "them (the paper's gradient) on this many seeds (default: 0, skip)")
    args = parser.parse_args(argv)
    started = time.time()
    pipe, settings = load_for_measurement(args.model)
    steps = settings.get("num_inference_steps", 50)
    guidance = settings.get("guidance_scale", 7.5)
    size = pipe.window * pipe.vae_scale_factor
    report: dict = {"model": args.model, "settings": settings}

    images, _, attributes = make_dataset(300, seed=12345, size=size)
    report["classifier_accuracy"] = accuracy(images, attributes)

    adherence = {}
    for time_of_day, prompt in (("day", "mountains by day"), ("sunset", "green hills at sunset"),
                                ("night", "a sea at night")):
        samples = sample_windows(pipe, prompt, list(range(args.samples)), steps=steps, guidance_scale=guidance)
        adherence[prompt] = time_shares(samples).get(time_of_day, 0.0)
    report["prompt_adherence"] = adherence

    free_prompt = "snowy mountains"
    free_samples = sample_windows(pipe, free_prompt, list(range(args.samples)), steps=steps, guidance_scale=guidance)
    report["diversity"] = {free_prompt: time_shares(free_samples)}

    lpips = load_lpips("vgg")
    width = args.windows * size
    synced = {k: v for k, v in settings.items() if k.startswith("sync_") or k == "fast_modes"}
    methods = {"MultiDiffusion": ({"sync_weight": 0.0}, args.panoramas), "SyncDiffusion": (synced, args.panoramas)}
    if synced.get("fast_modes") and args.faithful_panoramas:
        # how far the model's recommended fast modes carry the result: the paper's gradient, same settings
        methods[FAITHFUL] = ({**synced, "fast_modes": []}, args.faithful_panoramas)
    montage, pictures = {}, {}
    for method, (sync, count) in methods.items():
        disagree, distances, times_of_crops, started_method = 0, [], [], time.time()
        for seed in range(count):
            panorama = pipe(free_prompt, width=width, height=size, seed=seed, num_inference_steps=steps,
                            guidance_scale=guidance, stride=settings.get("stride"), view_batch_size=32,
                            output_type="np", **sync).images[0]
            panorama = (panorama * 255).round().astype(np.uint8)
            times = crop_times(panorama, size)
            disagree += len(set(times)) > 1
            distances.append(intra_lpips(panorama, size, lpips))
            times_of_crops.append(times)
            if seed < 6 and method != FAITHFUL:
                pictures.setdefault(method, []).append(panorama)
            print(f"{method} seed {seed}: crops {times}, Intra-LPIPS {distances[-1]:.3f}", file=sys.stderr, flush=True)
        montage[method] = {"settings": sync, "panoramas": count, "disagreement": disagree / count,
                           "intra_lpips": float(np.mean(distances)), "intra_lpips_std": float(np.std(distances)),
                           "seconds_per_panorama": round((time.time() - started_method) / count, 1),
                           "crop_times": times_of_crops, "per_panorama_intra_lpips": [round(d, 4) for d in distances]}
    report["montage"] = montage
    report["seconds"] = round(time.time() - started)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.out.with_suffix(".json"), json.dumps(report, indent=2))
    rows = [np.concatenate([pictures["MultiDiffusion"][i], pictures["SyncDiffusion"][i],
                            np.full((4, width, 3), 255, np.uint8)]) for i in range(len(pictures["SyncDiffusion"]))]
    sheet = PIL.Image.fromarray(np.concatenate(rows))
    write_atomically(args.out.with_suffix(".png"), lambda file: sheet.save(file, format="PNG"))
    write_atomically(args.out.with_suffix(".md"), markdown(report, args.out.with_suffix(".png").name))
    print(json.dumps(report, indent=2))
    print(markdown(report, args.out.with_suffix(".png").name))


if __name__ == "__main__":
    main()
