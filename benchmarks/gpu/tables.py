"""GPU.md: the GPU check's results as Markdown (a headline, then each part's notes and table, its
failed and skipped runs), the one-line summary of a run printed as it ends, and the figures the
tables derive from the measured ones (the 50-step totals and the speed-ups over the reference
order), recomputed whenever the report is written."""

from __future__ import annotations

GIB = 2**30
TARGET_BYTES = 24 * 10**9  # "within 24 GB": a 24 GB card, less room for the CUDA context and the allocator's cache
TARGET_SPEEDUP = 3.0  # faithful mode (best chunk) against the reference order, per synced step, float16


# ------------------------------------------------------------------------------------- derived figures


def derived_totals(row: dict, syncs: bool, step_fraction: float, sync_first: int = 10, steps: int = 50) -> dict:
    """Seconds of a whole panorama of `steps` steps (× step_fraction), synced in every step, in the
    first `sync_first` and in the fast preset's first quarter (presets.fast_threshold), derived from
    the measured per-step and decode times (prompt encoding left out)."""
    from panosync.presets import fast_threshold

    steps, sync_first = round(steps * step_fraction), round(sync_first * step_fraction)
    synced_s, plain_s, decode_s = row.get("synced_step_s"), row.get("plain_step_s"), row.get("decode_s") or 0.0
    if not syncs:
        total = None if plain_s is None else steps * plain_s + decode_s
        return dict(total_every_step_s=total, total_first_10_s=total, total_fast_share_s=total, derived_steps=steps)
    every = None if synced_s is None else steps * synced_s + decode_s

    def first(synced_steps: int) -> float | None:
        if synced_s is None or plain_s is None:
            return None
        return synced_steps * synced_s + (steps - synced_steps) * plain_s + decode_s

    return dict(total_every_step_s=every, total_first_10_s=first(sync_first),
                total_fast_share_s=first(fast_threshold(steps)), derived_steps=steps)


def derive_speed_figures(runs: list[dict]) -> None:
    """Each speed row's derived 50-step totals and its synced step's speed-up over the reference order
    (recomputed whenever the report is written: the reference may be measured after a row)."""
    rows = [row for row in runs if not row.get("error")]
    reference = next((row for row in rows if row["mode"] == "reference"), None)
    for row in rows:
        row.update(derived_totals(row, row["syncs"], row.get("step_fraction", 1.0)))
        if reference and row.get("synced_step_s") and reference.get("synced_step_s"):
            row["synced_step_speedup_over_reference"] = reference["synced_step_s"] / row["synced_step_s"]


# ------------------------------------------------------------------------------------- writing


def per_call(views: int) -> str:
    return f"{views} view{'' if views == 1 else 's'} per call"


def seconds_text(value) -> str:
    return "–" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def one_line(row: dict) -> str:
    if row.get("error"):
        return f"{row['run']}: FAILED {row['error'][:300]}"
    parts = [f"{key}={seconds_text(row[key])}" for key in ("synced_step_s", "plain_step_s", "decode_s", "seconds")
             if row.get(key) is not None]
    if row.get("peak_bytes") is not None:
        parts.append(f"peak={row['peak_bytes'] / GIB:.2f} GiB")
    for key in ("finite", "image_std", "max_abs_difference_to_float32", "mean_abs_difference_to_float32"):
        if row.get(key) is not None:
            parts.append(f"{key}={row[key]:.3g}" if isinstance(row[key], float) else f"{key}={row[key]}")
    return f"{row['run']}: " + ", ".join(parts)


