"""Panorama bars that a destroyed picture cannot pass.

The montage bars of `quality` (crops agree on the time of day, Intra-LPIPS falls) reward any texture
that agrees with itself: a strip of blotches passes them. The paper claims coherence *with fidelity
kept*, so these bars measure both, per method, on seeds never used for tuning:

(a) fidelity: each crop's nearest-neighbour LPIPS (VGG) to single-window samples of the same prompt
    (the references: what the model draws when nothing is synced), and FID/KID of all crops against
    all references;
(b) prompt adherence: the share of crops that show what the prompt names, only on the attribute
    values the classifier is first shown to judge on panorama crops;
(c) coherence: the share of panoramas whose crops disagree on the time of day, and Intra-LPIPS.

A SyncDiffusion method passes when its (a) is within 10 % of MultiDiffusion's, its (b) is not lower,
its share in (c) at most half of MultiDiffusion's and its Intra-LPIPS at least 15 % lower.

    python -m pocket.panorama_bars --out docs/pocket-bars

This module reads the options and runs the measurement: bar_measures.py measures and judges,
bar_report.py writes the Markdown page and the picture.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import PIL.Image

from panosync.files import write_atomically
from .bar_measures import (
    BASELINE, PANORAMA_SEEDS_FROM, REFERENCE_SEEDS_FROM, TUNING_SWEEP_SEEDS_FROM, check_fresh_seeds, classifier_check,
    measure_method, measure_single_windows, verdicts, windows,
)
from .bar_report import bar_table, markdown, picture
from .quality import FAITHFUL, load_for_measurement

DEFAULT_PROMPTS = ("a landscape", "snowy mountains", "green hills at sunset")


# ------------------------------------------------------------------------------------------ main


def sync_methods(settings: dict) -> dict[str, dict]:
    """MultiDiffusion, SyncDiffusion with the model's settings, and faithful mode (the paper's sync
    step in every step, presets.py) at the same weight where the model's settings approximate it."""
    from panosync.presets import preset_changes

    synced = {k: v for k, v in settings.items() if k.startswith("sync_") or k == "fast_modes"}
    methods = {BASELINE: {"sync_weight": 0.0}, "SyncDiffusion": synced}
    faithful = {**synced, **{k: v for k, v in preset_changes("faithful", settings).items() if k in synced}}
    if faithful != synced:
        methods[FAITHFUL] = faithful
    return methods


def shared_settings(settings: dict, stride: int | None = None, guidance: float | None = None) -> dict:
    """The steps, guidance and stride every method runs with, MultiDiffusion and the references
    included: the model's recommended ones, with --stride and --guidance in their place when given
    (a sweep over either must move the baseline too)."""
    overrides = {"stride": stride, "guidance_scale": guidance}
    return {**settings, **{key: value for key, value in overrides.items() if value is not None}}


def parse_methods(texts: list[str]) -> dict[str, dict]:
    """--method NAME=JSON arguments: MultiDiffusion first, then each named setting."""
    if not texts:
        return {}
    methods = {BASELINE: {"sync_weight": 0.0}}
    for text in texts:
        name, _, setting = text.partition("=")
        try:
            methods[name.strip()] = json.loads(setting)
        except json.JSONDecodeError as error:
            raise SystemExit(f"--method {text!r}: write NAME={{JSON}}, e.g. 'w80={{\"sync_weight\": 80}}' ({error}).")
    return methods


