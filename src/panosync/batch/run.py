"""Running a batch: keep the PNGs already made, make the others on an engine (this process, or Ray
workers), write each PNG as it arrives (so an interruption loses only what was running), and a
summary of what ran, where, and how long."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import Callable

from ..runner import Done
from .jobs import BatchJob, adopt_seed, is_made, settle_canvas

SUMMARY = "summary.json"
MADE, KEPT, FAILED, NOT_RUN = "made", "kept", "failed", "not run"


def run_batch(jobs: list[BatchJob], out: Path, open_engine: Callable, jobs_file: str | Path, engine_words: dict,
              quiet: bool = False, on_step: Callable | None = None, weights: dict | None = None) -> dict:
    """Make every job's PNG in `out` that is not there yet; return the summary (also written to
    out/summary.json, even when interrupted). `open_engine(on_step)` gives the engine (opened only
    when something is to be made); `on_step(key, step, sync_weight, worker)` is called with the
    progress of every running job besides the progress bar; `weights` (loras.weights_metadata: the
    LoRAs at their default scales, the embeddings; ip_adapters.ip_adapter_metadata: the IP-Adapter
    and its image prompt) goes into the summary as it is."""
    from tqdm.auto import tqdm

    started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    entries = {job.line: {"line": job.line, "name": job.name, "file": job.file, "status": NOT_RUN,
                          "seed": job.parameters["seed"]} for job in jobs}
    todo = [job for job in jobs if not is_made(job, out)]
    for job in jobs:
        if job not in todo:
            adopt_seed(job, out)
            entries[job.line].update(status=KEPT, seed=job.parameters["seed"])
    summary = {"jobs_file": str(jobs_file), "model": jobs[0].metadata["model"], "out": str(out),
               **(weights or {}), "engine": {**engine_words, "workers": []},
               "started": started.isoformat(timespec="seconds"), "jobs": list(entries.values())}
    by_line = {job.line: job for job in jobs}
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="panoramas", unit="panorama", disable=quiet)
    steps: dict = {}  # line -> steps done, of the running jobs

    def progress(key, step: int, sync_weight: float, worker: dict) -> None:
        steps[key] = step
        bar.set_postfix_str(" · ".join(f"{by_line[line].name} step {done}/"
                                       f"{by_line[line].parameters['num_inference_steps']}"
                                       for line, done in sorted(steps.items())), refresh=True)
        if on_step is not None:
            on_step(key, step, sync_weight, worker)

    def finished(done: Done) -> None:
        from ..metadata import save_png

        job, entry = by_line[done.key], entries[done.key]
        steps.pop(done.key, None)
        error = done.error or "canceled" if done.made is None else None
        if error is None:
            made = done.made
            try:
                save_png(made.image, out / job.file, {**job.metadata, "width": made.image.width,
                                                      "height": made.image.height, "device": made.device,
                                                      "dtype": made.dtype})
                entry.update(status=MADE, seconds=round(made.seconds, 3), worker=made.worker)
            except OSError as failure:  # a full disk, a folder in the way: this job fails, the others go on
                error = f"its PNG could not be written to {out / job.file}: {failure.strerror or failure}"
        if error is not None:
            entry.update(status=FAILED, error=error)
            bar.write(f"panosync: {job.name} (line {job.line}) failed: {error}", file=sys.stderr)
        bar.update()

    engine = None
    try:
        if todo:
            from ..runner import run_all

            engine = open_engine(progress)
            summary["engine"]["workers"] = engine.workers
            if any(job.parameters.get("width") is None for job in todo):  # geometry known only once loaded
                settle_canvas(todo, engine.geometry(), jobs_file)
            run_all(engine, [(job.line, dict(job.parameters)) for job in todo], finished)
    except KeyboardInterrupt:
        summary["interrupted"] = True
        raise
    finally:
        bar.close()
        if engine is not None:
            engine.close()
        summary["seconds"] = round(time.perf_counter() - clock, 3)
        summary["counts"] = {status: sum(e["status"] == status for e in entries.values())
                             for status in (MADE, KEPT, FAILED, NOT_RUN)}
        write_summary(summary, out)
    return summary


def write_summary(summary: dict, out: Path) -> None:
    from ..files import write_atomically

    write_atomically(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