def markdown(data: dict) -> str:
    env, parts = data["environment"], data["parts"]
    title = "# GPU check: half precision, speed and memory" + (" (SMOKE RUN: tiny model on the CPU)" if env.get("smoke")
                                                               else "")
    lines = [title, "",
             f"{env.get('device', '?')}; torch {env.get('torch', '?')}"
             + (f" (CUDA {env['cuda']})" if env.get("cuda") else "")
             + f", diffusers {env.get('diffusers', '?')}, Python {env.get('python', '?')}; {env.get('date', '?')}; "
               f"{env.get('seconds_so_far', 0):.0f} s so far"
             + ("" if data.get("finished") else " (not finished: a run still going, or cut short)") + ".",
             "",
             ("A tiny model of Stable Diffusion 2 base's shape (speed.py's smoke size), float32 where the GPU's "
              "check runs float16: this run only shows that the check works." if env.get("smoke") else
              "Stable Diffusion 2 base's architecture (UNet 865 M parameters, VAE, OpenCLIP-H-sized text encoder) "
              "with random weights, built by benchmarks/speed.py's `sd2_base_components`: the same cost as the real "
              "model.") + " Prompt “snowy mountains”, guidance 7.5, sync weight 20, decay 0.95, seed 0. Written by "
             "benchmarks/gpu_check.py.", "",
             *headline(parts), ""]
    for name, part in parts.items():
        lines += [f"## {name}", "", f"Status: {part['status']}"
                  + (f"; {part['seconds']:.0f} s" if part.get("seconds") is not None else "") + ".", ""]
        lines += [f"- {note}" for note in part.get("notes", [])]
        if part.get("notes"):
            lines.append("")
        runs = part.get("runs", [])
        if name == "correctness":
            lines += correctness_table(runs)
        elif name == "gradient":
            lines += gradient_table(runs)
        elif name.startswith("speed"):
            lines += speed_table(runs, part)
        elif name == "memory":
            lines += memory_table(runs, part)
        elif name == "backbones":
            lines += backbones_table(runs)
        elif name == "offload":
            lines += offload_table(runs)
        elif name.startswith("flow"):
            import flow_check

            lines += flow_check.flow_table(runs)
        failed = [row for row in runs if row.get("error")]
        lines += [f"- failed: {row['run']}: {row['error'][:500]}" for row in failed]
        lines += [f"- skipped: {row['run']}: {row['reason']}" for row in part.get("skipped", [])]
        if failed or part.get("skipped"):
            lines.append("")
    lines += notes(data["plan"]["speed_precision"])
    return "\n".join(lines)


def headline(parts: dict) -> list[str]:
    lines = ["## Headline", ""]
    correctness = parts.get("correctness", {}).get("runs", [])
    for row in correctness:
        if row.get("synced"):
            verdict = "FAILED" if row.get("error") or not row.get("finite") or row.get("not_flat") is False else "ok"
            detail = row.get("error") or f"finite {row.get('finite')}, image std {row.get('image_std') or 0:.3g}, " \
                                         f"not flat {row.get('not_flat')}"
            lines.append(f"- Synced panorama in {row['precision']}: {verdict} ({detail[:200]}).")
        elif row.get("max_abs_difference_to_float32") is not None:
            largest, mean = row["max_abs_difference_to_float32"], row["mean_abs_difference_to_float32"]
            lines.append(f"- MultiDiffusion {row['precision']} against float32: largest pixel difference "
                         f"{largest:.3g}, mean {mean:.3g} (pixels in [0, 1]).")
    for row in parts.get("gradient", {}).get("runs", []):
        if row.get("cosine_to_float32") is not None:
            lines.append(f"- Sync gradient, {row['run']}: cosine to float32's {row['cosine_to_float32']:.3f}, norm "
                         f"ratio {row['norm_ratio_to_float32']:.3f}.")
    for name, part in parts.items():
        if not name.startswith("speed"):
            continue
        runs = [row for row in part.get("runs", []) if not row.get("error")]
        best = next((row for row in runs if row.get("best_chunk")), None)
        reference = next((row for row in runs if row.get("mode") == "reference"), None)
        if best and reference and best.get("synced_step_s") and reference.get("synced_step_s"):
            ratio = reference["synced_step_s"] / best["synced_step_s"]
            lines.append(f"- {name}: faithful mode ({per_call(best['chunk'])}) {best['synced_step_s']:.3f} s per "
                         f"synced step, the reference order {reference['synced_step_s']:.3f} s: {ratio:.2f}× — the "
                         f"{TARGET_SPEEDUP:g}× target is {'met' if ratio >= TARGET_SPEEDUP else 'NOT met'}.")
    memory = parts.get("memory", {})
    measured = [row for row in memory.get("runs", []) if row.get("peak_bytes") is not None and not row.get("error")]
    for canvas in dict.fromkeys(row["canvas"] for row in measured):
        rows = sorted((row for row in measured if row["canvas"] == canvas), key=lambda row: row["what"] == "decode")
        figures = [f"{row['short']} {row['peak_bytes'] / GIB:.2f} GiB"
                   + ("" if row["peak_bytes"] <= TARGET_BYTES else " (OVER 24 GB)") for row in rows]
        lines.append(f"- Peak memory at {canvas.replace('x', '×')}: " + "; ".join(figures) + ".")
    for canvas, derived in (memory.get("largest_chunk_within_24GB") or {}).items():
        if derived["largest_chunk"] is not None:
            lines.append(f"- {canvas.replace('x', '×')}: each view more per call adds about "
                         f"{derived['bytes_per_view'] / GIB:.2f} GiB to a synced step; the largest chunk within 24 GB "
                         f"is about {derived['largest_chunk']} views (derived from two chunks' peaks).")
    not_done = [f"{name} ({part['status']})" for name, part in parts.items() if part["status"] != "done"]
    failed = [f"{row['run']}" for part in parts.values() for row in part.get("runs", []) if row.get("error")]
    if failed:
        lines.append(f"- Failed runs (errors under their parts): {'; '.join(failed)}.")
    if not_done:
        lines.append(f"- Not done: {'; '.join(not_done)}.")
    return lines


