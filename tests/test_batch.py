"""`panosync batch` here, on the bundled pocket model: every line checked before any work, one PNG
per job with generate's metadata, resuming, and an interruption that keeps what is finished. The
same batch on Ray is tests/test_ray.py's."""

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from panosync.batch.jobs import FIELDS, NULL_MEANS_SOMETHING, read_jobs
from panosync.batch.run import run_batch
from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.models import resolve_model
from panosync.runner import LocalEngine, ModelSpec

# pocket: 64-pixel windows; two windows wide, three steps: well under a second a panorama
SMALL = dict(width=128, num_inference_steps=3)


def write_jobs(path: Path, *jobs) -> Path:
    path.write_text("".join((job if isinstance(job, str) else json.dumps(job)) + "\n" for job in jobs))
    return path


def batch(jobs_file, out, *options):
    return main(["batch", str(jobs_file), "--model", "pocket", "--out", str(out), "--quiet", *options])


def pixels(path):
    with PIL.Image.open(path) as image:
        return np.asarray(image)


@pytest.mark.parametrize("line, words", [
    ('{"prompt": "hills", "width": 130}', "line 2: width must be a multiple of 4 pixels"),
    ('{"prompt": "hills", "sync_weight": "a lot"}', "line 2: sync_weight must be a number, got 'a lot'"),
    ('{"prompt": "hills", "steps": 3}', "line 2: steps is no field of a job: the fields are prompt"),
    ('{"width": 128}', "line 2: prompt must be given"),
    ('{"prompt": "hills", "name": "../up"}', "line 2: name must be a file name"),
    ('{"prompt": "hills", "name": "first"}', "line 2: name 'first' is the name of line 1 too"),
    ('{"prompt": "hills",}', "line 2: not valid JSON"),
    ('["hills"]', "line 2: a job is a JSON object of fields, got a JSON array"),
    ('{"prompt": "hills", "condition": "edges.png"}', "line 2: condition is no field of a job"),
    ('{"prompt": "hills", "name": "ok\\n"}', "line 2: name must be a file name"),  # "$" took a final newline
    ("[" * 100_000, "line 2: not valid JSON"),  # nested beyond Python's stack: RecursionError, once a traceback
    ('{"prompt": "\\ud800"}', "line 2: prompt must be UTF-8 text"),  # a lone surrogate: no tokenizer takes it
    ("null", "line 2: a job is a JSON object of fields, got a JSON null"),
])
def test_a_bad_line_is_one_sentence_naming_it_and_nothing_runs(tmp_path, capsys, line, words):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "snowy mountains", "name": "first", **SMALL}, line)
    assert batch(jobs, tmp_path / "out") == 2
    error = capsys.readouterr().err.strip()
    assert words in error and error.startswith("panosync: error: ") and "\n" not in error
    assert not (tmp_path / "out").exists()  # not even line 1 was made


def test_an_empty_file_and_a_bad_ray_address_are_refused_before_work(tmp_path, capsys):
    assert batch(write_jobs(tmp_path / "jobs.jsonl", ""), tmp_path / "out") == 2
    assert "holds no job" in capsys.readouterr().err
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "hills"})
    assert batch(jobs, tmp_path / "out", "--ray", "http://head:8265") == 2
    assert "--ray must be local (start Ray here), auto" in capsys.readouterr().err
    assert batch(jobs, tmp_path / "out", "--workers", "2") == 2
    assert "give --ray too" in capsys.readouterr().err
    # the workers pick the device on their machines, but the names are checked here, before Ray starts
    assert batch(jobs, tmp_path / "out", "--ray", "local", "--dtype", "float8") == 2
    assert "--dtype float8 is not a precision" in capsys.readouterr().err
    assert batch(jobs, tmp_path / "out", "--ray", "local", "--device", "cuda:1") == 2
    assert "each worker has its own" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_byte_order_mark_and_crlf_line_ends_are_read_as_json_lines(tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    # a raw U+2028 (JSON allows it in a string): str.splitlines would end the line there
    jobs.write_bytes('\ufeff{"prompt": "hills\u2028at night"}\r\n{"prompt": "a sea"}\r\n'.encode())
    read = read_jobs(jobs, {"model": "pocket"}, resolve_model("pocket"))
    assert [(job.line, job.parameters["prompt"]) for job in read] == [(1, "hills\u2028at night"), (2, "a sea")]


@pytest.mark.slow
def test_a_png_that_cannot_be_written_fails_its_job_and_the_others_are_made(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "hills", "seed": 1, "name": "blocked", **SMALL},
                      {"prompt": "a sea", "seed": 2, **SMALL})
    out = tmp_path / "out"
    (out / "blocked.png").mkdir(parents=True)  # a folder where the PNG goes
    assert batch(jobs, out) == 1
    captured = capsys.readouterr()
    assert "blocked (line 1) failed: its PNG could not be written" in captured.err and "Traceback" not in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert [job["status"] for job in summary["jobs"]] == ["failed", "made"] and (out / "line-2.png").is_file()


