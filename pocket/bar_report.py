"""The panorama bars' report: the Markdown page (the bars, the adherence and figures tables, the
classifier check) made from a report's JSON, and the picture of references and panoramas."""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import PIL.ImageDraw

from .bar_measures import (
    BASELINE, BOOTSTRAP_DRAWS, CHECK_SEEDS_FROM, GENERATOR_ACCURACY, HELD_OUT_SEEDS_FROM, INTERVAL_LEVEL,
    KID_CLEAR_OF_ZERO, MODEL_CROP_ACCURACY, MONTAGE_PRESENT, REFERENCE_SEEDS_FROM, SINGLE, kid_testable,
    montage_present, paired_adherence_difference, split_judged, verdicts,
)


def bar_table(report: dict) -> list[str]:
    results = verdicts(report)
    names = list(results)
    lines = ["| bar | MultiDiffusion | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for index, first in enumerate(next(iter(results.values()))):
        cells = [f"{bar.show(bar.measured)} {'met' if bar.met else '**NOT met**'}"
                 for bar in (results[name][index] for name in names)]
        lines.append(f"| {first.what} | {first.show(first.baseline)} | " + " | ".join(cells) + " |")
    return lines


def figures_table(report: dict) -> list[str]:
    prompts = report["prompts"]
    lines = ["| method | NN-LPIPS | " + " | ".join(f"NN-LPIPS “{p}”" for p in prompts) +
             " | FID | KID ×10³ | mixed | Intra-LPIPS | s / panorama |", "|---" * (len(prompts) + 7) + "|"]
    rows = {SINGLE: report["single_windows"], **report["methods"]}
    for name, s in rows.items():
        by_prompt = " | ".join(f"{s['nn_lpips_by_prompt'][p]:.3f}" for p in prompts)
        mixed = f"{s['mixed_share']:.0%}" if "mixed_share" in s else "–"
        intra = f"{s['intra_lpips']:.3f}" if "intra_lpips" in s else "–"
        lines.append(f"| {name} | {s['nn_lpips']:.3f} | {by_prompt} | {s['fid']:.1f} | "
                     f"{1000 * s['kid']:.1f} ± {1000 * s['kid_std']:.1f} | {mixed} | {intra} | "
                     f"{s.get('seconds_per_panorama', '–')} |")
    return lines


def prompt_table(report: dict) -> list[str]:
    lines = ["| method | prompt | NN-LPIPS | mixed | Intra-LPIPS |", "|---|---|---|---|---|"]
    for name, summary in report["methods"].items():
        for prompt in report["prompts"]:
            mine = [p for p in summary["panoramas"] if p["prompt"] == prompt]
            mixed = np.mean([len(set(p["crop_times"])) > 1 for p in mine])
            lines.append(f"| {name} | “{prompt}” | {summary['nn_lpips_by_prompt'][prompt]:.3f} | {mixed:.0%} | "
                         f"{np.mean([p['intra_lpips'] for p in mine]):.3f} |")
    return lines


def adherence_table(report: dict) -> list[str]:
    """Adherence per value: the model's own single windows, MultiDiffusion, and each method's difference
    from MultiDiffusion with its interval over panoramas."""
    methods = {name: s for name, s in report["methods"].items() if name != BASELINE}
    baseline = report["methods"][BASELINE]
    lines = ["| value | single windows | MultiDiffusion | " + " | ".join(methods) + " |",
             "|---|---|---|" + "---|" * len(methods)]
    judged, unjudged = split_judged(baseline["adherence"], report["judgeable"])
    for key, share in [*judged.items(), *unjudged.items()]:
        cells = []
        for summary in methods.values():
            paired = paired_adherence_difference(baseline, summary, key)
            interval = (f" ({100 * paired['difference']:+.1f} points, {INTERVAL_LEVEL:.0%} interval "
                        f"{100 * paired['low']:+.1f} to {100 * paired['high']:+.1f}, "
                        f"{paired['panoramas']} panoramas)") if paired else ""
            cells.append(f"{summary['adherence'][key]:.0%}{interval}")
        single = report["single_windows"]["adherence"].get(key)
        label = f"{key} (not judgeable: information only)" if key in unjudged else key
        lines.append(f"| {label} | {'–' if single is None else f'{single:.0%}'} | {share:.0%} | " +
                     " | ".join(cells) + " |")
    return lines


def adherence_section(report: dict) -> list[str]:
    """The adherence table with the sentences that read it, those on intervals only where the report
    holds per-panorama counts."""
    baseline = report["methods"][BASELINE]
    intervals = any(paired_adherence_difference(baseline, summary, key) is not None
                    for name, summary in report["methods"].items() if name != BASELINE
                    for key in baseline["adherence"])
    reading = ("“single windows”: held-out single-window samples of the same prompts, each one picture of the "
               "model. A panorama that is one scene copies its anchor window, so its crops should tend to this "
               "share rather than to MultiDiffusion's, which blends many windows.")
    if intervals:
        reading += (f" In brackets: the difference from MultiDiffusion in percentage points, with a "
                    f"{INTERVAL_LEVEL:.0%} bootstrap interval that resamples the panoramas ({BOOTSTRAP_DRAWS:,} "
                    f"draws, paired by prompt and seed), since a synced panorama's crops are not independent; at "
                    f"100 % on every panorama it collapses to zero width. The bars compare the measured shares "
                    f"and ignore these intervals.")
    else:
        reading += " (No intervals: this report predates per-panorama counts.)"
    if split_judged(baseline["adherence"], report["judgeable"])[1]:
        reading += (" Values the classifier check found it cannot judge are listed for information: no bar "
                    "judges them, since the classifier misreads too many of MultiDiffusion's own crops of them.")
    return ["Adherence against what the model itself draws" + (", and how far the difference from "
            "MultiDiffusion could be sampling noise:" if intervals else ":"), "", *adherence_table(report), "",
            reading, ""]


def check_table(report: dict) -> list[str]:
    lines = ["| value | prompt | generator crops | MultiDiffusion crops | single windows | judgeable |",
             "|---|---|---|---|---|---|"]
    for key, c in report["classifier_check"].items():
        lines.append(f"| {key} | “{c['prompt']}” | {c['generator_crops']:.0%} | {c['multidiffusion_crops']:.0%} | "
                     f"{c['single_windows']:.0%} | {'yes' if c['judgeable'] else '**no**'} |")
    return lines


def kid_sentence(baseline: dict) -> str:
    kid, spread = 1000 * baseline["kid"], 1000 * baseline.get("kid_std", 0.0)
    return (f"The KID bar needs MultiDiffusion's KID above {KID_CLEAR_OF_ZERO:g} times its spread over KID's "
            f"subsets ({kid:.1f} ± {spread:.1f} ×10⁻³: "
            f"{'yes' if kid_testable(baseline) else '**no**, so the bar is left out'}); a method's margin under "
            f"it is meaningful only against that spread.")


def markdown(report: dict, picture: str) -> str:
    seeds = report["seeds"]
    lines = ["# Panorama bars: coherent and still a picture", "",
             f"Measured by `python -m pocket.panorama_bars` on model `{report['model']}` in "
             f"{report['seconds'] / 60:.0f} min on the CPU: {len(report['prompts'])} prompts × {len(seeds)} seeds "
             f"({seeds[0]}–{seeds[-1]}, {'tuning seeds: a sweep' if report.get('tuning') else 'never used for tuning'}), "
             f"{report['width']}×{report['height']} panoramas, "
             f"{report['references']} single-window references per prompt (seeds from {REFERENCE_SEEDS_FROM}). "
             f"Steps, guidance and stride, the same for every method (the model's recommended settings, "
             f"with `--stride` or `--guidance` in place of its own if given; each method's sync settings are "
             f"listed under the picture): {json.dumps(report['settings'])}.", "",
             "## Bars (MultiDiffusion is the baseline)", "", *bar_table(report), "",
             f"MultiDiffusion mixes times of day in {report['methods'][BASELINE]['mixed_share']:.0%} of panoramas "
             f"(the montage bar needs ≥ {MONTAGE_PRESENT:.0%} to test anything: "
             f"{'yes' if montage_present(report['methods'][BASELINE]) else '**no**'}). Mixed shares count only "
             f"prompts that name no time of day. Adherence: the share of crops showing the value the prompt "
             f"names, on judgeable values only. {kid_sentence(report['methods'][BASELINE])}", "",
             *adherence_section(report),
             "## Figures", "", *figures_table(report), "",
             f"“{SINGLE}”: held-out single-window samples (seeds from {HELD_OUT_SEEDS_FROM}), as many as a "
             f"method's crops: what a genuine sample scores. NN-LPIPS: each crop's LPIPS-VGG to its nearest "
             f"reference of the same prompt; FID/KID: all crops against all references (small sets, so compare "
             f"methods, not papers).",
             "", "Per prompt:", "", *prompt_table(report),
             "", "## The classifier on panorama crops", "", *check_table(report), "",
             f"Judgeable: ≥ {GENERATOR_ACCURACY:.0%} on crops of wide rendered landscapes (known answers) and "
             f"≥ {MODEL_CROP_ACCURACY:.0%} of MultiDiffusion crops of a prompt naming the value "
             f"(seeds from {CHECK_SEEDS_FROM}).", "",
             f"![references, then MultiDiffusion above SyncDiffusion, same seeds]({picture})", "",
             "Per prompt: a row of single-window references, then for each seed every method, in this order: " +
             "; ".join(f"{name} {json.dumps(summary['settings'])}" for name, summary in report["methods"].items()) +
             "."]
    return "\n".join(lines) + "\n"


def labelled(row: np.ndarray, text: str, margin: int = 190) -> np.ndarray:
    canvas = PIL.Image.new("RGB", (margin + row.shape[1], row.shape[0]), "white")
    canvas.paste(PIL.Image.fromarray(row), (margin, 0))
    PIL.ImageDraw.Draw(canvas).text((4, row.shape[0] // 2 - 6), text, fill="black")
    return np.asarray(canvas)


def picture(references: dict, panoramas: dict[str, dict], count: int, seeds) -> np.ndarray:
    """Per prompt: eight references in a row, then each of the first `count` seeds by every method."""
    rows = []
    for prompt, refs in references.items():
        width = next(iter(panoramas.values()))[prompt][0].shape[1]
        strip = np.concatenate(list(refs[: width // refs.shape[2]]), axis=1)
        rows.append(labelled(strip, f"references: {prompt}"))
        for index in range(min(count, len(seeds))):
            for method, by_prompt in panoramas.items():
                short = method.replace("SyncDiffusion, ", "Sync ")
                rows.append(labelled(by_prompt[prompt][index], f"{short} {seeds[index]}"))
        rows.append(np.full((8, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows)
