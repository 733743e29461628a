"""Running a batch: hold the output folder, keep the PNGs already made (verified by their pixels),
make the others on an engine (this process, or Ray workers), write each PNG as it arrives (so an
interruption loses only what was running), and a summary of what ran, where, and how long."""

from __future__ import annotations

import datetime
import errno
import json
import sys
import time
from pathlib import Path
from typing import Callable

from ..runner import Done
from .jobs import (CUT_SHORT, EDITED, FOREIGN, KEEP, REPLACED, SHOWN_BAD_LINES, UNVERIFIED, BatchJob, adopt_seed,
                   examine, settle_canvas)
from .lock import FolderLock

SUMMARY = "summary.json"
MADE, KEPT, FAILED, NOT_RUN = "made", "kept", "failed", "not run"
# A PNG that fails with one of these fails every job after it: the batch stops instead.
OUT_OF_SPACE = {errno.ENOSPC, errno.EROFS, *((errno.EDQUOT,) if hasattr(errno, "EDQUOT") else ())}


class BatchFault(Exception):
    """The batch could not go on or finish (the disk is full, the summary cannot be written), not
    through the input's fault: one sentence, exit status 1, the finished PNGs kept."""


def run_batch(jobs: list[BatchJob], out: Path, open_engine: Callable, jobs_file: str | Path, engine_words: dict,
              quiet: bool = False, on_step: Callable | None = None, weights: dict | None = None,
              overwrite: bool = False, quality: int | None = None) -> dict:
    """Make every job's file (a PNG, or the JPEG or WebP its extension names, at `quality`) in `out`
    that is not there yet; return the summary (also written to
    out/summary.json, even when interrupted). `open_engine(on_step)` gives the engine (opened only
    when something is to be made); `on_step(key, step, sync_weight, worker)` is called with the
    progress of every running job besides the progress bar; `weights` (loras.weights_metadata: the
    LoRAs at their default scales, the embeddings; ip_adapters.ip_adapter_metadata: the IP-Adapter
    and its image prompt) goes into the summary as it is.

    `out` is held by this batch (lock.FolderLock) until it returns: a ValueError when another holds
    it, or when it holds files panosync did not write where a PNG or the summary goes (unless
    `overwrite`), before anything is made. A BatchFault when the disk fills (the batch stops) or the
    summary cannot be written."""
    with FolderLock(out):
        return _run_batch(jobs, out, open_engine, jobs_file, engine_words, quiet, on_step, weights, overwrite,
                          quality)