@pytest.mark.slow
def test_a_png_cut_short_or_made_with_another_vae_is_made_again(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "hills", "seed": 1, **SMALL},
                      {"prompt": "a sea", "seed": 2, **SMALL})
    out = tmp_path / "out"
    assert batch(jobs, out) == 0
    first = out / "line-1.png"
    first.write_bytes(first.read_bytes()[:-40])  # its metadata is whole, its pixels are not
    from panosync.metadata import save_png

    with PIL.Image.open(out / "line-2.png") as image:
        save_png(image.copy(), out / "line-2.png", {**read_parameters(out / "line-2.png"), "vae": "another/vae"})
    capsys.readouterr()
    assert batch(jobs, out) == 0
    assert "2 made, 0 kept" in capsys.readouterr().out


def test_the_fields_are_the_apis_and_null_means_what_it_means_there():
    pytest.importorskip("pydantic")
    from panosync.server import schema

    assert FIELDS == schema.FIELDS + schema.LORA_FIELDS and NULL_MEANS_SOMETHING == schema.NULL_MEANS_SOMETHING


@pytest.mark.slow
def test_one_png_per_job_named_by_name_or_line_with_generates_metadata(tmp_path, capsys):
    jobs = write_jobs(tmp_path / "jobs.jsonl", {"prompt": "snowy mountains", "seed": 5, "name": "snow", **SMALL}, "",
                      {"prompt": "a desert", "seed": 6, **SMALL, "sync_weight": 0})
    out = tmp_path / "out"
    assert batch(jobs, out) == 0
    assert "2 made, 0 kept, 0 failed" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["line-3.png", "snow.png", "summary.json"]
    # the same panorama `panosync generate` makes, with the same metadata but for the time
    assert main(["generate", "snowy mountains", "--model", "pocket", "--seed", "5", "--width", "128", "--steps", "3",
                 "--out", str(tmp_path / "generated.png"), "--quiet"]) == 0
    assert np.array_equal(pixels(out / "snow.png"), pixels(tmp_path / "generated.png"))
    assert read_parameters(out / "snow.png") == read_parameters(tmp_path / "generated.png")
    summary = json.loads((out / "summary.json").read_text())
    assert [(j["name"], j["line"], j["status"], j["seed"]) for j in summary["jobs"]] == [("snow", 1, "made", 5),
                                                                                      ("line-3", 3, "made", 6)]
    assert summary["engine"]["kind"] == "local" and summary["counts"] == {"made": 2, "kept": 0, "failed": 0,
                                                                          "not run": 0}
    assert all(j["seconds"] > 0 and j["worker"]["pid"] for j in summary["jobs"]) and summary["seconds"] > 0


@pytest.mark.slow
def test_a_rerun_makes_only_what_is_missing_or_changed(tmp_path, capsys):
    first = [{"prompt": "snowy mountains", "seed": 1, "name": "a", **SMALL},
             {"prompt": "green hills", "name": "b", **SMALL},  # no seed: any seed matches
             {"prompt": "a desert", "seed": 3, "name": "c", **SMALL}]
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    assert batch(write_jobs(jobs, *first), out) == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    seed_b = read_parameters(out / "b.png")["seed"]
    capsys.readouterr()

    assert batch(jobs, out) == 0  # nothing to do: the model is not even loaded
    assert "0 made, 3 kept" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == stamps
    assert json.loads((out / "summary.json").read_text())["jobs"][1]["seed"] == seed_b  # the seed made, reported

    (out / "a.png").unlink()
    changed = [first[0], first[1], {**first[2], "num_inference_steps": 2}]
    assert batch(write_jobs(jobs, *changed), out) == 0
    assert "2 made, 1 kept" in capsys.readouterr().out
    assert (out / "b.png").stat().st_mtime_ns == stamps["b.png"]
    assert read_parameters(out / "c.png")["num_inference_steps"] == 2 and (out / "a.png").is_file()


