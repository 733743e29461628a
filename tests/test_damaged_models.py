"""Damaged models (issue 27, items 7 and 11–14): every file the model argument names is checked
before use, and whatever is wrong with it is one sentence that names the file, exit 2, never a
traceback. Each case damages a copy of the bundled pocket folder (or gives a file or path that is
no model) and runs `panosync generate` on it, as generate, batch and serve all resolve and load a
model through models.resolve_model and load_pipeline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch

from panosync.bundled import bundled_model_folder
from panosync.cli import main

POCKET = bundled_model_folder("pocket")
UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _edit_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def _truncate(folder):
    os.truncate(folder / UNET_WEIGHTS, (folder / UNET_WEIGHTS).stat().st_size // 2)
    return UNET_WEIGHTS


def _empty(folder):
    (folder / UNET_WEIGHTS).write_bytes(b"")
    return UNET_WEIGHTS


def _garbage_header(folder):
    with open(folder / UNET_WEIGHTS, "r+b") as file:
        file.write(b"garbage!garbage!")
    return UNET_WEIGHTS


def _link_to_dev_zero(folder):
    (folder / UNET_WEIGHTS).unlink()
    (folder / UNET_WEIGHTS).symlink_to("/dev/zero")
    return UNET_WEIGHTS


def _fifo_weights(folder):
    (folder / UNET_WEIGHTS).unlink()
    os.mkfifo(folder / UNET_WEIGHTS)  # a read would block for ever
    return UNET_WEIGHTS


def _no_unet(folder):
    shutil.rmtree(folder / "unet")
    return "unet"


def _unet_config_not_json(folder):
    (folder / "unet" / "config.json").write_text("{not json")
    return "unet/config.json"


def _index_an_array(folder):
    (folder / "model_index.json").write_text("[1, 2]")
    return "model_index.json"


def _index_unet_empty(folder):
    _edit_json(folder / "model_index.json", lambda index: index.update(unet=[]))
    return "model_index.json"


def _index_class_a_list(folder):
    _edit_json(folder / "model_index.json", lambda index: index.update(_class_name=["x"]))
    return "model_index.json"


def _index_names_popen(folder):  # item 13: diffusers would import subprocess to load it
    _edit_json(folder / "model_index.json", lambda index: index.update(unet=["subprocess", "Popen"]))
    return "model_index.json"


def _index_without_unet(folder):
    _edit_json(folder / "model_index.json", lambda index: index.pop("unet"))
    return "model_index.json"


def _recommended_null(folder):
    (folder / "recommended.json").write_text("null")
    return "recommended.json"


def _recommended_array(folder):
    (folder / "recommended.json").write_text("[1, 2]")
    return "recommended.json"


def _recommended_not_json(folder):  # item 11
    (folder / "recommended.json").write_text("{nope")
    return "recommended.json"


def _recommended_steps_out_of_range(folder):  # item 11: the file's value, not the user's
    (folder / "recommended.json").write_text('{"num_inference_steps": -5}')
    return "recommended.json"


def _sample_size_zero(folder):  # item 12: not "width must be from 1 to 16384, got 0"
    _edit_json(folder / "unet" / "config.json", lambda config: config.update(sample_size=0))
    return "unet/config.json"


def _unet_weights_missing(folder):  # what only diffusers sees: its OSError, in one sentence
    (folder / UNET_WEIGHTS).unlink()
    return ""


def _index_names_a_function(folder):  # the probe's: transformers.pipeline is a function, not a class
    _edit_json(folder / "model_index.json", lambda index: index.update(unet=["transformers", "pipeline"]))
    return "model_index.json"


def _index_names_a_pipeline(folder):  # a pipeline class where a model goes
    _edit_json(folder / "model_index.json", lambda index: index.update(unet=["diffusers", "DiffusionPipeline"]))
    return "model_index.json"


def _index_names_a_dotted_private_name(folder):
    _edit_json(folder / "model_index.json", lambda index: index.update(unet=["diffusers", "__builtins__"]))
    return "model_index.json"


def _weights_of_another_shape(folder):  # the probe's: a tensor of a shape the config does not make
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / UNET_WEIGHTS)
    weights["conv_in.bias"] = weights["conv_in.bias"].new_zeros((3, 3))
    save_file(weights, str(folder / UNET_WEIGHTS))
    return ""


def _scheduler_without_timesteps(folder):  # the probe's: not "num_inference_steps must be at most 1"
    _edit_json(folder / "scheduler" / "scheduler_config.json", lambda config: config.update(num_train_timesteps=0))
    return "scheduler/scheduler_config.json"


DAMAGED_FOLDERS = {
    "truncated weights": (_truncate, "not a valid .safetensors file"),
    "empty weights": (_empty, "not a valid .safetensors file"),
    "garbage header": (_garbage_header, "not a valid .safetensors file"),
    "weights a link to /dev/zero": (_link_to_dev_zero, "is a character device"),
    "weights a FIFO": (_fifo_weights, "is a FIFO"),
    "no unet folder": (_no_unet, "is missing"),
    "unet config not JSON": (_unet_config_not_json, "not JSON"),
    "model_index an array": (_index_an_array, "a JSON array"),
    "model_index unet []": (_index_unet_empty, "[library, class] pair"),
    "model_index _class_name a list": (_index_class_a_list, "_class_name must be text"),
    "model_index names subprocess.Popen": (_index_names_popen, "not from a library a pipeline is made of"),
    "model_index without unet": (_index_without_unet, "names no unet"),
    "recommended null": (_recommended_null, "a JSON null"),
    "recommended an array": (_recommended_array, "a JSON array"),
    "recommended not JSON": (_recommended_not_json, "not JSON (Expecting property name"),
    "recommended steps -5": (_recommended_steps_out_of_range, "num_inference_steps must be from 1 to 1000, got -5"),
    "unet sample_size 0": (_sample_size_zero, "the model's config is wrong"),
    "unet weights missing": (_unet_weights_missing, "Cannot load model"),
    "model_index names a function": (_index_names_a_function, "which is no model, tokenizer, scheduler"),
    "model_index names a pipeline": (_index_names_a_pipeline, "which is no model, tokenizer, scheduler"),
    "model_index names a private name": (_index_names_a_dotted_private_name, "which is no model, tokenizer"),
    "weights of another shape": (_weights_of_another_shape, "conv_in.bias expected shape"),
    "scheduler num_train_timesteps 0": (_scheduler_without_timesteps, "num_train_timesteps must be a positive"),
}


def _generate_error(capsys, model, out, *options) -> str:
    """Run `panosync generate` on `model`: assert exit 2 and a one-line error, no traceback; return the line."""
    code = main(["generate", "snowy mountains", "--model", str(model), "--width", "128", "--steps", "2", *options,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("panosync: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("damage", DAMAGED_FOLDERS)
def test_damaged_model_folder_is_one_sentence(damage, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "pocket"
    shutil.copytree(POCKET, folder)
    damage_it, words = DAMAGED_FOLDERS[damage]
    named = damage_it(folder)
    line = _generate_error(capsys, folder, tmp_path / "out.png")
    assert words in line and "ignore_mismatched_sizes" not in line and len(line) < 500
    assert str(folder / named).rstrip("/") in line
    assert not (tmp_path / "out.png").exists()


def _unet_only_checkpoint(tmp_path):
    return POCKET / UNET_WEIGHTS, ("--model-config", str(POCKET)), "no whole Stable Diffusion model"


def _junk_ckpt(tmp_path):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(os.urandom(1000))
    return path, (), "not a PyTorch checkpoint"


def _legacy_pickle_ckpt(tmp_path):
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(2)}}, path, _use_new_zipfile_serialization=False)
    return path, (), "legacy PyTorch pickle"


def _ckpt_with_code(tmp_path):  # a zip checkpoint whose pickle names a callable: weights_only refuses it
    path = tmp_path / "code.ckpt"
    torch.save({"state_dict": {"a": torch.zeros(2)}, "run": subprocess.Popen}, path)
    return path, (), "objects other than tensors"


def _self_link(tmp_path):  # item 14: not taken for a hub id
    (tmp_path / "loop").symlink_to("loop")
    return tmp_path / "loop", (), "loop of symbolic links"


def _dev_zero(tmp_path):
    return "/dev/zero", (), "is a character device, not a model folder or file"


def _fifo(tmp_path):
    os.mkfifo(tmp_path / "model.safetensors")
    return tmp_path / "model.safetensors", (), "is a FIFO, not a model folder or file"


DAMAGED_FILES = {
    "UNet-only safetensors with --model-config": _unet_only_checkpoint,
    "junk ckpt": _junk_ckpt,
    "legacy pickle ckpt": _legacy_pickle_ckpt,
    "ckpt with code": _ckpt_with_code,
    "self-referencing link": _self_link,
    "/dev/zero": _dev_zero,
    "FIFO": _fifo,
}


@pytest.mark.parametrize("damage", DAMAGED_FILES)
def test_damaged_model_file_or_path_is_one_sentence(damage, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, options, words = DAMAGED_FILES[damage](tmp_path)
    line = _generate_error(capsys, model, tmp_path / "out.png", *options)
    assert words in line
    assert str(model) in line


def test_self_link_given_as_relative_path_is_no_hub_id(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "loop").symlink_to("loop")
    monkeypatch.chdir(tmp_path)
    line = _generate_error(capsys, "loop/model", tmp_path / "out.png")  # the shape of a hub id
    assert "loop/model leads through a loop of symbolic links" in line
    assert "Hugging Face" not in line
