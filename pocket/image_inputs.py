"""Images as inputs on the bundled pocket model, measured: extending one window into a panorama,
upscaling a panorama, and loop closure with an image (docs/images.md).

    python -m pocket.image_inputs --run runs/image-inputs   # measure; docs/images.json and the pictures

* extend   -- a single 64 x 64 window of a prompt that names no time of day, extended to 512 x 64
  (centred) with the same prompt: the kept window's PSNR as decoded (before the paste-back, which
  makes it exact), and the share of the panorama's crops whose time of day (pocket's classifier)
  is the given window's, synced and with MultiDiffusion (sync_weight 0).
* upscale  -- a 512 x 64 panorama upscaled x2 to 1024 x 128 at strengths 0.2 and 0.3, synced and
  not: downscaled again, its PSNR and LPIPS to the original.
* wrap     -- a panorama made without loop closure, repainted at strength 0.3 with loop closure:
  the jump across the wrap over the mean jump between neighbouring columns, before and after.

Every image made is kept under the run folder, so a second run resumes. Seeds: tuning (looked at
while choosing WRAP_STRENGTH and the defaults) 8900-8903; judging 9000 on, never used before.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

from panosync.files import write_atomically

from .classify import classify_time

ROOT = Path(__file__).resolve().parents[1]
JUDGING_SEEDS_FROM = 9000
PROMPTS = ("snowy mountains", "green hills", "a sea with a desert shore")
WINDOW = 64
WIDTH = 512
CROP_STRIDE = 32
RAW_SEEDS = 4  # extended panoramas also made without the paste-back, to measure the decoded kept window


def load_pipe():
    from panosync.pipeline import SyncDiffusionPipeline

    pipe = SyncDiffusionPipeline.from_pretrained("pocket")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def recommended() -> dict:
    from panosync.bundled import bundled_model_folder

    return json.loads((Path(bundled_model_folder("pocket")) / "recommended.json").read_text())


class Cache:
    """Images made once, kept as PNGs under the run folder, with the seconds each took."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.times_file = folder / "seconds.json"
        self.seconds = json.loads(self.times_file.read_text()) if self.times_file.exists() else {}

    def get(self, name: str, make) -> PIL.Image.Image:
        path = self.folder / f"{name}.png"
        if not path.exists():
            started = time.perf_counter()
            image = make()
            self.seconds[name] = time.perf_counter() - started
            image.save(path.with_suffix(".tmp.png"))
            path.with_suffix(".tmp.png").replace(path)
            write_atomically(self.times_file, json.dumps(self.seconds, indent=1))
        return PIL.Image.open(path).convert("RGB")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def crops(image: PIL.Image.Image) -> list[PIL.Image.Image]:
    return [image.crop((left, 0, left + WINDOW, WINDOW)) for left in range(0, image.width - WINDOW + 1, CROP_STRIDE)]


def wrap_jump(image: PIL.Image.Image) -> float:
    """The mean jump across the wrap (last column to first) over the mean jump between neighbours."""
    a = np.asarray(image, dtype=np.float64)
    inner = np.abs(np.diff(a, axis=1)).mean()
    return float(np.abs(a[:, 0] - a[:, -1]).mean() / inner)


