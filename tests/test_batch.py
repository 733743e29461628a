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
    ('["hills"]', "line 2: a job is a JSON object of fields, got a JSON list"),
    ('{"prompt": "hills", "condition": "edges.png"}', "line 2: condition is no field of a job"),
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
    assert not (tmp_path / "out").exists()


def test_the_fields_are_the_apis_and_null_means_what_it_means_there():
    pytest.importorskip("pydantic")
    from panosync.server import schema

    assert FIELDS == schema.FIELDS and NULL_MEANS_SOMETHING == schema.NULL_MEANS_SOMETHING


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
