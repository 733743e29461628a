"""`panosync evaluate`: the paper's evaluation of panorama methods, for any model, as one command.

    panosync evaluate --model pocket --prompts prompts.txt --methods multidiffusion,syncdiffusion \\
        --seeds 0-31 --width 512 --out runs/eval-pocket

For every prompt and seed it makes one panorama per method and one reference single image (one
window, nothing to synchronise), saved as PNGs that carry their parameters. A rerun keeps every
image already made with the same parameters, so an interrupted evaluation continues where it
stopped. Then it measures every method (`panosync.eval`) and writes results.md (laid out like the
paper's Table 1), results.json, results.csv, results-chart.png and results-examples.png.

This module reads the options and runs the steps: plan.py lists the images and what an earlier run
made, measure.py measures them, report.py writes the files.

With --ray ADDRESS the images are made on Ray workers through the same runner as `panosync batch`
(runner/), the same pictures as here; the metrics are measured here.

Methods: `multidiffusion` is the joint diffusion without synchronisation (sync weight 0);
`syncdiffusion` synchronises with the model's recommended sync settings, else the pipeline's
defaults; --sync-weight and the other sync options override them.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from .. import settings
from ..command_options import add_ip_adapter_options, add_model_options, add_options, given_options
from ..runner.cluster import add_cluster_options
from .measure import load_rgb, measure
from .plan import Plan, PlannedImage, images_to_make, settle_canvas

METHODS = ("multidiffusion", "syncdiffusion")
# The parameters (settings.py) of syncdiffusion's panoramas alone, those of each image's own, and
# every other one, which all methods share: a new parameter is shared unless listed here. Each
# left out takes the model's recommended setting, else the paper's.
SYNC_PARAMETERS = ("sync_weight", "sync_decay_rate", "sync_freq", "sync_threshold", "anchor", "fast_modes",
                   "sync_image_scale", "sync_decoder")
# each image's own (prompt, seed); evaluate's own option (--view-batch-size); outside the paper's metrics,
# which measure panoramas of one prompt (regions)
NOT_EVALUATED = ("prompt", "seed", "view_batch_size", "regions", "region_base")
SHARED_PARAMETERS = tuple(name for name in settings.PIPELINE_NAMES if name not in SYNC_PARAMETERS + NOT_EVALUATED)
# Recorded in a panorama's PNG only when they differ from the paper's, so that the records of runs
# made before they existed still match a rerun.
RECORDED_WHEN_USED = ("anchor", "fast_modes", "sync_image_scale", "sync_decoder")
SYNC_HELPS = {name: f"syncdiffusion's: {settings.BY_NAME[name].help}" for name in SYNC_PARAMETERS}
OUTPUTS = ("results.md", "results.json", "results.csv", "results-chart.png", "results-examples.png")
MAX_SEEDS = 100_000  # far beyond any evaluation (the paper's has 500 panoramas); a bound for a typo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluate subcommand's options (cli.py builds the parser)."""
    parser.epilog = ("Generation and sync options left out take the model's recommended settings, else the "
                     "paper's. multidiffusion: sync weight 0; syncdiffusion: the sync options. "
                     "Writes DIR/results.md, .json, .csv, results-chart.png and results-examples.png.")
    add_model_options(parser, settings.DEFAULT_MODEL)
    add_ip_adapter_options(parser, "the image prompt the IP-Adapter conditions every image of the evaluation on "
                                   "(the references too)")
    parser.add_argument("--prompts", required=True, metavar="FILE",
                        help="text file, one prompt per line (blank lines and lines starting with # are skipped)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: both)")
    parser.add_argument("--seeds", default="0-31", help="seeds, e.g. 0-31 or 0,5,9-12 (default: 0-31)")
    add_options(parser, SHARED_PARAMETERS)
    add_options(parser, SYNC_PARAMETERS, SYNC_HELPS)
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
    if path.is_dir():
        raise ValueError(f"--prompts {path} is a folder: give a text file, one prompt per line.")
    if not path.exists():
        raise ValueError(f"--prompts {path}: no such file.")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ValueError(f"--prompts {path} cannot be read ({error.strerror or error}).") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"--prompts {path} is not UTF-8 text (byte {error.start} is not UTF-8): give a text file, "
                         f"one prompt per line.") from None
    if "\x00" in text:
        raise ValueError(f"--prompts {path} is a binary file (it holds NUL bytes): give a text file, one prompt "
                         f"per line.")
    prompts = [line.strip() for line in text.splitlines()]
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