@pytest.mark.slow
def test_an_interrupted_batch_keeps_what_is_finished_and_a_rerun_makes_the_rest(tmp_path, capsys):
    """Ctrl-C in the middle of the second job: the first PNG is there, the summary says so, and the
    rerun makes the second and third only, the same as an uninterrupted batch makes them."""
    lines = [{"prompt": "snowy mountains", "seed": seed, "name": f"p{seed}", **SMALL} for seed in range(3)]
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", *lines), tmp_path / "out"
    read = read_jobs(jobs, {"model": "pocket"}, resolve_model("pocket"))

    def press_ctrl_c(key, step, sync_weight, worker):
        if key == 2 and step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(read, out, lambda on_step: LocalEngine(ModelSpec("pocket"), on_step), jobs, {"kind": "local"},
                  quiet=True, on_step=press_ctrl_c)
    assert sorted(p.name for p in out.glob("*.png")) == ["p0.png"]
    assert not list(out.glob(".*.tmp"))  # nothing half written
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and [j["status"] for j in summary["jobs"]] == ["made", "not run", "not run"]

    assert batch(jobs, out) == 0
    assert "2 made, 1 kept" in capsys.readouterr().out
    assert batch(jobs, tmp_path / "whole") == 0
    for name in ("p0.png", "p1.png", "p2.png"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_evaluate_and_serve_refuse_bad_cluster_options_before_loading(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hills\n")
    assert main(["evaluate", "--model", "pocket", "--prompts", str(prompts), "--out", str(tmp_path / "eval"),
                 "--workers", "0", "--ray", "local"]) == 2
    assert "--workers must be 1 or more, got 0." in capsys.readouterr().err
    assert main(["serve", "--model", "pocket", "--state-dir", str(tmp_path / "state"), "--ray", "local",
                 "--controlnet", "tiny-random"]) == 2
    assert "ControlSync (--controlnet) runs without --ray" in capsys.readouterr().err
    assert main(["serve", "--model", "pocket", "--state-dir", str(tmp_path / "state"), "--ray", "head"]) == 2
    assert "--ray must be local" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists() and not (tmp_path / "state").exists()


def test_serve_on_ray_fails_the_queued_jobs_once_no_ray_worker_is_left(tmp_path, caplog):
    """RayEngine.free() raises TaskFailed once every worker died past its restarts; serve --ray's
    worker then fails what is queued with that sentence, saying it once in the log, instead of a
    traceback every half second while jobs wait for ever."""
    from panosync.runner import TaskFailed
    from panosync.server.jobs import FAILED, JobStore
    from panosync.server.ray_worker import RayWorker

    class NoWorkerLeft:  # RayEngine's answer with every worker gone (runner/cluster.py, free)
        on_step = None

        def free(self):
            raise TaskFailed("Every Ray worker died more than 3 times: no task can run.")

    store = JobStore(tmp_path / "state")
    store.open()
    try:
        jobs = [store.add({"prompt": "hills"}, {"prompt": "hills", "num_inference_steps": 3}, max_queue=10)
                for _ in range(2)]
        worker = RayWorker(store, model=None, engine=NoWorkerLeft())
        with caplog.at_level("ERROR", logger="panosync.server"):
            worker._hand_out()
            worker._hand_out()
        for job in jobs:
            ended = store.get(job.id)
            assert ended.status == FAILED and ended.error.startswith("Every Ray worker died") and "Restart" in ended.error
        assert len([record for record in caplog.records if "Every Ray worker died" in record.message]) == 1
    finally:
        store.close()


def test_a_folder_or_a_pipe_given_as_the_jobs_file_is_named_what_it_is(tmp_path, capsys):
    import os

    assert main(["batch", str(tmp_path), "--model", "tiny-random", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{tmp_path} is a folder: give a JSONL file" in error and error.count("\n") == 1, error
    pipe = tmp_path / "jobs"
    os.mkfifo(pipe)
    assert main(["batch", str(pipe), "--model", "tiny-random", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert f"{pipe} is a device, pipe or socket, not a file" in error and error.count("\n") == 1, error
