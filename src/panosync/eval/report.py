"""Writing the evaluation's results: a Markdown table laid out like the paper's Table 1, JSON, CSV,
a bar chart and a grid of example panoramas. Every file is written whole or not at all.

The results are one dict (see `measure.measure`); the JSON file holds it unchanged, with every
panorama's own values, so that other statistics can be taken later without generating again.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

from ..files import write_atomically

__all__ = ["METRICS", "csv_text", "bar_chart", "example_grid", "markdown", "write_atomically"]

# key, column heading, better ("lower"/"higher"), factor the table shows the value multiplied by.
# The factors are the paper's (Table 1 shows Intra-Style-L, KID and GIQA in thousandths).
METRICS = [
    ("intra_lpips", "Intra-LPIPS", "lower", 1),
    ("intra_style_loss", "Intra-Style-L", "lower", 1e3),
    ("mean_clip_score", "Mean-CLIP-S", "higher", 1),
    ("fid", "FID", "lower", 1),
    ("kid", "KID", "lower", 1e3),
    ("mean_giqa", "Mean-GIQA", "higher", 1e3),
]
ARROW = {"lower": "↓", "higher": "↑"}
DISPLAY_NAMES = {"multidiffusion": "MultiDiffusion", "syncdiffusion": "SyncDiffusion"}
# The claims of the paper for SyncDiffusion against MultiDiffusion that the evaluation checks:
# more coherent crops, at a fidelity to single images that is not materially worse.
PAPER_CLAIM = {"intra_lpips": "lower", "intra_style_loss": "lower", "fid": "not materially worse",
               "kid": "not materially worse"}
# FID and KID compare two sets of images: with fewer reference images (or crops) than this, FID is
# dominated by its bias and KID by its noise (two seeds gave KID −95.7 against −48.5 ×10⁻³), so the
# numbers are shown with a warning and without a verdict.
FEW_IMAGES = 50
FIDELITY = ("fid", "kid")


def display_name(method: str) -> str:
    return DISPLAY_NAMES.get(method, method)


def heading(key: str, name: str, better: str, factor: float) -> str:
    superscript = str(round(math.log10(factor))).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    scale = "" if factor == 1 else f" (×10⁻{superscript})"
    return f"{name} {ARROW[better]}{scale}"


def _number(value: float) -> str:
    if value == 0 or 0.01 <= abs(value) < 1e5:
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"
    return f"{value:.3g}"


def _setting(value) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) or value is None else str(value)


def cell(metric: dict | None, factor: float) -> str:
    if metric is None:
        return "skipped"
    text = _number(metric["mean"] * factor)
    if metric.get("std") is not None:
        text += f" ± {_number(metric['std'] * factor)}"
    return text


# ------------------------------------------------------------------------------------- Markdown


def table(results: dict) -> list[str]:
    headings = [heading(*m) for m in METRICS]
    lines = ["| method | " + " | ".join(headings) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for method in results["methods"]:
        cells = [cell(method["metrics"].get(key), factor) for key, _, _, factor in METRICS]
        lines.append(f"| {display_name(method['name'])} | " + " | ".join(cells) + " |")
    return lines


def paired_difference(results: dict, key: str, baseline: str, candidate: str) -> dict | None:
    """Per-panorama values of two methods paired by prompt and seed: the mean difference
    (candidate - baseline), its standard error, and how often the candidate is lower."""
    by_name = {m["name"]: m for m in results["methods"]}
    values = {}
    for name in (baseline, candidate):
        values[name] = {(p["prompt"], p["seed"]): p.get(key) for p in by_name[name]["per_panorama"]}
    common = [k for k in values[baseline] if k in values[candidate]
              and values[baseline][k] is not None and values[candidate][k] is not None]
    if not common:
        return None
    differences = np.array([values[candidate][k] - values[baseline][k] for k in common])
    error = float(differences.std(ddof=1) / np.sqrt(len(differences))) if len(differences) > 1 else None
    return {"mean": float(differences.mean()), "standard_error": error,
            "candidate_lower": int((differences < 0).sum()), "pairs": len(common)}


def too_few_images(results: dict, *methods: str) -> str | None:
    """Why FID and KID of these methods mean nothing yet (fewer than FEW_IMAGES reference images or
    crops), in words; None when there are enough."""
    references = results.get("references", {}).get("count", 0)
    crops = min((m.get("crops", 0) for m in results["methods"] if not methods or m["name"] in methods), default=0)
    if references >= FEW_IMAGES and crops >= FEW_IMAGES:
        return None
    return f"too few images, {references} references and {crops} crops, under {FEW_IMAGES} each"


def comparison(results: dict, baseline: str = "multidiffusion", candidate: str = "syncdiffusion") -> list[str]:
    """Sentences that compare the candidate with the baseline on every metric, against the paper."""
    by_name = {m["name"]: m for m in results["methods"]}
    if baseline not in by_name or candidate not in by_name:
        return []
    lines = [f"## {display_name(candidate)} against {display_name(baseline)}", "",
             "| metric | paper | measured | as the paper? |", "|---|---|---|---|"]
    few = too_few_images(results, baseline, candidate)
    for key, name, better, factor in METRICS:
        base, cand = by_name[baseline]["metrics"].get(key), by_name[candidate]["metrics"].get(key)
        if base is None or cand is None:
            lines.append(f"| {name} | {PAPER_CLAIM.get(key, '–')} | skipped | – |")
            continue
        if key in FIDELITY and few:
            lines.append(f"| {name} | {PAPER_CLAIM.get(key, '–')} | {_number(base['mean'] * factor)} → "
                         f"{_number(cand['mean'] * factor)} | – ({few}: no verdict) |")
            continue
        change = (cand["mean"] - base["mean"]) / abs(base["mean"]) if base["mean"] else float("nan")
        improved = cand["mean"] < base["mean"] if better == "lower" else cand["mean"] > base["mean"]
        measured = (f"{_number(base['mean'] * factor)} → {_number(cand['mean'] * factor)} "
                    f"({change:+.1%}, {'better' if improved else 'worse'})")
        paired = paired_difference(results, key, baseline, candidate)
        if paired is not None and paired["pairs"] > 1 and key in ("intra_lpips", "intra_style_loss"):
            measured += (f"; lower in {paired['candidate_lower']} of {paired['pairs']} panoramas paired by prompt and "
                         f"seed, mean difference {_number(paired['mean'] * factor)} ± "
                         f"{_number(paired['standard_error'] * factor)} (standard error)")
        claim = PAPER_CLAIM.get(key, "–")
        if claim == "lower":
            verdict = "yes" if improved else "**no**"
        elif claim == "not materially worse":
            verdict = "yes (better)" if improved else f"worse by {abs(change):.1%}: judge whether that is material"
        else:
            verdict = "–"
        lines.append(f"| {name} | {claim} | {measured} | {verdict} |")
    return lines


def markdown(results: dict, chart: str | None = None, grid: str | None = None) -> str:
    canvas, notes = results["canvas"], results["notes"]
    seeds = results["seeds"]
    seed_text = f"{seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))
    lines = [f"# Evaluation of `{results['model']}`", "",
             f"{len(results['prompts'])} prompt(s) × {len(seeds)} seed(s) ({seed_text}) per method, "
             f"{canvas['width']}×{canvas['height']} panoramas, measured on {canvas['crops_per_panorama']} "
             f"non-overlapping {canvas['crop_size']}×{canvas['crop_size']} crops each (the model's native size). "
             "Mean ± standard deviation over panoramas; FID is one number per method, KID's ± is over random "
             "subsets.", ""]
    lines += table(results)
    lines += [""]
    few = too_few_images(results)
    if few:
        lines += [f"**Warning:** FID and KID on {few}: both are unreliable at these counts (FID biased upwards, KID "
                  f"noisy, even negative); they are shown without a verdict.", ""]
    lines += comparison(results)
    if chart:
        lines += ["", f"![the metrics as bars, ± one standard deviation]({chart})"]
    if grid:
        lines += ["", f"![example panoramas, the same prompt and seed in each group]({grid})", "",
                  "Example panoramas: each group is one prompt and seed, one row per method, in the table's order."]
    lines += ["", "## How it was measured", ""]
    lines += [f"- {label}: {text}" for label, text in notes.items()]
    lines += ["", "Methods and their settings:", ""]
    for method in results["methods"]:
        settings = ", ".join(f"{k} {_setting(v)}" for k, v in method["settings"].items())
        timing = method.get("seconds_per_panorama")
        timing_text = f"; {timing:.1f} s per panorama on {method.get('device', 'this machine')}" if timing else ""
        lines.append(f"- {display_name(method['name'])}: {settings}; {method['panoramas']} panoramas, "
                     f"{method['crops']} crops{timing_text}")
    shared = ", ".join(f"{k} {_setting(v)}" for k, v in results["generation"].items())
    lines += ["", f"Shared generation settings: {shared}.", "", "Prompts:", ""]
    lines += [f"- “{prompt}”" for prompt in results["prompts"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- CSV


def csv_columns() -> list[str]:
    columns = ["method", "panoramas", "crops"]
    for key, *_ in METRICS:
        columns += [f"{key}_mean", f"{key}_std"]
    return columns + ["seconds_per_panorama"]


def csv_text(results: dict) -> str:
    """One row per method; a skipped metric or a missing std is an empty cell."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=csv_columns(), lineterminator="\n")
    writer.writeheader()
    for method in results["methods"]:
        row = {"method": method["name"], "panoramas": method["panoramas"], "crops": method["crops"],
               "seconds_per_panorama": method.get("seconds_per_panorama") or ""}
        for key, *_ in METRICS:
            metric = method["metrics"].get(key) or {}
            row[f"{key}_mean"] = "" if metric.get("mean") is None else repr(metric["mean"])
            row[f"{key}_std"] = "" if metric.get("std") is None else repr(metric["std"])
        writer.writerow(row)
    return out.getvalue()


