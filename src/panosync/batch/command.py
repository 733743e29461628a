"""`panosync batch JOBS.jsonl --model M --out DIR`: one PNG per line of JOBS.jsonl, made here with
the model loaded once, or on a Ray cluster with --ray (one worker per GPU, each loading it once).

    {"prompt": "a photo of a mountain range at twilight", "seed": 7, "name": "twilight"}
    {"prompt": "a city skyline at dusk", "width": 3072, "loop_closure": true}
    {"prompt": "the same valley in autumn", "image": "valley.png", "strength": 0.6}
    {"prompt": "a wide valley", "image": "valley.png", "width": 2048, "mask_image": "sky.png"}
    {"prompt": "coast", "regions": [{"box": [0, 0, 512, 512], "prompt": "sea"}, {"mask": "city.png", "prompt": "city"}]}

Every line holds the HTTP API's fields (and `name`, the file's name; else line-N) and is checked
before anything runs; `image` and `mask_image`, and a region's `mask`, name files (a relative path
from the jobs file's folder), read, checked and hashed then too (a changed picture makes its job
again on a rerun). A rerun keeps the PNGs made with the same parameters whose pixels are the ones
written (a digest in their metadata), and makes the others; a file panosync did not write is not
replaced without --overwrite. One batch at a time writes a folder (a lock file in it). SIGTERM
ends a batch as Ctrl-C does: the finished PNGs are kept and the summary written.
With --ip-adapter and --ip-adapter-image, the one image prompt conditions every panorama.
DIR/summary.json says what ran, where, and how long. `--format jpg` or `webp` writes those instead
of PNGs (`--quality`), with the same metadata.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from .. import settings
from ..command_options import add_ip_adapter_options, add_model_options
from ..metadata import DEFAULT_QUALITY
from ..runner.cluster import add_cluster_options, check_cluster_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("A line's fields left out take the model's recommended settings, else the paper's. A PNG already "
                     "in DIR with the same parameters and the pixels panosync wrote is kept (a seed left out matches "
                     "any).")
    parser.add_argument("jobs", metavar="JOBS.jsonl",
                        help="one job a line: a JSON object of the HTTP API's fields (prompt, width, seed …) and an "
                             "optional name")
    add_model_options(parser, settings.DEFAULT_MODEL)
    add_ip_adapter_options(parser, "the image prompt the IP-Adapter conditions every panorama of the batch on")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="folder of the PNGs and summary.json; rerunning with the same folder resumes")
    parser.add_argument("--format", choices=("png", "jpg", "webp"), default="png",
                        help="the files' format, each with its parameters in its metadata (default png)")
    parser.add_argument("--quality", type=int, default=None,
                        help=f"JPEG or WebP quality, 1-100 (default {DEFAULT_QUALITY})")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace files in DIR that panosync did not write where a PNG or the summary goes "
                             "(else refused)")
    parser.add_argument("--view-batch-size", dest="view_batch_size", type=int, default=None,
                        help="views per network call: faster on a GPU, same result")
    add_cluster_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


class Terminated(KeyboardInterrupt):
    """SIGTERM, which ends a batch as Ctrl-C does: what is finished is kept, the summary written."""


def _terminate(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the summary's writing short
    raise Terminated()


def batch(args: argparse.Namespace) -> int:
    """Check everything (options, every line), then make what is missing; the exit status is 1 when a
    job failed or the batch could not finish (a full disk), 143 when it was ended by SIGTERM."""
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _batch(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _batch(args)
    except Terminated:
        print("panosync: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous)


def _batch(args: argparse.Namespace) -> int:
    from ..files import check_folder
    from ..ip_adapters import ip_adapter_metadata, ip_adapter_of_options
    from ..loras import weights_metadata, weights_of_options
    from ..metadata import check_fits, check_quality
    from ..models import pick_device, resolve_model
    from ..precision import pick_precision
    from ..runner import ModelSpec, open_engine
    from .jobs import read_jobs
    from .run import FAILED, BatchFault, run_batch

    check_cluster_options(args.ray, args.workers, args.dtype, args.device)
    settings.check({"view_batch_size": args.view_batch_size})
    model = args.model or settings.DEFAULT_MODEL
    source = resolve_model(model)
    if args.ray is None:  # on Ray the workers pick their device: this machine may have no GPU
        pick_precision(args.dtype, pick_device(args.device), source.family)
    loras, inversions = weights_of_options(args.lora, args.lora_weight_name, args.textual_inversion)
    adapter, image_prompt = ip_adapter_of_options(args.ip_adapter, args.ip_adapter_weight_name,
                                                  args.ip_adapter_image_encoder, args.ip_adapter_image)
    image_prompting = ip_adapter_metadata(adapter, image_prompt)
    out = check_folder(args.out, "--out")
    keys = {"model": model, **({"model_config": args.model_config} if args.model_config else {}),
            **({"vae": args.vae} if args.vae else {}), **weights_metadata((), inversions), **image_prompting}
    jobs = read_jobs(args.jobs, keys, source, args.view_batch_size, loras)
    for job in jobs:  # the format's limits known before any model loads
        job.extension = args.format
        check_quality(args.quality, job.file)
        try:
            check_fits(job.metadata, job.file)
        except ValueError as error:
            raise ValueError(f"{args.jobs}, line {job.line}: {error}") from None
    spec = ModelSpec(model, args.model_config, args.vae, args.device, args.dtype, args.gradient_checkpointing,
                     loras, inversions, adapter, image_prompt, threads=args.threads)

    def opened(on_step):
        engine = open_engine(spec, args.ray, args.workers, on_step)
        if threading.current_thread() is threading.main_thread():  # ray.init sets its own SIGTERM handler
            signal.signal(signal.SIGTERM, _terminate)
        return engine

    try:
        summary = run_batch(jobs, Path(out), opened, args.jobs,
                            {"kind": "ray", "address": args.ray} if args.ray else {"kind": "local"}, quiet=args.quiet,
                            weights={**weights_metadata(loras, inversions), **image_prompting},
                            overwrite=args.overwrite, quality=args.quality)
    except BatchFault as fault:
        print(f"panosync: error: {fault}", file=sys.stderr)
        return 1
    counts = summary["counts"]
    print(f"{counts['made']} made, {counts['kept']} kept, {counts['failed']} failed in {summary['seconds']:.1f} s; "
          f"summary in {Path(out) / 'summary.json'}")
    return 1 if counts[FAILED] else 0
