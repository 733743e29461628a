"""What coherence costs on pocket, side by side in one run on this machine: seconds per 512 × 64
panorama (8 windows, 30 steps) of MultiDiffusion at the model's stride, the paper's MultiDiffusion (a
quarter-window stride), faithful mode (the paper's sync step in every step) and the default path
(pocket's recommended settings: the fast preset), each as a multiple of MultiDiffusion's. The
methods take turns, seed after seed, so that a busy moment of the machine falls on all of them;
each figure is the median over the seeds. Beside the times it prints each method's pocket bars, as
`python -m pocket.panorama_bars` measured them on fresh seeds (read from its JSON, not measured
here: that takes about half an hour).

    OMP_NUM_THREADS=2 python benchmarks/price.py --threads 2 --out benchmarks/PRICE
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE.parent)]

from panosync.files import write_atomically  # noqa: E402
from panosync.presets import preset_changes  # noqa: E402

PROMPTS = ("snowy mountains", "a landscape", "green hills at sunset")
BARS = HERE.parent / "docs" / "pocket-bars.json"


def methods(recommended: dict, window: int) -> dict[str, dict]:
    """The four ways to make the panorama, as pipeline arguments over the recommended settings."""
    faithful = {**recommended, **preset_changes("faithful", recommended)}
    return {
        "MultiDiffusion": {**recommended, "sync_weight": 0.0},
        "MultiDiffusion, the paper's stride": {**recommended, "sync_weight": 0.0, "stride": window // 4},
        "faithful mode": faithful,
        "default path (recommended: fast preset)": recommended,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="panoramas per method (seeds from 9900)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pocket.quality import load_for_measurement

    pipe, recommended = load_for_measurement("pocket")
    pipe.perceptual_distance("vgg"), pipe.perceptual_distance("alex")  # LPIPS loaded before any timing
    ways = methods(recommended, pipe.window)
    size = pipe.window * pipe.vae_scale_factor

    def panorama(settings: dict, seed: int, steps: int | None = None) -> float:
        options = {**settings, "num_inference_steps": steps or settings["num_inference_steps"]}
        started = time.perf_counter()
        pipe(PROMPTS[seed % len(PROMPTS)], width=8 * size, height=size, seed=seed, output_type="np", **options)
        return time.perf_counter() - started

    for settings in ways.values():  # warm-up: first calls allocate and pick kernels
        panorama(settings, 0, steps=2)
    seconds = {name: [] for name in ways}
    for seed in range(9900, 9900 + args.seeds):
        for name, settings in ways.items():
            seconds[name].append(panorama(settings, seed))
            print(f"{name}, seed {seed}: {seconds[name][-1]:.2f} s", flush=True)
    baseline = statistics.median(seconds["MultiDiffusion"])
    report = {"threads": args.threads, "canvas": f"{size}x{8 * size}", "seeds": args.seeds, "cpu": cpu_name(),
              "torch": torch.__version__, "methods": {}}
    for name, settings in ways.items():
        median = statistics.median(seconds[name])
        report["methods"][name] = {"settings": settings, "seconds": [round(s, 2) for s in seconds[name]],
                                   "median_seconds": round(median, 2),
                                   "times_multidiffusion": round(median / baseline, 2)}
    report["bars"] = bars_measured()
    markdown = to_markdown(report)
    print(markdown)
    if args.out:
        write_atomically(args.out.with_suffix(".json"), lambda f: f.write(json.dumps(report, indent=1).encode()))
        write_atomically(args.out.with_suffix(".md"), lambda f: f.write(markdown.encode()))


def bars_measured() -> dict:
    """Each method's bars from the fresh-seed measurement of pocket.panorama_bars (docs/pocket-bars.json)."""
    from pocket.bar_measures import verdicts

    if not BARS.is_file():
        return {}
    report = json.loads(BARS.read_text())
    judged = verdicts(report)
    return {"seeds": f"{report['seeds'][0]}-{report['seeds'][-1]}", "prompts": report["prompts"],
            "methods": {name: {"settings": report["methods"][name]["settings"],
                               "met": sum(bar.met for bar in bars), "of": len(bars),
                               "failed": [bar.what for bar in bars if not bar.met],
                               "mixed": report["methods"][name]["mixed_share"],
                               "intra_lpips": report["methods"][name]["intra_lpips"]}
                        for name, bars in judged.items()},
            "multidiffusion": {"mixed": report["methods"]["MultiDiffusion"]["mixed_share"],
                               "intra_lpips": report["methods"]["MultiDiffusion"]["intra_lpips"]}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def to_markdown(report: dict) -> str:
    lines = ["# The price of coherence on pocket", "",
             f"Written by `benchmarks/price.py`: {report['canvas']} panoramas (8 windows, 30 steps), "
             f"{report['threads']} threads on {report['cpu']}, torch {report['torch']}; the median of "
             f"{report['seeds']} seeds per method, the methods taking turns.", "",
             "| method | seconds per panorama | × MultiDiffusion | settings |", "|---|---|---|---|"]
    for name, figures in report["methods"].items():
        shown = ("stride", "sync_weight") if not figures["settings"]["sync_weight"] else (
            "stride", "sync_weight", "sync_threshold", "fast_modes")
        settings = {key: figures["settings"][key] for key in shown}
        lines.append(f"| {name} | {figures['median_seconds']:.2f} | {figures['times_multidiffusion']:.2f}× | "
                     f"`{json.dumps(settings)}` |")
    bars = report.get("bars")
    if bars:
        lines += ["", f"Bars, from `docs/pocket-bars.json` (`python -m pocket.panorama_bars`, fresh seeds "
                      f"{bars['seeds']}, {len(bars['prompts'])} prompts; MultiDiffusion mixes "
                      f"{bars['multidiffusion']['mixed']:.0%} of panoramas, Intra-LPIPS "
                      f"{bars['multidiffusion']['intra_lpips']:.3f}):", "",
                  "| method there | settings | bars met | mixed | Intra-LPIPS | failed |", "|---|---|---|---|---|---|"]
        for name, figures in bars["methods"].items():
            lines.append(f"| {name} | `{json.dumps(figures['settings'])}` | {figures['met']} of {figures['of']} | "
                         f"{figures['mixed']:.0%} | {figures['intra_lpips']:.3f} | "
                         f"{'; '.join(figures['failed']) or 'none'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