def json_text(results: dict) -> str:
    return json.dumps(results, indent=2, ensure_ascii=False) + "\n"


# ------------------------------------------------------------------------------------- pictures


def bar_chart(results: dict, path: str | Path) -> Path:
    """One panel per computed metric, one bar per method, ± one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    shown = [m for m in METRICS if any(method["metrics"].get(m[0]) for method in results["methods"])]
    names = [display_name(method["name"]) for method in results["methods"]]
    figure, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 3.2), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, name, better, factor) in zip(axes[0], shown):
        values, errors = [], []
        for method in results["methods"]:
            metric = method["metrics"].get(key)
            values.append(metric["mean"] * factor if metric else np.nan)
            errors.append(metric["std"] * factor if metric and metric.get("std") is not None else np.nan)
        ax.bar(range(len(names)), values, yerr=errors, capsize=4, color=colours[: len(names)])
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(heading(key, name, better, factor), fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    return write_atomically(path, buffer.getvalue())


def _font(size: int):
    try:
        return PIL.ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return PIL.ImageFont.load_default()


def example_grid(groups: list[tuple[str, list[tuple[str, np.ndarray]]]], path: str | Path,
                 min_width: int = 768, max_width: int = 1536) -> Path:
    """Panoramas in groups (a title, then (label, uint8 image) rows), labelled at the left, as one
    PNG. Small panoramas are enlarged by a whole factor (pixels stay sharp), big ones shrunk."""
    width = max(image.shape[1] for _, rows in groups for _, image in rows)
    scale = math.ceil(min_width / width) if width < min_width else min(1.0, max_width / width)
    label_width, gap, title_height = 170, 6, 22
    font, title_font = _font(13), _font(14)

    def resized(image: np.ndarray) -> PIL.Image.Image:
        picture = PIL.Image.fromarray(image)
        size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
        return picture.resize(size, PIL.Image.NEAREST if scale >= 1 else PIL.Image.LANCZOS)

    pictures = [(title, [(label, resized(image)) for label, image in rows]) for title, rows in groups]
    total_width = label_width + max(p.width for _, rows in pictures for _, p in rows)
    total_height = sum(title_height + sum(p.height + gap for _, p in rows) + gap for _, rows in pictures)
    canvas = PIL.Image.new("RGB", (total_width, total_height), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    y = 0
    for title, rows in pictures:
        draw.text((4, y + 4), title, fill="black", font=title_font)
        y += title_height
        for label, picture in rows:
            draw.text((4, y + picture.height // 2 - 7), label, fill="black", font=font)
            canvas.paste(picture, (label_width, y))
            y += picture.height + gap
        y += gap
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return write_atomically(path, buffer.getvalue())
