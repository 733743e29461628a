import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from diffusers import DDIMScheduler

from panosync import models
from panosync.cli import main
from panosync.metadata import read_parameters
from panosync.pipeline import SyncDiffusionPipeline


def test_from_pretrained_loads_a_stable_diffusion_folder_with_ddim(sd_folder, sync_pipe):
    pipe = SyncDiffusionPipeline.from_pretrained(sd_folder)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.window == 16 and pipe.vae_scale_factor == 2
    kwargs = dict(width=64, height=32, stride=8, num_inference_steps=2, sync_weight=0, seed=1, output_type="np")
    pipe.set_progress_bar_config(disable=True)
    assert np.array_equal(pipe("a", **kwargs).images, sync_pipe("a", **kwargs).images)


@pytest.mark.slow
def test_generate_writes_a_png_with_every_parameter_and_reproduces_it(sd_folder, tmp_path, capsys):
    first = tmp_path / "first.png"
    code = main(["generate", "a land at night", "--model", str(sd_folder), "--width", "64", "--height", "32",
                 "--stride", "8", "--steps", "2", "--seed", "5", "--sync-threshold", "1", "--negative-prompt", "fog",
                 "--out", str(first), "--quiet"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    parameters = read_parameters(first)
    assert parameters["seed"] == 5 and parameters["model"] == str(sd_folder)
    expected = dict(prompt="a land at night", negative_prompt="fog", width=64, height=32, stride=8,
                    num_inference_steps=2, sync_threshold=1, sync_weight=20.0, sync_decay_rate=0.95, sync_freq=1,
                    guidance_scale=7.5, loop_closure=False, anchor=None, view_batch_size=None, device="cpu",
                    dtype="float32")
    assert {name: parameters[name] for name in expected} == expected
    again = tmp_path / "again.png"
    assert main(["generate", "--from-png", str(first), "--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(again)))
    assert read_parameters(again) == parameters
    # an option given beside --from-png overrides the stored one
    other = tmp_path / "other.png"
    assert main(["generate", "--from-png", str(first), "--seed", "6", "--out", str(other), "--quiet"]) == 0
    assert read_parameters(other)["seed"] == 6
    assert not np.array_equal(np.asarray(PIL.Image.open(first)), np.asarray(PIL.Image.open(other)))


def test_loop_closure_and_random_seed_are_recorded(sd_folder, tmp_path, capsys):
    out = tmp_path / "loop.png"
    assert main(["generate", "x", "--model", str(sd_folder), "--width", "64", "--height", "32", "--steps", "1",
                 "--sync-weight", "0", "--loop-closure", "--out", str(out), "--quiet"]) == 0
    parameters = read_parameters(out)
    assert parameters["loop_closure"] is True and isinstance(parameters["seed"], int)
    assert f"seed {parameters['seed']}" in capsys.readouterr().out
    opened = tmp_path / "opened.png"
    assert main(["generate", "--from-png", str(out), "--no-loop-closure", "--out", str(opened), "--quiet"]) == 0
    assert read_parameters(opened)["loop_closure"] is False


def test_default_output_name_carries_the_seed(sd_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "x", "--model", str(sd_folder), "--steps", "1", "--sync-weight", "0", "--seed", "9",
                 "--quiet"]) == 0
    # default canvas: one window high, four wide
    assert PIL.Image.open(tmp_path / "panosync-9.png").size == (128, 32)


def no_loading(*args, **kwargs):
    raise AssertionError("a model was loaded before the input was checked")


def bad_checkpoint(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"this is not a checkpoint")
    return str(path)


BAD_COMMANDS = [
    (["--width", "65"], "width must be a multiple of 2 pixels"),
    (["--height", "16"], "height must be at least one window, 32 pixels"),
    (["--stride", "0"], "stride must be 1 or more"),
    (["--stride", "17"], "stride must be between 1 and the window size"),
    (["--steps", "-5"], "num_inference_steps must be from 1 to 1000"),
    (["--sync-weight", "-1"], "sync_weight must be 0 or more"),
    (["--guidance-scale", "-2"], "guidance_scale must be from 0 to 30"),
    (["--sync-decay-rate", "2"], "sync_decay_rate must be more than 0 and at most 1"),
    (["--sync-freq", "0"], "sync_freq must be from 1 to 1000"),
    (["--sync-threshold", "-1"], "sync_threshold must be from 0 to 1000"),
    (["--dtype", "float8"], "dtype must be one of auto, float32, float16, bfloat16, autocast"),
    # NaN and infinity, which float() reads: refused, not a black PNG
    (["--guidance-scale", "nan"], "guidance_scale must be a finite number, got nan"),
    (["--sync-weight", "nan"], "sync_weight must be a finite number"),
    (["--sync-weight", "inf"], "sync_weight must be a finite number"),
    (["--sync-decay-rate=-inf"], "sync_decay_rate must be a finite number"),
    (["--sync-image-scale", "nan"], "sync_image_scale must be a finite number"),
    # ranges the API has always had, now the command's too
    (["--seed", "-1"], "seed must be from 0 to 4294967295, got -1"),
    (["--seed", str(2**64)], "seed must be from 0 to 4294967295"),
    # what used to be found only after the model had loaded (or not at all)
    (["--steps", "100000"], "num_inference_steps must be from 1 to 1000"),
    (["--steps", "1000"], "num_inference_steps must be at most 999 with this model's scheduler"),
    (["--anchor", "99"], "anchor must be a view index from 0 to 12 (this canvas has 13 views)"),
    (["--anchor", "-1"], "anchor must be 0 or more"),
    (["--view-batch-size", "0"], "view_batch_size must be 1 or more"),
    (["--width", "99999992"], "width must be from 1 to 16384"),
    (["--width", "16384", "--height", "16384"], "width × height must be at most 67,108,864 pixels"),
    (["--sync-image-scale", "0.1"], "sync_image_scale 0.1 shrinks the 32-pixel views below 16 pixels"),
    (["--sync-decoder", "/nonexistent"], "sync_decoder /nonexistent is not a diffusers AutoencoderTiny folder"),
    (["--device", "foo"], "--device foo is not a device"),
]


@pytest.mark.parametrize("options,message", BAD_COMMANDS)
def test_bad_options_fail_with_one_sentence_before_loading(sd_folder, options, message, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_pipeline", no_loading)
    code = main(["generate", "a", "--model", str(sd_folder), "--quiet", *options])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "model,message",
    [
        ("nonsense", "Unknown model 'nonsense'"),
        ("no-such-owner-xyz/no-such-model", "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"),
        ("missing.safetensors", "No such model file or folder"),
        (bad_checkpoint, "is not a valid .safetensors file"),
        ("FOLDER", "has no model_index.json"),
    ],
)
def test_bad_models_fail_with_one_sentence(model, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "load_pipeline", no_loading)
    model = model(tmp_path) if callable(model) else model
    model = str(tmp_path) if model == "FOLDER" else model
    code = main(["generate", "a", "--model", model, "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err


def test_from_png_needs_a_panosync_png(tmp_path, capsys):
    plain = tmp_path / "plain.png"
    PIL.Image.new("RGB", (8, 8)).save(plain)
    assert main(["generate", "--from-png", str(plain)]) == 2
    assert "carries no panosync parameters" in capsys.readouterr().err
    assert main(["generate"]) == 2
    assert "Give a prompt" in capsys.readouterr().err


@pytest.mark.slow
def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "panosync.cli", "generate", "a", "--model", "tiny-random",
                           "--width", "100"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "panosync: error: width must be a multiple of 8 pixels (the VAE factor), got 100."


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A write that fails half way (here the PNG encoder, after its first bytes) leaves nothing."""
    from panosync.metadata import save_png

    image = PIL.Image.new("RGB", (4, 4))
    target = tmp_path / "out.png"
    written = []

    def fails_half_way(self, file, *args, **kwargs):
        file.write(b"\x89PNG half a file")
        written.append(list(tmp_path.iterdir()))  # the temporary file was there, with those bytes
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(PIL.Image.Image, "save", fails_half_way)
        with pytest.raises(OSError, match="disk full"):
            save_png(image, target, {"seed": 1})
    assert len(written[0]) == 1 and written[0][0].name.endswith(".tmp")  # the failure came mid-write
    assert list(tmp_path.iterdir()) == []
    save_png(image, target, {"seed": 1})
    assert read_parameters(target) == {"seed": 1} and [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_outputs_follow_the_umask(tmp_path):
    from panosync.files import write_atomically
    from panosync.metadata import save_png

    old = os.umask(0o022)
    try:
        save_png(PIL.Image.new("RGB", (4, 4)), tmp_path / "a.png", {"seed": 1})
        write_atomically(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    assert {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()} == {"a.png": 0o644,
                                                                                       "results.json": 0o644}


def test_quiet_silences_the_libraries_loading_output_and_puts_their_settings_back(tmp_path, capfd):
    """--quiet once left diffusers' "Loading pipeline components" bars and its advice to install
    accelerate on stderr."""
    import diffusers.utils.logging
    import huggingface_hub.utils
    import transformers.utils.logging

    def state():
        return ([(library.get_verbosity(), library.is_progress_bar_enabled())
                 for library in (diffusers.utils.logging, transformers.utils.logging)],
                huggingface_hub.utils.are_progress_bars_disabled())

    before = state()
    assert main(["generate", "snowy mountains", "--model", "pocket", "--width", "128", "--steps", "1", "--quiet",
                 "--out", str(tmp_path / "quiet.png")]) == 0
    out, err = capfd.readouterr()
    assert err == "" and out.startswith("wrote"), err
    assert state() == before


@pytest.mark.parametrize("argv, sentence", [
    (["generate", "x", "--width", "1e9"], "--width must be a whole number, got '1e9'"),
    (["generate", "x", "--guidance-scale", "abc"], "--guidance-scale must be a number, got 'abc'"),
    (["generate", "x", "--fast", "turbo"], "--fast must be one of"),
    (["evaluate", "--examples", "x"], "--examples must be a whole number, got 'x'"),
    (["nope"], "the command must be one of"),
])
def test_a_bad_command_line_is_one_sentence_not_the_usage_block(argv, sentence, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.startswith(f"panosync: error: {sentence}") and error.count("\n") == 1, error
