"""The thread count is a parameter of a CPU panorama (issue 27): on a CPU torch splits the sums of
the sync gradient's convolutions across its threads, so the picture depends on their number. A CPU
PNG records `threads`, `--from-png` computes on as many again whatever torch's default is, and the
runner (local, and each Ray worker: the ModelSpec carries the count) computes on the spec's."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.pipeline import SyncDiffusionPipeline
from panosync.runner import LocalEngine, ModelSpec, run_all

CANVAS = ["--width", "64", "--height", "32", "--stride", "8", "--steps", "2", "--seed", "5", "--quiet"]


@pytest.fixture
def threads_seen(monkeypatch):
    """torch's thread count during each pipeline call; torch's default put back after the test."""
    seen, call, before = [], SyncDiffusionPipeline.__call__, torch.get_num_threads()

    def counting(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return call(self, *args, **kwargs)

    monkeypatch.setattr(SyncDiffusionPipeline, "__call__", counting)
    yield seen
    torch.set_num_threads(before)


def pixels(path):
    return np.asarray(PIL.Image.open(path))


@pytest.mark.slow
def test_from_png_computes_on_the_recorded_threads_whatever_the_default(sd_folder, tmp_path, threads_seen):
    for threads, default_after in ((1, 2), (2, 1)):
        torch.set_num_threads(default_after)
        first, again = tmp_path / f"first-{threads}.png", tmp_path / f"again-{threads}.png"
        assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--threads", str(threads),
                     "--out", str(first)]) == 0
        assert read_parameters(first)["threads"] == threads
        assert torch.get_num_threads() == default_after  # put back after the panorama
        assert main(["generate", "--from-png", str(first), "--out", str(again), "--quiet"]) == 0
        assert np.array_equal(pixels(first), pixels(again))
        assert read_parameters(again) == read_parameters(first)
    assert threads_seen == [1, 1, 2, 2]
    # --threads beside --from-png overrides the PNG's count, like any option
    other = tmp_path / "other.png"
    assert main(["generate", "--from-png", str(tmp_path / "first-1.png"), "--threads", "2", "--out", str(other),
                 "--quiet"]) == 0
    assert read_parameters(other)["threads"] == 2 and threads_seen[-1] == 2


def test_without_threads_the_png_records_torchs_count(sd_folder, tmp_path, threads_seen):
    torch.set_num_threads(1)
    out = tmp_path / "default.png"
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--out", str(out)]) == 0
    assert read_parameters(out)["threads"] == 1 and threads_seen == [1]


@pytest.mark.parametrize("threads", ["0", "-3", "5000"])
def test_a_bad_thread_count_is_one_sentence(sd_folder, tmp_path, capsys, threads):
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--threads", threads,
                 "--out", str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == (f"panosync: error: --threads must be a whole number from 1 to 1024, "
                                               f"got {threads}.")
    assert not (tmp_path / "x.png").exists()


def test_a_bad_recorded_thread_count_is_one_sentence(sd_folder, tmp_path, capsys):
    from panosync.metadata import save_png

    made = tmp_path / "made.png"
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--threads", "1", "--out",
                 str(made)]) == 0
    tampered = tmp_path / "tampered.png"
    save_png(PIL.Image.open(made), tampered, {**read_parameters(made), "threads": "many"})
    capsys.readouterr()
    assert main(["generate", "--from-png", str(tampered), "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == ("panosync: error: threads in the file's metadata must be a whole number "
                                               "from 1 to 1024, got 'many'.")


@pytest.mark.slow
def test_the_runner_computes_on_the_specs_threads_as_generate_does(sd_folder, tmp_path, threads_seen):
    """The local runner (batch, evaluate, and on each Ray worker the same PanoramaMaker) at --threads 1
    under a default of 2: generate's PNG at --threads 1, and the count for the PNG's metadata."""
    torch.set_num_threads(2)
    out = tmp_path / "generate.png"
    assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--threads", "1", "--out",
                 str(out)]) == 0
    call = {name: value for name, value in read_parameters(out).items()
            if name in ("prompt", "width", "height", "stride", "num_inference_steps", "seed")}
    dones = []
    engine = LocalEngine(ModelSpec(str(sd_folder), threads=1))
    try:
        run_all(engine, [("job", call)], dones.append)
    finally:
        engine.close()
    made = dones[0].made
    assert made.threads == 1 and torch.get_num_threads() == 2 and threads_seen == [1, 1]
    assert np.array_equal(np.asarray(made.image), pixels(out))
    assert ModelSpec(str(sd_folder)).threads == 2  # not given: the count of the process that makes the spec
    with pytest.raises(ValueError, match="--threads must be a whole number from 1 to 1024, got 0"):
        ModelSpec(str(sd_folder), threads=0)


@pytest.mark.slow
def test_a_batch_at_threads_1_is_generates_png_at_threads_1(sd_folder, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "generate.png"
        assert main(["generate", "a land", "--model", str(sd_folder), *CANVAS, "--threads", "1", "--out",
                     str(out)]) == 0
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text(json.dumps(dict(prompt="a land", width=64, height=32, stride=8, num_inference_steps=2, seed=5,
                                        name="land")) + "\n")
        assert main(["batch", str(jobs), "--model", str(sd_folder), "--threads", "1", "--out",
                     str(tmp_path / "batch")]) == 0
        assert np.array_equal(pixels(tmp_path / "batch" / "land.png"), pixels(out))
    finally:
        torch.set_num_threads(before)
