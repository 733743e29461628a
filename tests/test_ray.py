"""The runner on a local Ray cluster (two CPU workers, started once for this module): the same PNGs
as here, a worker killed mid-job and the batch still complete, `evaluate --ray` equal to
`evaluate`, and `serve --ray` running two jobs at once and surviving a restart."""

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

ray = pytest.importorskip("ray")

from conftest import make_pipe  # noqa: E402
from panosync.batch.jobs import read_jobs  # noqa: E402
from panosync.batch.run import run_batch  # noqa: E402
from panosync.cli import main  # noqa: E402
from panosync.metadata import read_parameters  # noqa: E402
from panosync.models import resolve_model  # noqa: E402
from panosync.runner import ModelSpec  # noqa: E402
from panosync.runner.cluster import LOCAL_OBJECT_STORE_BYTES, RayEngine  # noqa: E402

pytestmark = pytest.mark.ray

SRC = str(Path(__file__).parents[1] / "src")
JOBS = [{"prompt": "snowy mountains", "seed": 1, "name": "snow", "width": 128, "num_inference_steps": 3},
        {"prompt": "a desert at dusk", "seed": 2, "width": 128, "num_inference_steps": 3, "sync_weight": 0},
        {"prompt": "green hills", "seed": 3, "width": 192, "num_inference_steps": 2},
        {"prompt": "a lake", "seed": 4, "name": "lake", "width": 128, "num_inference_steps": 12}]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """Two CPUs, so two workers; the workers import this tree's panosync, whatever is installed.

    Each worker computes on one thread (a Ray worker of one CPU), so the pictures made here to
    compare with theirs are made on one thread too: on a CPU the sums of a matrix product split
    over two threads round differently in the last bit, and a PNG can differ by a level (CI runs
    the tests on every core)."""
    import torch

    path = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False,
             logging_level=logging.WARNING, runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    ray.shutdown()


@pytest.fixture(scope="module")
def pocket_workers(local_ray):
    """Two Ray workers with pocket loaded, shared by the tests that need no fresh start (starting
    two costs about 10 s here)."""
    engine = RayEngine(ModelSpec("pocket"), "local", 2)
    yield engine
    engine.close()


class Borrowed:
    """The shared engine, lent to a batch: it hears the batch's progress, and stays open after."""

    def __init__(self, engine, on_step):
        self.engine, engine.on_step = engine, on_step

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def close(self):
        self.engine.on_step = None


@pytest.fixture(scope="module")
def jobs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("jobs") / "jobs.jsonl"
    path.write_text("".join(json.dumps(job) + "\n" for job in JOBS))
    return path


@pytest.fixture(scope="module")
def made_here(jobs_file, tmp_path_factory):
    """The batch made by the local runner, to compare with."""
    out = tmp_path_factory.mktemp("here")
    assert main(["batch", str(jobs_file), "--model", "pocket", "--out", str(out), "--quiet"]) == 0
    return out


def pngs(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.png"))}


def test_a_batch_on_two_ray_workers_makes_the_same_pngs_as_here(jobs_file, made_here, tmp_path):
    """The command end to end: --ray local joins the Ray this process has (else it would start one)."""
    out = tmp_path / "ray"
    assert main(["batch", str(jobs_file), "--model", "pocket", "--out", str(out), "--quiet", "--ray", "local",
                 "--workers", "2"]) == 0
    assert pngs(out) == pngs(made_here) and len(pngs(out)) == 4  # byte for byte: pixels and metadata
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"]["kind"] == "ray" and len(summary["engine"]["workers"]) == 2
    assert len({job["worker"]["pid"] for job in summary["jobs"]}) == 2  # both workers made some
    assert all(job["worker"]["pid"] != os.getpid() for job in summary["jobs"])


def test_evaluate_on_ray_equals_evaluate(tmp_path, capsys):
    """Before the tests that share two workers: this one starts its own (on the CPUs they would hold)."""
    model = tmp_path / "model"
    make_pipe(window=16, vae_factor=2).save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("snowy mountains\n")
    command = ["evaluate", "--model", str(model), "--prompts", str(prompts), "--seeds", "0-1", "--width", "64",
               "--height", "32", "--stride", "8", "--steps", "1", "--sync-threshold", "1", "--clip-model",
               str(tmp_path / "no-clip"), "--examples", "1", "--quiet"]
    assert main([*command, "--out", str(tmp_path / "here")]) == 0
    assert main([*command, "--out", str(tmp_path / "ray"), "--ray", "local", "--workers", "2"]) == 0
    assert "images: 6 made, 0 kept" in capsys.readouterr().out
    here = sorted(p.relative_to(tmp_path / "here") for p in (tmp_path / "here").rglob("*.png") if "results" not in p.name)
    ray_made = sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.png") if "results" not in p.name)
    assert here == ray_made and len(here) == 6
    for name in here:
        first, second = tmp_path / "here" / name, tmp_path / "ray" / name
        assert np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(second)))
        stored, again = read_parameters(first), read_parameters(second)
        assert stored.pop("seconds") > 0 and again.pop("seconds") > 0 and stored == again

    def metrics(folder):
        results = json.loads((folder / "results.json").read_text())
        return [{**method, "seconds_per_panorama": None} for method in results["methods"]]

    assert metrics(tmp_path / "here") == metrics(tmp_path / "ray")