def _run_batch(jobs, out, open_engine, jobs_file, engine_words, quiet, on_step, weights, overwrite,
               quality) -> dict:
    from tqdm.auto import tqdm

    started, clock = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    entries = {job.line: {"line": job.line, "name": job.name, "file": job.file, "status": NOT_RUN,
                          "seed": job.parameters["seed"]} for job in jobs}
    verdicts = {job.line: examine(job, out) for job in tqdm(jobs, desc=f"checking {len(jobs):,} jobs", unit="job",
                                                            disable=quiet, leave=False, mininterval=0.5)}
    _refuse_foreign(jobs, verdicts, out, overwrite)
    for reason in (REPLACED, CUT_SHORT, UNVERIFIED, EDITED):
        _say_remade([job for job in jobs if verdicts[job.line] == reason], reason)
    todo = [job for job in jobs if verdicts[job.line] != KEEP]
    kept = len(jobs) - len(todo)
    if quality is not None and kept and jobs[0].extension != "png" and not quiet:
        # the quality is how a file is written, not what it shows: a kept file keeps its own
        print(f"panosync: note: {kept:,} file{'s' if kept > 1 else ''} kept as written, at the quality of their "
              f"run; --quality applies to the files made now (delete the others to write them again).",
              file=sys.stderr)
    for job in jobs:
        if verdicts[job.line] == KEEP:
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
        from ..metadata import save_panorama

        job, entry = by_line[done.key], entries[done.key]
        steps.pop(done.key, None)
        error = done.error or "canceled" if done.made is None else None
        full = None
        if error is None:
            made = done.made
            try:
                save_panorama(made.image, out / job.file,
                              {**job.metadata, "width": made.image.width, "height": made.image.height,
                               "device": made.device, "dtype": made.dtype,
                               # as generate records them (runner.maker.Made.threads)
                               **({"threads": made.threads} if getattr(made, "threads", None) is not None else {})},
                              quality)
                entry.update(status=MADE, seconds=round(made.seconds, 3), worker=made.worker)
            except OSError as failure:  # a folder in the way: this job fails, the others go on
                noun = "PNG" if job.extension == "png" else "file"
                error = f"its {noun} could not be written to {out / job.file}: {failure.strerror or failure}"
                full = failure if failure.errno in OUT_OF_SPACE else None
        if error is not None:
            entry.update(status=FAILED, error=error)
            bar.write(f"panosync: {job.name} (line {job.line}) failed: {error}", file=sys.stderr)
        bar.update()
        if full is not None:  # every job after it would fail the same way
            raise BatchFault(f"{out / job.file} could not be written ({full.strerror or full}), so the batch "
                             f"stopped there: free some space (or remount {out} writable) and rerun to make the rest.")

    def finish() -> str | None:
        """Close what is open and write the summary; what went wrong with it, if anything."""
        bar.close()
        if engine is not None:
            engine.close()
        summary["seconds"] = round(time.perf_counter() - clock, 3)
        summary["counts"] = {status: sum(e["status"] == status for e in entries.values())
                             for status in (MADE, KEPT, FAILED, NOT_RUN)}
        try:
            write_summary(summary, out)
        except OSError as failure:
            return (f"{out / SUMMARY} could not be written ({failure.strerror or failure}); the "
                    f"{summary['counts'][MADE] + summary['counts'][KEPT]} finished PNGs are kept, and a rerun "
                    f"writes it.")
        return None

    engine = None
    try:
        if todo:
            from ..runner import run_all

            engine = open_engine(progress)
            summary["engine"]["workers"] = engine.workers
            if any(job.parameters.get("width") is None for job in todo):  # geometry known only once loaded
                settle_canvas(todo, engine.geometry(), jobs_file)
            run_all(engine, [(job.line, dict(job.parameters)) for job in todo], finished)
    except BatchFault as fault:
        summary["stopped"] = str(fault)
        problem = finish()
        raise BatchFault(f"{fault}{' Also, ' + problem if problem else ''}") from None
    except BaseException as ending:
        if isinstance(ending, KeyboardInterrupt):
            summary["interrupted"] = True
        problem = finish()
        if problem:  # said, and the interruption (or the error) goes on
            print(f"panosync: {problem}", file=sys.stderr)
        raise
    problem = finish()
    if problem:
        raise BatchFault(problem)
    return summary


def _refuse_foreign(jobs: list[BatchJob], verdicts: dict, out: Path, overwrite: bool) -> None:
    """A ValueError naming the files in `out` that panosync did not write and the batch would
    replace (a job's PNG, the summary), unless `overwrite`; or naming what is in the summary's way."""
    summary = out / SUMMARY
    if summary.exists() and not summary.is_file():
        raise ValueError(f"{summary} is a folder or another file that is not a regular one, where the batch writes "
                         f"its summary: move it away.")
    if overwrite:
        return
    foreign = [out / job.file for job in jobs if verdicts[job.line] == FOREIGN]
    if summary.is_file() and not _is_summary(summary):
        foreign.append(summary)
    if foreign:
        more = f" (and {len(foreign) - 1:,} more files of the jobs' names)" if len(foreign) > 1 else ""
        raise ValueError(f"{foreign[0]}{more} was not written by panosync, and the batch would replace it: move it "
                         f"away, or give --overwrite to replace it.")


def _is_summary(path: Path) -> bool:
    """Whether `path` is a summary a batch wrote (the one it is about to replace)."""
    try:
        written = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(written, dict) and {"jobs_file", "jobs", "engine"} <= set(written)


def _say_remade(jobs: list[BatchJob], reason: str) -> None:
    if jobs:
        names = ", ".join(job.file for job in jobs[:SHOWN_BAD_LINES])
        more = f" and {len(jobs) - SHOWN_BAD_LINES:,} more" if len(jobs) > SHOWN_BAD_LINES else ""
        noun = "PNG" if jobs[0].extension == "png" else "file"
        print(f"panosync: making again {len(jobs):,} {noun}{'s' if len(jobs) > 1 else ''} {reason}: {names}{more}.",
              file=sys.stderr)


def write_summary(summary: dict, out: Path) -> None:
    from ..files import write_atomically

    write_atomically(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