def measure_extend(pipe, cache: Cache, seeds: list[int], settings: dict) -> dict:
    rows = []
    for seed in seeds:
        prompt = PROMPTS[seed % len(PROMPTS)]
        given = cache.get(f"window-{seed}", lambda: pipe(prompt, width=WINDOW, height=WINDOW, seed=seed,
                                                         **settings).images[0])
        time_given = classify_time(given)
        row = dict(seed=seed, prompt=prompt, time=time_given)
        for method, weight in (("sync", settings["sync_weight"]), ("multidiffusion", 0.0)):
            options = {**settings, "sync_weight": weight}
            pasted = cache.get(f"extend-{method}-{seed}", lambda: pipe(
                prompt, image=given, width=WIDTH, seed=seed, **options).images[0])
            left = (WIDTH - WINDOW) // 2
            kept = np.asarray(pasted)[:, left:left + WINDOW]
            times = [classify_time(crop) for crop in crops(pasted)]
            row[method] = dict(kept_psnr_pasted=psnr(kept, np.asarray(given)),
                               crops_agreeing=sum(t == time_given for t in times) / len(times),
                               seconds=cache.seconds.get(f"extend-{method}-{seed}"))
            if seed < seeds[0] + RAW_SEEDS:  # the decode before the paste-back: a whole run more, on a few
                raw = cache.get(f"extend-{method}-raw-{seed}", lambda: pipe(
                    prompt, image=given, width=WIDTH, seed=seed, paste_back=False, **options).images[0])
                row[method]["kept_psnr_decoded"] = psnr(np.asarray(raw)[:, left:left + WINDOW], np.asarray(given))
        rows.append(row)
    summary = {method: dict(crops_agreeing=float(np.mean([row[method]["crops_agreeing"] for row in rows])),
                            kept_psnr_pasted=float(np.mean([row[method]["kept_psnr_pasted"] for row in rows])),
                            kept_psnr_decoded=float(np.mean([row[method]["kept_psnr_decoded"] for row in rows
                                                             if "kept_psnr_decoded" in row[method]])),
                            panoramas_all_agreeing=sum(row[method]["crops_agreeing"] == 1 for row in rows),
                            seconds=float(np.mean([row[method]["seconds"] for row in rows
                                                   if row[method]["seconds"] is not None])))
               for method in ("sync", "multidiffusion")}
    return dict(rows=rows, summary=summary)


def measure_upscale(pipe, cache: Cache, seeds: list[int], settings: dict, strengths=(0.2, 0.3)) -> dict:
    from panosync.lpips import load_lpips

    distance = load_lpips("alex")  # the weights panosync finds offline

    def to_tensor(image):
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]

    rows = []
    for seed in seeds:
        prompt = PROMPTS[seed % len(PROMPTS)]
        original = cache.get(f"pano-{seed}", lambda: pipe(prompt, width=WIDTH, height=WINDOW, seed=seed,
                                                          **settings).images[0])
        row = dict(seed=seed, prompt=prompt)
        for strength in strengths:
            for method, weight in (("sync", settings["sync_weight"]), ("multidiffusion", 0.0)):
                options = {**settings, "sync_weight": weight}
                name = f"upscale-{method}-{strength:g}-{seed}"
                big = cache.get(name, lambda: pipe(prompt, image=original, width=2 * WIDTH, height=2 * WINDOW,
                                                   resize_image=True, strength=strength, seed=seed,
                                                   **options).images[0])
                back = big.resize(original.size, PIL.Image.LANCZOS)
                with torch.no_grad():
                    perceptual = float(distance(to_tensor(back), to_tensor(original)))
                row[f"{method}-{strength:g}"] = dict(psnr=psnr(np.asarray(back), np.asarray(original)),
                                                     lpips=perceptual, size=list(big.size),
                                                     seconds=cache.seconds.get(name))
        bicubic = original.resize((2 * WIDTH, 2 * WINDOW), PIL.Image.BICUBIC).resize(original.size, PIL.Image.LANCZOS)
        row["bicubic"] = dict(psnr=psnr(np.asarray(bicubic), np.asarray(original)))
        rows.append(row)
    keys = [key for key in rows[0] if key not in ("seed", "prompt")]
    summary = {key: {measure: float(np.mean([row[key][measure] for row in rows])) for measure in rows[0][key]
                     if measure in ("psnr", "lpips", "seconds") and rows[0][key][measure] is not None}
               for key in keys}
    return dict(rows=rows, summary=summary)


def measure_wrap(pipe, cache: Cache, seeds: list[int], settings: dict, strength: float = 0.3) -> dict:
    rows = []
    for seed in seeds:
        prompt = PROMPTS[seed % len(PROMPTS)]
        original = cache.get(f"pano-{seed}", lambda: pipe(prompt, width=WIDTH, height=WINDOW, seed=seed,
                                                          **settings).images[0])
        closed = cache.get(f"wrap-{strength:g}-{seed}", lambda: pipe(prompt, image=original, strength=strength,
                                                                     loop_closure=True, seed=seed,
                                                                     **settings).images[0])
        rows.append(dict(seed=seed, before=wrap_jump(original), after=wrap_jump(closed)))
    return dict(rows=rows, summary=dict(before=float(np.mean([row["before"] for row in rows])),
                                        after=float(np.mean([row["after"] for row in rows]))))