def make_plan(args: argparse.Namespace) -> Plan:
    """Check the request and settle every parameter, loading no weights."""
    from ..files import check_folder
    from ..ip_adapters import ip_adapter_of_options
    from ..loras import weights_of_options
    from ..models import resolve_model
    from ..vocabulary import warn_unknown_words

    prompts = read_prompts(args.prompts)
    seeds = parse_seeds(args.seeds)
    if len(prompts) * len(seeds) < 2:  # one reference image per prompt and seed
        raise ValueError(f"FID and KID compare sets of at least two reference images, one per prompt and seed, and "
                         f"{len(prompts)} prompt × {len(seeds)} seed make one: give more seeds (--seeds 0-7).")
    methods = parse_methods(args.methods)
    if args.examples < 0:
        raise ValueError(f"--examples must be 0 or more, got {args.examples}.")
    settings.check({"view_batch_size": args.view_batch_size})
    loras, inversions = weights_of_options(args.lora, args.lora_weight_name, args.textual_inversion)
    adapter, image_prompt = ip_adapter_of_options(args.ip_adapter, args.ip_adapter_weight_name,
                                                  args.ip_adapter_image_encoder, args.ip_adapter_image)
    out = check_folder(args.out, "--out")
    model = args.model or settings.DEFAULT_MODEL
    source = resolve_model(model)
    warn_unknown_words(source, prompts, model)
    values = settings.resolve(given_options(args), None, settings.recommended_of(source))
    values = {name: value for name, value in values.items() if name in SHARED_PARAMETERS + SYNC_PARAMETERS}
    settings.check(values)  # a bad option fails here, before loading
    shared = {name: values[name] for name in SHARED_PARAMETERS}
    sync = {name: values[name] for name in SYNC_PARAMETERS}
    for name in RECORDED_WHEN_USED:
        if sync[name] == settings.BY_NAME[name].default:
            del sync[name]
    settings_of = {"multidiffusion": {"sync_weight": 0.0}, "syncdiffusion": sync}
    plan = Plan(model, source, prompts, seeds, {m: settings_of[m] for m in methods}, shared, out, args)
    plan.loras, plan.textual_inversions = loras, inversions
    plan.ip_adapter, plan.ip_adapter_image = adapter, image_prompt
    if source.geometry is not None:
        settle_canvas(plan, source.geometry)
    return plan


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
                                              "device": made.device, "dtype": made.dtype,
                                              **({"threads": made.threads} if made.threads is not None else {})})
            bar.update()

        engine.on_step = progress
        tasks = [(index, {**image.call(), "view_batch_size": plan.args.view_batch_size})
                 for index, image in enumerate(todo)]
        run_all(engine, tasks, finished)


# ---------------------------------------------------------------------------------------- report


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
        rows = [(display_name(method), load_rgb(image.path)) for method in plan.methods for image in plan.panoramas
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


def warn_if_few_images(plan: Plan) -> None:
    """One line on stderr when FID and KID will have too few reference images to mean anything (the
    report then gives them no verdict)."""
    from .report import FEW_IMAGES

    count = len(plan.prompts) * len(plan.seeds)
    if count < FEW_IMAGES:
        print(f"panosync: warning: {len(plan.prompts)} prompt(s) × {len(plan.seeds)} seed(s) make {count} reference "
              f"images, fewer than the {FEW_IMAGES} FID and KID need to mean anything: they are reported without a "
              f"verdict (give more seeds, e.g. --seeds 0-{-(-FEW_IMAGES // len(plan.prompts)) - 1}).", file=sys.stderr)


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
    warn_if_few_images(plan)
    todo = images_to_make(plan) if plan.images else None
    started = time.perf_counter()
    made = 0
    if todo is None or todo:
        spec = ModelSpec(plan.model, args.model_config, getattr(args, "vae", None), args.device, args.dtype,
                         getattr(args, "gradient_checkpointing", False), plan.loras, plan.textual_inversions,
                         plan.ip_adapter, plan.ip_adapter_image, threads=args.threads)
        engine = open_engine(spec, args.ray, args.workers)
        try:
            geometry = plan.source.geometry or engine.geometry()
            if todo is None:  # a hub model or checkpoint file: its shape is known only now
                if plan.source.family is None:  # and a hub model's family: its defaults, where no option set them
                    defaults = engine.family_defaults(given_options(args))
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