def main(argv=None):
    from panosync.eval.fidelity import inception_features
    from panosync.eval.inception import load_inception
    from panosync.lpips import load_lpips

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pocket")
    parser.add_argument("--out", type=Path, default=Path("docs/pocket-bars"))
    parser.add_argument("--prompts", nargs="+", default=list(DEFAULT_PROMPTS))
    parser.add_argument("--seeds", type=int, default=12, help="panoramas per prompt and method")
    parser.add_argument("--first-seed", type=int, default=PANORAMA_SEEDS_FROM)
    parser.add_argument("--references", type=int, default=64, help="single-window references per prompt")
    parser.add_argument("--windows", type=int, default=8, help="panorama width in windows")
    parser.add_argument("--check-seeds", type=int, default=16,
                        help="panoramas per value in the classifier check (with 4, of 32 crops, the 90 %% rule "
                             "turned on one crop: 29 right pass, 28 fail)")
    parser.add_argument("--picture-seeds", type=int, default=2)
    parser.add_argument("--method", action="append", default=[], metavar="NAME=JSON",
                        help="measure this sync setting (JSON of pipeline arguments) instead of the model's "
                             "recommended one and the paper's gradient; repeatable; MultiDiffusion is always measured")
    parser.add_argument("--stride", type=int, default=None,
                        help="a stride in latent pixels for every method, MultiDiffusion included, in place of "
                             "the model's recommended one (a sweep over strides must move the baseline too)")
    parser.add_argument("--guidance", type=float, default=None,
                        help="a guidance scale for every method, MultiDiffusion and the references included, in "
                             "place of the model's recommended one")
    parser.add_argument("--tuning", action="store_true",
                        help="a settings sweep: on tuning seeds (from 100), so the report is not a fresh-seed result")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite the bars and the markdown from OUT.json, measuring nothing")
    args = parser.parse_args(argv)
    if args.markdown_only:
        write_report(json.loads(args.out.with_suffix(".json").read_text()), args.out)
        return
    first_seed = TUNING_SWEEP_SEEDS_FROM if args.tuning and args.first_seed == PANORAMA_SEEDS_FROM else args.first_seed
    seeds = list(range(first_seed, first_seed + args.seeds))
    if not args.tuning:
        check_fresh_seeds(seeds)
    methods = parse_methods(args.method)
    started = time.time()
    pipe, settings = load_for_measurement(args.model)
    settings = shared_settings(settings, stride=args.stride, guidance=args.guidance)
    size = pipe.window * pipe.vae_scale_factor
    lpips, inception = load_lpips("vgg"), load_inception()

    check = classifier_check(pipe, settings, args.windows, args.check_seeds)
    judged = [key for key, figures in check.items() if figures["judgeable"]]
    references = {prompt: windows(pipe, prompt, REFERENCE_SEEDS_FROM, args.references, settings)
                  for prompt in args.prompts}
    reference_features = inception_features([image for refs in references.values() for image in refs], inception)
    report = {"model": args.model, "settings": settings, "prompts": args.prompts, "seeds": seeds,
              "width": args.windows * size, "height": size, "references": args.references,
              "classifier_check": check, "judgeable": judged, "tuning": args.tuning}
    report["single_windows"] = measure_single_windows(pipe, args.prompts, args.seeds * args.windows, settings,
                                                      references, reference_features, lpips, inception)
    report["methods"], panoramas = {}, {}
    for name, sync in (methods or sync_methods(settings)).items():
        report["methods"][name], panoramas[name] = measure_method(
            pipe, args.prompts, seeds, args.windows * size, settings, sync, references, reference_features, lpips,
            inception, name)
    report["seconds"] = round(time.time() - started)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet = PIL.Image.fromarray(picture(references, panoramas, args.picture_seeds, seeds))
    write_atomically(args.out.with_suffix(".png"), lambda file: sheet.save(file, format="PNG"))
    write_report(report, args.out)


def write_report(report: dict, out: Path) -> None:
    """OUT.json and OUT.md, with the bars judged afresh; the bar table goes to stdout."""
    report["bars"] = {name: [vars(bar) for bar in rows] for name, rows in verdicts(report).items()}
    write_atomically(out.with_suffix(".json"), json.dumps(report, indent=2))
    write_atomically(out.with_suffix(".md"), markdown(report, out.with_suffix(".png").name))
    print("\n".join(bar_table(report)))


if __name__ == "__main__":
    main()