def labelled(image: PIL.Image.Image, text: str, zoom: int = 2) -> PIL.Image.Image:
    """`image` enlarged `zoom` times (nearest: pocket's pixels stay pixels) under a line of text."""
    from PIL import ImageDraw

    big = image.resize((image.width * zoom, image.height * zoom), PIL.Image.NEAREST)
    sheet = PIL.Image.new("RGB", (big.width, big.height + 16), "white")
    sheet.paste(big, (0, 16))
    ImageDraw.Draw(sheet).text((2, 2), text, fill="black")
    return sheet


def stacked(images: list[PIL.Image.Image], gap: int = 6) -> PIL.Image.Image:
    sheet = PIL.Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * len(images)),
                          "white")
    top = 0
    for image in images:
        sheet.paste(image, (0, top))
        top += image.height + gap
    return sheet


def pictures(cache: Cache, extend_seeds: list[int], upscale_seed: int) -> None:
    """docs/images-extend.png (the given window where it was placed, then its extensions, synced and
    with MultiDiffusion) and docs/images-upscale.png (a panorama, and its x2 upscale), from the run's images."""
    rows = []
    for seed in extend_seeds:
        given = PIL.Image.open(cache.folder / f"window-{seed}.png").convert("RGB")
        placed = PIL.Image.new("RGB", (WIDTH, WINDOW), "white")
        placed.paste(given, ((WIDTH - WINDOW) // 2, 0))
        prompt = PROMPTS[seed % len(PROMPTS)]
        rows += [labelled(placed, f'the given window (seed {seed}); prompt "{prompt}"'),
                 labelled(PIL.Image.open(cache.folder / f"extend-sync-{seed}.png"), "extended, SyncDiffusion"),
                 labelled(PIL.Image.open(cache.folder / f"extend-multidiffusion-{seed}.png"), "extended, MultiDiffusion")]
    stacked(rows).save(ROOT / "docs" / "images-extend.png")
    original = PIL.Image.open(cache.folder / f"pano-{upscale_seed}.png").convert("RGB")
    upscaled = PIL.Image.open(cache.folder / f"upscale-sync-0.2-{upscale_seed}.png").convert("RGB")
    stacked([labelled(original, f"512 x 64 panorama (seed {upscale_seed}), shown x2 (nearest)"),
             labelled(upscaled, "panosync upscale (--scale 2, strength 0.2): 1024 x 128, shown x1", zoom=1)]
            ).save(ROOT / "docs" / "images-upscale.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="runs/image-inputs")
    parser.add_argument("--extend-seeds", type=int, default=12)
    parser.add_argument("--upscale-seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=JUDGING_SEEDS_FROM)
    parser.add_argument("--parts", default="extend,upscale,wrap,pictures")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pipe = load_pipe()
    settings = recommended()
    settings.pop("sync_threshold", None)
    cache = Cache(Path(args.run))
    results = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    parts = args.parts.split(",")
    first = args.first_seed
    if "extend" in parts:
        results["extend"] = measure_extend(pipe, cache, list(range(first, first + args.extend_seeds)), settings)
        print(json.dumps(results["extend"]["summary"], indent=1))
    if "upscale" in parts:
        seeds = list(range(first + 100, first + 100 + args.upscale_seeds))
        results["upscale"] = measure_upscale(pipe, cache, seeds, settings)
        print(json.dumps(results["upscale"]["summary"], indent=1))
    if "wrap" in parts:
        results["wrap"] = measure_wrap(pipe, cache, list(range(first + 100, first + 100 + args.upscale_seeds)),
                                       settings)
        print(json.dumps(results["wrap"]["summary"], indent=1))
    results["settings"] = settings
    write_atomically(Path(args.out), json.dumps(results, indent=1))
    if "pictures" in parts:
        pictures(cache, list(range(first, first + 3)), first + 100)


if __name__ == "__main__":
    main()