def test_a_worker_killed_mid_job_is_replaced_and_its_job_made_again(jobs_file, made_here, pocket_workers, tmp_path):
    """SIGKILL the process of the worker making the 12-step job while it is at its first steps: Ray
    starts the worker again, which loads the model and makes the job from the start."""
    killed = {}

    def kill_mid_job(key, step, sync_weight, worker):
        if key == 4 and not killed and step <= 6:  # job 4 has 12 steps: at most half made
            killed.update(pid=worker["pid"], step=step)
            os.kill(worker["pid"], signal.SIGKILL)

    out = tmp_path / "ray"
    jobs = read_jobs(jobs_file, {"model": "pocket"}, resolve_model("pocket"))
    summary = run_batch(jobs, out, lambda on_step: Borrowed(pocket_workers, on_step), jobs_file,
                        {"kind": "ray"}, quiet=True, on_step=kill_mid_job)
    assert killed, "the job was never seen running"
    assert summary["counts"] == {"made": 4, "kept": 0, "failed": 0, "not run": 0}
    lake = next(job for job in summary["jobs"] if job["name"] == "lake")
    assert lake["worker"]["pid"] != killed["pid"]  # made by the worker started in place of the killed one
    with pytest.raises(ProcessLookupError):
        os.kill(killed["pid"], 0)
    assert pngs(out) == pngs(made_here)


# ------------------------------------------------------------------------------------ serve --ray

LONG = dict(width=128, num_inference_steps=400, sync_weight=0)  # runs until the server stops


def test_serve_on_ray_loads_no_model_of_its_own(pocket_workers, monkeypatch):
    """`serve --ray` asks the workers for what the checks need (the geometry, the defaults, the
    device), and they are what a model loaded here would say; nothing is loaded in the server."""
    import panosync.models
    import panosync.runner
    from panosync.cli import build_parser
    from panosync.server import command, generation

    loaded = generation.PanoramaModel.load("pocket", device="cpu")

    def no_loading(*args, **kwargs):
        raise AssertionError("the server loaded a model of its own")

    opened = []

    def lend_workers(spec, address, workers):
        opened.append((spec, address, workers))
        return Borrowed(pocket_workers, None)

    monkeypatch.setattr(panosync.models, "load_pipeline", no_loading)
    monkeypatch.setattr(generation, "load_pipeline", no_loading)  # imported there by name
    monkeypatch.setattr(panosync.runner, "open_engine", lend_workers)
    args = build_parser().parse_args(["serve", "--model", "pocket", "--ray", "local", "--workers", "2",
                                      "--view-batch-size", "2"])
    model, engine = command._open_workers(args)
    assert opened == [(ModelSpec("pocket"), "local", 2)]
    assert model.pipe is None
    assert (model.geometry, model.window, model.vae_factor) == (loaded.geometry, loaded.window, loaded.vae_factor)
    assert model.defaults == {**loaded.defaults, "view_batch_size": 2}
    assert (model.device.type, model.dtype, model.name, model.control) == ("cpu", "float32", "pocket", False)
    with pytest.raises(TypeError, match="Ray workers"):
        model.generate(model.defaults)


def test_serve_on_ray_runs_two_jobs_at_once_and_survives_a_restart(pocket_workers, tmp_path):
    """Two Ray workers: two long jobs run at the same time and a third waits. The server stops: both
    running jobs fail as interrupted, the finished one and the queued one stay. Started again, the
    queued one runs; the finished PNG is `panosync generate --from-png`'s picture."""
    from fastapi.testclient import TestClient

    from panosync.server.api import create_app
    from panosync.server.ray_worker import WorkersModel

    model, state = WorkersModel("pocket", pocket_workers), tmp_path / "state"

    def wait_for(client, job_id, done, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = client.get(f"/predictions/{job_id}").json()
            if done(job):
                return job
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} did not get there in {timeout} s: {job}")

    with TestClient(create_app(model, state, engine=pocket_workers)) as client:
        done = client.post("/predictions", json={"prompt": "snowy mountains", "seed": 3, "width": 128,
                                                 "num_inference_steps": 3}, headers={"Prefer": "wait=120"}).json()
        assert done["status"] == "succeeded"
        png = client.get(f"/predictions/{done['id']}/output.png").content
        long = [client.post("/predictions", json={"prompt": "a land", "seed": seed, **LONG}).json()["id"]
                for seed in (1, 2)]
        queued = client.post("/predictions", json={"prompt": "a lake", "seed": 5, "width": 128,
                                                   "num_inference_steps": 2}).json()["id"]
        for job_id in long:  # both running, both past their first step: at once
            wait_for(client, job_id, lambda job: job["status"] == "running" and job["progress"]["step"] >= 1)
        assert [client.get(f"/predictions/{job_id}").json()["status"] for job_id in long] == ["running"] * 2
        assert client.get(f"/predictions/{queued}").json()["status"] == "queued"
    assert not pocket_workers.busy  # the stop waited for the running jobs to end

    with TestClient(create_app(model, state, engine=pocket_workers)) as client:
        assert client.get(f"/predictions/{done['id']}/output.png").content == png
        for job_id in long:
            failed = client.get(f"/predictions/{job_id}").json()
            assert failed["status"] == "failed" and failed["error"].startswith("interrupted")
        assert wait_for(client, queued, lambda job: job["status"] not in ("queued", "running"))["status"] == "succeeded"

    first, again = tmp_path / "first.png", tmp_path / "again.png"
    first.write_bytes(png)
    assert main(["generate", "--from-png", str(first), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(again)))