def correctness_table(runs: list[dict]) -> list[str]:
    lines = ["| run | finite | image std | not flat | max abs Δ to float32 | mean abs Δ to float32 | s / synced step | "
             "s / plain step |", "|---|---|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("error") and not row.get("finite") is False:
            continue

        def figure(key, digits=".3g"):
            return "–" if row.get(key) is None else format(row[key], digits)

        lines.append(f"| {row['run']} | {row.get('finite', '–')} | {figure('image_std')} | "
                     f"{row.get('not_flat', '–')} | "
                     f"{figure('max_abs_difference_to_float32')} | {figure('mean_abs_difference_to_float32')} | "
                     f"{seconds_text(row.get('synced_step_s'))} | {seconds_text(row.get('plain_step_s'))} |")
    return lines + [""]


def gradient_table(runs: list[dict]) -> list[str]:
    lines = ["| run | cosine to float32 | norm ratio to float32 | share of exact zeros | finite |", "|---|---|---|---|---|"]
    for row in runs:
        if row.get("error"):
            continue

        def figure(key):
            return "–" if row.get(key) is None else f"{row[key]:.4f}"

        lines.append(f"| {row['run']} | {figure('cosine_to_float32')} | {figure('norm_ratio_to_float32')} | "
                     f"{figure('zero_share')} | {row.get('finite')} |")
    return lines + [""]


def speed_table(runs: list[dict], part: dict) -> list[str]:
    lines = ["| mode | views per call | s / synced step | s / plain step | final decode s | 50 steps, sync in every "
             "step (derived) s | 50 steps, sync in the first 10 (derived) s | 50 steps, sync in the first 13, the fast "
             "preset's share (derived) s | synced step × faster than the reference order | finite |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("error"):
            continue
        speedup = row.get("synced_step_speedup_over_reference")
        steps = "" if row.get("derived_steps", 50) == 50 else f" ({row['derived_steps']} steps)"
        lines.append(f"| {row['run']}{' **(best)**' if row.get('best_chunk') else ''} | {row['chunk']} | "
                     f"{seconds_text(row.get('synced_step_s'))} | {seconds_text(row.get('plain_step_s'))} | "
                     f"{seconds_text(row.get('decode_s'))} | {seconds_text(row.get('total_every_step_s'))}{steps} | "
                     f"{seconds_text(row.get('total_first_10_s'))}{steps} | "
                     f"{seconds_text(row.get('total_fast_share_s'))}{steps} | "
                     f"{'–' if speedup is None else f'{speedup:.2f}'} | {row.get('finite')} |")
    return lines + [""]


def memory_table(runs: list[dict], part: dict) -> list[str]:
    lines = ["| work | peak GiB | held before GiB | peak above that GiB | s | finite |", "|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("error"):
            continue
        lines.append(f"| {row['run']} | {row['peak_bytes'] / GIB:.2f} | {row['held_before_bytes'] / GIB:.2f} | "
                     f"{(row['peak_bytes'] - row['held_before_bytes']) / GIB:.2f} | {seconds_text(row['seconds'])} | "
                     f"{row['finite']} |")
    return lines + [""]


def offload_table(runs: list[dict]) -> list[str]:
    lines = ["| offload | synced step (s) | plain step (s) | peak GiB | max abs difference to on-device |",
             "|---|---|---|---|---|"]
    for row in runs:
        if row.get("error"):
            continue
        difference = row.get("max_abs_difference_to_on_device")
        lines.append(f"| {row['offload']} | {seconds_text(row.get('synced_step_s'))} | "
                     f"{seconds_text(row.get('plain_step_s'))} | {row['peak_bytes'] / GIB:.2f} | "
                     f"{'–' if difference is None else f'{difference:.3g}'} |")
    return lines + [""]


def backbones_table(runs: list[dict]) -> list[str]:
    lines = ["| family | canvas | views | mode | synced step (s) | plain step (s) | final decode (s) | peak memory | "
             "50 steps × MultiDiffusion (derived: every step synced; the fast preset: its first 13) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in runs:
        if row.get("what") != "panorama" or row.get("error"):
            continue
        peak = f"{row['peak_bytes'] / GIB:.1f} GiB" if row.get("peak_bytes") is not None else "?"
        lines.append(f"| {row['family']}, {row['precision']} | {row['canvas']} | {row['views']} | "
                     f"{row.get('mode', 'faithful')} | {seconds_text(row.get('synced_step_s'))} | "
                     f"{seconds_text(row.get('plain_step_s'))} | {seconds_text(row.get('decode_s'))} | {peak} | "
                     f"{times_multidiffusion(row)} |")
    return lines + [""]


def times_multidiffusion(row: dict, steps: int = 50) -> str:
    """A backbone panorama's 50 steps against MultiDiffusion's (its plain step every step), derived:
    faithful mode synced in every step, the fast preset in its first quarter; decode left out."""
    from panosync.presets import fast_threshold

    synced_s, plain_s = row.get("synced_step_s"), row.get("plain_step_s")
    if not synced_s or not plain_s:
        return "–"
    synced_steps = fast_threshold(steps) if row.get("mode") == "fast preset" else steps
    return f"{(synced_steps * synced_s + (steps - synced_steps) * plain_s) / (steps * plain_s):.2f}×"


def notes(precision: str) -> list[str]:
    return [line.replace("{precision}", precision) for line in NOTES]


NOTES = [
    "## Notes", "",
    "- Per-step times are medians of steps timed one by one (the device synchronised at the end of each step), the "
    "first step of every run left out (prompt encoding, first-call warm-up). The 50-step totals are DERIVED from them: "
    "50 × synced step + decode, 10 × synced + 40 × plain + decode (dpm_solver rows: 25 steps, 5 synced), and "
    "13 × synced + 37 × plain + decode, the fast preset's share (its own step is the reuse_noise + lpips_alex row); the "
    "prompt encoding is left out.",
    "- The reference order is tests/reference_loop.py, run on the {precision} pipeline (networks in {precision}, "
    "arithmetic between them in float32): one view at a time, the anchor's gradient computed and discarded, LPIPS's "
    "own forward for every pair, a second UNet pass for every view.",
    "- The fast modes run at the view batch size faithful mode did best with; what each approximates is in "
    "src/panosync/fast.py. The sync decoder is a TAESD-shaped AutoencoderTiny with random weights: it times the "
    "decoder, its panoramas mean nothing.",
    "- Not flat: the synced image's standard deviation is more than a tenth of float32 MultiDiffusion's on the same "
    "model (random weights make no picture, but they do make one that varies).",
]
