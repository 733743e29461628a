"""A batch of pocket panoramas through the local runner and through Ray with 1 and 2 workers, in one
run on this machine's CPU: throughput, what Ray costs per job, and what a second worker buys.

    OMP_NUM_THREADS=1 python benchmarks/batch.py        # writes benchmarks/BATCH.md and BATCH.json

Every run makes the same jobs (pocket's recommended settings, 256 × 64 pixels, distinct seeds) into
a fresh folder through `panosync.batch.run.run_batch`, the code `panosync batch` runs. Each run is
timed in two parts: starting (loading the model here, or starting the Ray workers, each loading it)
and the jobs themselves (first job handed out to last PNG written). Ray's local instance is started
once, before the runs, and not counted. Every Ray worker computes on one thread (num_cpus 1); the
local runner is timed on one thread and on as many as the machine has.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src")]

import torch  # noqa: E402

from panosync.batch.jobs import read_jobs  # noqa: E402
from panosync.batch.run import run_batch  # noqa: E402
from panosync.files import write_atomically  # noqa: E402
from panosync.models import resolve_model  # noqa: E402
from panosync.runner import LocalEngine, ModelSpec  # noqa: E402

JOBS = 8
JOB = dict(width=256, num_inference_steps=30)  # pocket's recommended steps; four windows


class Timed:
    """An engine that notes when it was opened and when its first task was handed out."""

    def __init__(self, engine, opened_at: float):
        self.engine, self.opened_at, self.first_task_at = engine, opened_at, None

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def submit(self, key, call):
        if self.first_task_at is None:
            self.first_task_at = time.perf_counter()
        self.engine.submit(key, call)


def loaded_here(on_step) -> LocalEngine:
    """The local engine with its model loaded now (it would load at the first job), so that starting
    is timed as a Ray worker's is."""
    engine = LocalEngine(ModelSpec("pocket"), on_step)
    engine.maker
    return engine


def one_run(name: str, jobs_file: Path, folder: Path, open_engine) -> dict:
    jobs = read_jobs(jobs_file, {"model": "pocket"}, resolve_model("pocket"))
    timed = {}

    def opener(on_step):
        started = time.perf_counter()
        timed["engine"] = Timed(open_engine(on_step), started)
        timed["opened"] = started
        return timed["engine"]

    began = time.perf_counter()
    summary = run_batch(jobs, folder / name, opener, jobs_file, {"kind": name}, quiet=True)
    ended = time.perf_counter()
    engine = timed["engine"]
    assert summary["counts"]["made"] == JOBS, summary["counts"]
    start_seconds = engine.first_task_at - began
    job_seconds = ended - engine.first_task_at
    pipeline = sum(job["seconds"] for job in summary["jobs"])
    print(f"{name}: start {start_seconds:.1f} s, jobs {job_seconds:.1f} s", file=sys.stderr)
    workers = len(summary["engine"]["workers"])
    return {"start_seconds": round(start_seconds, 2), "jobs_seconds": round(job_seconds, 2),
            # what a job costs beyond its pipeline (handing it out, the picture's way back, the PNG):
            # the wall time the workers held, less their pipelines' own
            "outside_pipeline_seconds_per_job": round((job_seconds * workers - pipeline) / JOBS, 3),
            "panoramas_per_minute": round(60 * JOBS / job_seconds, 2),
            "pipeline_seconds_per_job": round(pipeline / JOBS, 3),
            "workers": workers, "total_seconds": round(summary["seconds"], 2)}


def main() -> int:
    import ray

    from panosync.runner.cluster import LOCAL_OBJECT_STORE_BYTES, RayEngine

    cores = os.cpu_count() or 1
    load_before = os.getloadavg()
    results: dict = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        jobs_file = folder / "jobs.jsonl"
        jobs_file.write_text("".join(json.dumps({"prompt": "snowy mountains", "seed": seed, **JOB}) + "\n"
                                     for seed in range(JOBS)))
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            results[f"local, {threads} thread(s)"] = one_run(f"local-{threads}", jobs_file, folder, loaded_here)
        torch.set_num_threads(1)
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                 log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent / "src")}})
        ray_start = time.perf_counter() - started
        for workers in (1, 2):
            results[f"Ray, {workers} worker(s)"] = one_run(
                f"ray-{workers}", jobs_file, folder,
                lambda on_step, workers=workers: RayEngine(ModelSpec("pocket"), "local", workers, on_step))
        ray.shutdown()
        same = all((folder / "local-1" / f"line-{n}.png").read_bytes() == (folder / run / f"line-{n}.png").read_bytes()
                   for run in ("ray-1", "ray-2") for n in range(1, JOBS + 1))
    load_after = os.getloadavg()

    local, one, two = results["local, 1 thread(s)"], results["Ray, 1 worker(s)"], results["Ray, 2 worker(s)"]
    figures = {
        "ray_overhead_seconds_per_job": round(one["outside_pipeline_seconds_per_job"]
                                              - local["outside_pipeline_seconds_per_job"], 3),
        "ray_wall_difference_seconds_per_job": round((one["jobs_seconds"] - local["jobs_seconds"]) / JOBS, 3),
        "second_worker_speedup": round(one["jobs_seconds"] / two["jobs_seconds"], 2),
        "ray_local_start_seconds": round(ray_start, 2),
        "same_pngs_on_ray_as_here": same,
    }
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    report = {"jobs": JOBS, "job": {"prompt": "snowy mountains", "model": "pocket", **JOB}, "runs": results,
              "figures": figures, "machine": f"{cpu}, {cores} cores, torch {torch.__version__}, ray {ray.__version__}",
              "load_average_before": [round(v, 2) for v in load_before],
              "load_average_after": [round(v, 2) for v in load_after]}
    write_atomically(HERE / "BATCH.json", json.dumps(report, indent=2) + "\n")
    write_atomically(HERE / "BATCH.md", markdown(report))
    print(markdown(report))
    return 0


def markdown(report: dict) -> str:
    figures = report["figures"]
    lines = [
        "# Batch: the local runner and Ray, on this CPU",
        "",
        f"`python benchmarks/batch.py`: {report['jobs']} pocket panoramas ({report['job']['width']} × 64 pixels, "
        f"{report['job']['num_inference_steps']} steps, SyncDiffusion with pocket's recommended settings) made by "
        f"`run_batch`, the code of `panosync batch`, each run into a fresh folder.",
        "",
        f"Machine: {report['machine']}. Load average (1, 5, 15 min) {report['load_average_before']} before and "
        f"{report['load_average_after']} after: the machine is shared with other work, so the figures carry its "
        f"noise.",
        "",
        "| run | start (s) | jobs (s) | panoramas / min | pipeline s / job | s / job outside the pipeline | workers |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, run in report["runs"].items():
        lines.append(f"| {name} | {run['start_seconds']:.1f} | {run['jobs_seconds']:.1f} | "
                     f"{run['panoramas_per_minute']:.1f} | {run['pipeline_seconds_per_job']:.2f} | "
                     f"{run['outside_pipeline_seconds_per_job']:.3f} | {run['workers']} |")
    lines += [
        "",
        "Start: loading the model here, or starting the Ray workers (each a process that imports PyTorch and loads "
        f"the model). Starting the local Ray instance itself took {figures['ray_local_start_seconds']:.1f} s more, "
        "once. Jobs: from the first job handed out to the last PNG written.",
        "",
        f"- Ray's cost per job (1 worker against the local runner, both on one thread), as time outside the "
        f"pipeline, which the machine's other work moves little: {figures['ray_overhead_seconds_per_job']:+.3f} s; "
        f"as wall time, which it moves a lot: {figures['ray_wall_difference_seconds_per_job']:+.3f} s.",
        f"- A second worker: {figures['second_worker_speedup']:.2f}× the throughput of one.",
        f"- The PNGs made on Ray are byte for byte those made here: {figures['same_pngs_on_ray_as_here']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
