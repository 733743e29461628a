"""Finding and loading a model: a bundled name, a diffusers folder, a single checkpoint file, or a
Hugging Face hub id; and choosing the device and precision.

Everything that can be wrong with the model argument is found by `resolve_model`, which reads no
weights, so that a bad argument costs the user nothing: its family too (families.py), from a folder's
model_index.json or a checkpoint's keys, so that SDXL loads as SDXL and an unsupported family is
refused in one sentence; and its geometry (`geometry_of_folder`), from its configs alone. A local
folder's files are checked as well (`check_model_folder`): each a readable file of its kind, so that
a damaged model is one sentence that names the file, never a traceback from deep in diffusers.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .backbones import FlowBackbone, FluxBackbone, StableDiffusion3Backbone
from .bundled import (bundled_controlnet_folder, bundled_controlnet_names, bundled_model_folder, bundled_model_names,
                      recommended_settings)
from .families import (CONTROLNET_CLASS, FAMILY_OF_TRANSFORMER, FLUX, SD, SD3, check_model_index,
                       family_of_model_index, identify_checkpoint, path_problem, read_json_file, read_model_index,
                       variant_of_folder)
from .errors import shown
from .geometry import MAX_STEPS, Geometry, vae_factor_of, window_of
from .pipeline import SyncDiffusionPipeline
from .precision import Precision
from .registry import AutoSyncDiffusionPipeline, family_of_pipeline, pipeline_class

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


# The smoke-test model's shape: Stable Diffusion 2 base's window and VAE factor.
TINY_RANDOM_SHAPE = dict(window=64, vae_factor=8)
# Its DDIM scheduler (tiny.py's, Stable Diffusion's config) allows 999 steps: steps_offset 1 puts a 1000th past the end.
TINY_RANDOM_STEPS = MAX_STEPS - 1


def _tiny_random() -> SyncDiffusionPipeline:
    from .tiny import tiny_random_components

    return SyncDiffusionPipeline(**tiny_random_components(**TINY_RANDOM_SHAPE))


# Models that need no download. "tiny-random" has random weights: a smoke test, not a picture.
BUNDLED: dict[str, Callable[[], SyncDiffusionPipeline]] = {"tiny-random": _tiny_random}


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "bundled", "folder", "file" or "hub"
    ref: str
    geometry: Geometry | None = None  # read from the configs, when they can be before loading
    family: str | None = None  # families.py's SD, SDXL, SD3 or FLUX; None: a hub model whose configs could not
    # be had (models._hub_configs), known once loaded
    controlnet_class: str | None = None  # a ControlNet folder's model class (its config's _class_name)
    variant: str | None = None  # families.SCHNELL for FLUX.1 schnell, whose defaults differ; None: none, or not
    # known yet

    @property
    def window(self) -> int | None:
        return None if self.geometry is None else self.geometry.window

    @property
    def vae_factor(self) -> int | None:
        return None if self.geometry is None else self.geometry.vae_factor


def _check_checkpoint(path: Path, what: str = "checkpoint") -> None:
    """A ValueError naming `path` for a .safetensors file whose header cannot be read (empty, truncated,
    garbage), or an empty .ckpt; a .ckpt's format is families.check_checkpoint_format's to check."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as checkpoint:
                next(iter(checkpoint.keys()), None)
        except Exception as error:
            raise ValueError(f"Cannot read {what} {path}: it is not a valid .safetensors file ({error}).") from None
    elif path.stat().st_size == 0:
        raise ValueError(f"Cannot read {what} {path}: the file is empty.")


def _hub_is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _check_hub_model(repo_id: str, marker: str = "model_index.json", what: str = "model") -> None:
    """Make sure a hub model can be loaded: cached (its `marker` file is), or present on a reachable hub."""
    name = what[:1].upper() + what[1:]
    from huggingface_hub import model_info, try_to_load_from_cache
    from huggingface_hub.errors import RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, marker), str):
        return
    if _hub_is_offline():
        raise ValueError(
            f"{name} {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it on a "
            f"connected machine (huggingface-cli download {repo_id}) or pass a local folder."
        )
    try:
        model_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        raise ValueError(f"Unknown {what} {repo_id!r}: no such model on the Hugging Face hub (or it is private).") from None
    except Exception:
        raise ValueError(
            f"{name} {repo_id!r} is not in the local Hugging Face cache and the hub cannot be reached: connect to the "
            f"internet, or download it elsewhere (huggingface-cli download {repo_id}) and pass the folder."
        ) from None


def resolve_model(model: str) -> ModelSource:
    """Say what `model` names, or raise a ValueError that says what to change. Reads no weights."""
    if model == "tiny-random":
        return ModelSource("bundled", model, Geometry(**TINY_RANDOM_SHAPE, max_steps=TINY_RANDOM_STEPS), SD)
    path = bundled_model_folder(model) or Path(model).expanduser()
    if path.is_dir():
        if not os.path.lexists(path / "model_index.json"):
            raise ValueError(f"{model} is a folder but not a diffusers model folder (it has no model_index.json).")
        index = read_model_index(path)
        family = family_of_model_index(index, f"Model {model}")
        check_model_folder(path, index, family)
        check_recommended(path)
        variant = variant_of_folder(path, family)
        return ModelSource("folder", str(path), geometry_of_folder(path), family, variant=variant)
    problem = path_problem(path)
    if problem not in (None, "is missing") and not (problem.startswith("is a symbolic link to")
                                                    and HUB_ID.match(model)):
        raise ValueError(f"{model} {problem}, not a model folder or file." if problem.startswith("is ") else
                         f"{model} {problem}: give a model folder or file.")
    if path.is_file():
        if path.suffix not in CHECKPOINT_SUFFIXES:
            raise ValueError(f"{model} is not a model checkpoint: give a .safetensors or .ckpt file or a diffusers folder.")
        _check_checkpoint(path)
        family, variant = identify_checkpoint(path)
        return ModelSource("file", str(path), family=family, variant=variant)
    if path.suffix in CHECKPOINT_SUFFIXES or os.sep in model and not HUB_ID.match(model):
        raise ValueError(f"No such model file or folder: {model}.")
    if HUB_ID.match(model):
        _check_hub_model(model)
        configs, geometry = _hub_configs(model)
        if configs is None:  # its family, variant and shape are known once it has loaded
            return ModelSource("hub", model)
        if not (configs / "model_index.json").is_file():
            raise ValueError(f"{model} on the Hugging Face hub has no model_index.json: it is not a diffusers model; "
                             f"give a diffusers repository, or a .safetensors checkpoint file.")
        family = family_of_model_index(_readable_index(configs, model), f"Model {model}")
        variant = variant_of_folder(configs, family)
        return ModelSource("hub", model, geometry, family, variant=variant)
    raise ValueError(
        f"Unknown model {model!r}: give a bundled model ({', '.join([*BUNDLED, *bundled_model_names()])}), a diffusers folder, a .safetensors "
        f"checkpoint, or a Hugging Face model id such as stabilityai/stable-diffusion-2-base."
    )


def _readable_index(folder: Path, model: str) -> dict:
    """A hub model's model_index.json, checked (families.check_model_index) before diffusers reads it."""
    try:
        return check_model_index(json.loads((folder / "model_index.json").read_text()), f"{model}'s model_index.json")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{model}'s model_index.json cannot be read as JSON: it is not a diffusers model.") from None


# The weights whose headers check_model_folder reads (a .bin is a pickle diffusers reads with weights_only).
WEIGHT_SUFFIXES = (".safetensors",)


def check_model_folder(folder: Path, index: dict, family: str) -> None:
    """A ValueError naming the file, for what in a diffusers model folder diffusers would fail on with
    a traceback: a component its pipeline needs left out, a component's folder missing, a file there
    that is no regular file (a FIFO, a link to /dev/zero), a JSON file that is not a JSON object, a
    .safetensors file whose header is damaged (empty, truncated, garbage), a UNet or VAE config whose
    shape is impossible. Reads the configs and the weights' headers, not the weights."""
    from .registry import pipeline_class

    cls = pipeline_class(family)
    expected, _ = cls._get_signature_keys(cls)
    for name in sorted(set(expected) - set(cls._optional_components)):
        pair = index.get(name)
        if not isinstance(pair, list) or pair[0] is None or pair[1] is None:
            raise ValueError(f"{folder / 'model_index.json'} names no {name}, which a {family} pipeline needs: "
                             f"the folder is incomplete.")
    for name, pair in index.items():
        if name.startswith("_") or not isinstance(pair, list) or None in pair:
            continue
        component = folder / name
        problem = path_problem(component, folder=True)
        if problem:
            raise ValueError(f"{component} {problem}, though {folder / 'model_index.json'} names a {name}: the model "
                             f"folder is incomplete or damaged.")
        for entry in sorted(component.iterdir()):
            if os.path.isdir(entry):
                continue
            problem = path_problem(entry)
            if problem:
                raise ValueError(f"{entry} {problem}: the model folder is damaged.")
            if entry.suffix == ".json":
                config = read_json_file(entry)
                _check_shape(entry, name, config)
            elif entry.suffix in WEIGHT_SUFFIXES:
                _check_checkpoint(entry, "weights")


def check_recommended(folder: Path) -> None:
    """A SettingError naming the folder's recommended.json for a value there that settings.check
    refuses: "…/recommended.json: num_inference_steps must be from 1 to 1000, got -5.", not as if
    the user had given it."""
    from .errors import SettingError
    from .settings import check

    try:
        check(recommended_settings(folder))
    except SettingError as error:
        path = str(Path(folder) / "recommended.json")
        message = str(error)
        raise SettingError(None, message if message.startswith(path) else f"{path}: {message}") from None


def _check_shape(path: Path, component: str, config: dict) -> None:
    """A UNet's sample_size (its native latent size: the window) and a VAE's block_out_channels (its
    factor), which the canvas is made from: a ValueError naming the config when impossible."""
    if path.name != "config.json":
        return
    if component == "unet" and "sample_size" in config:
        size = config["sample_size"]
        sides = size if isinstance(size, list) and size else [size]
        if not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides):
            raise ValueError(f"{path}: sample_size must be a positive whole number (the UNet's native latent size), "
                             f"got {shown(size)}: the model's config is wrong.")
    if component == "vae" and "block_out_channels" in config:
        channels = config["block_out_channels"]
        if not isinstance(channels, list) or not channels:
            raise ValueError(f"{path}: block_out_channels must be a list of one or more channel counts, got "
                             f"{shown(channels)}: the model's config is wrong.")


# A hub model's files that say its family, variant and shape: kilobytes, fetched before its weights.
CONFIG_FILES = ["model_index.json", "*/config.json", "scheduler/scheduler_config.json"]


def configs_cache() -> Path:
    """Where configs fetched alone are kept: beside, not in, the Hugging Face cache, whose
    model_index.json alone would make a model look downloaded (`_check_hub_model`) when its
    weights are not."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "panosync" / "hub-configs"


def _hub_configs(repo_id: str) -> tuple[Path | None, Geometry | None]:
    """The folder of a hub model's configs and the geometry they give: its snapshot in the local
    cache (or in configs_cache), else (online) one fetched with the configs alone; a partly cached
    model's, with its family but perhaps not its shape, when nothing better can be had; (None, None)
    when none can be had (a gated model without a token, say), and the model is then known once it
    has loaded, as before."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    partial = None, None
    for cache_dir in (None, configs_cache()):
        cached = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir)
        if isinstance(cached, str):
            geometry = geometry_of_folder(Path(cached).parent)
            if geometry is not None:
                return Path(cached).parent, geometry
            partial = partial if partial[0] else (Path(cached).parent, None)
    if _hub_is_offline():
        return partial
    try:
        fetched = Path(snapshot_download(repo_id, allow_patterns=CONFIG_FILES, cache_dir=configs_cache()))
    except Exception:  # noqa: BLE001 — whatever the hub answers, loading will say it in its own words
        return partial
    return fetched, geometry_of_folder(fetched)


# ------------------------------------------------------------------------------------- geometry

# The backbone of each transformer family: its classmethods read the geometry from configs alone.
TRANSFORMER_BACKBONES: dict[str, type[FlowBackbone]] = {SD3: StableDiffusion3Backbone, FLUX: FluxBackbone}


def geometry_of_folder(folder: str | Path) -> Geometry | None:
    """A diffusers folder's geometry from its configs alone; None when they cannot be read. The
    steps a UNet model's scheduler allows are DDIM's with its config, the scheduler the pipeline
    switches to; a transformer's (SD3, FLUX) are its flow-matching scheduler's."""
    folder = Path(folder)
    if (folder / "transformer" / "config.json").is_file():
        return _transformer_geometry(folder)
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        window, factor = window_of(unet), vae_factor_of(vae)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    return Geometry(window, factor, _most_steps_of(folder / "scheduler" / "scheduler_config.json"))


def _transformer_geometry(folder: Path) -> Geometry | None:
    try:
        transformer = json.loads((folder / "transformer" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        backbone = TRANSFORMER_BACKBONES.get(FAMILY_OF_TRANSFORMER.get(transformer.get("_class_name")))
        return None if backbone is None else backbone.geometry_of(transformer, scheduler, vae_factor_of(vae))
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def _most_steps_of(config_file: Path) -> int:
    """The most steps DDIM allows with this scheduler config (MAX_STEPS when it cannot be read)."""
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return MAX_STEPS
    steps = config.get("num_train_timesteps", MAX_STEPS) if isinstance(config, dict) else MAX_STEPS
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{config_file}: num_train_timesteps must be a positive whole number, got {shown(steps)}: "
                         f"the model's config is wrong.")
    from diffusers import DDIMScheduler

    from .schedulers import most_steps

    try:
        return most_steps(DDIMScheduler.from_config(config), MAX_STEPS)
    except Exception:  # a config DDIM cannot read: the pipeline checks again with the scheduler it loads
        return MAX_STEPS


def load_vae(vae: str, dtype: torch.dtype):
    """An AutoencoderKL from a diffusers folder or hub id, in `dtype`: an fp16-safe VAE in place of a
    model's own (SDXL's overflows in float16; madebyollin/sdxl-vae-fp16-fix does not)."""
    from diffusers import AutoencoderKL

    path = Path(vae).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"--vae {vae} is a folder but not a diffusers VAE folder (it has no config.json).")
        return AutoencoderKL.from_pretrained(path, dtype=dtype, local_files_only=True)
    if not HUB_ID.match(vae):
        raise ValueError(f"No such VAE folder: {vae} (give a diffusers AutoencoderKL folder or a hub id).")
    _check_hub_model(vae, marker="config.json", what="VAE")
    return AutoencoderKL.from_pretrained(vae, dtype=dtype, local_files_only=_hub_is_offline())


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {requested} is not a device: use auto, cpu, cuda, cuda:1, mps …") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA device: use --device cpu.")
    return device


def as_precision(precision: Precision | torch.dtype) -> Precision:
    """A Precision; a plain dtype is that dtype's weights without autocast."""
    return precision if isinstance(precision, Precision) else Precision(precision)


def _load_checkpoint(path: str, dtype: torch.dtype, config: str | None, family: str | None = SD,
                     **components) -> SyncDiffusionPipeline:
    """An original-format checkpoint holds weights only: diffusers takes the architecture (and the tokenizer and
    scheduler) from `config`, a diffusers folder or hub id, or else from the hub repo it guesses from the keys."""
    import logging

    from huggingface_hub.errors import LocalEntryNotFoundError

    if config is not None and Path(config).is_dir() and not (Path(config) / "model_index.json").is_file():
        raise ValueError(f"--model-config {config} is a folder but not a diffusers model folder "
                         f"(it has no model_index.json).")
    offline = _hub_is_offline()
    # Offline, diffusers warns that it is "attempting to download" the configs it lacks, then fails: say it once, below.
    quiet = logging.getLogger("diffusers.loaders.single_file")
    level = quiet.level
    if offline:
        quiet.setLevel(logging.ERROR)
    try:
        return pipeline_class(family or SD).from_single_file(path, dtype=dtype, local_files_only=offline, **components,
                                                            **({} if config is None else {"config": config}))
    except LocalEntryNotFoundError:
        if config is None:
            raise ValueError(
                f"Cannot tell the architecture of checkpoint {path} offline: pass --model-config with a diffusers "
                f"folder of the same model (e.g. a saved stable-diffusion-2-base)."
            ) from None
        raise ValueError(
            f"Cannot read the configs of --model-config {config} offline: give a diffusers folder of the same model, "
            f"or a hub id in the local Hugging Face cache."
        ) from None
    except (OSError, KeyError, RuntimeError) as error:  # weights that do not fit the architecture, a damaged file
        with_config = "" if config is None else f" with --model-config {config}"
        raise ValueError(f"Cannot load checkpoint {path}{with_config}: {_first_line(error)}.") from None
    finally:
        quiet.setLevel(level)


def _first_sentence(error: Exception) -> str:
    """A library's message as a clause: its first sentence only (diffusers follows a shape mismatch
    with advice to ignore mismatched sizes, which would load random weights), without its preamble."""
    text = _first_line(error)
    text = re.sub(r"^Cannot load\s+(\S+\s+)?because\s+", "", text)
    return re.split(r"(?<=[^.\s])\.\s", text, maxsplit=1)[0].rstrip(". ")


def _first_line(error: Exception) -> str:
    """An exception's message as a clause: its first line, cut short, without its full stop."""
    if isinstance(error, KeyError):
        return f"it has no {shown(error.args[0] if error.args else None)}, which the architecture needs"
    text = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(". ")
    return text if len(text) <= 300 else text[:299] + "…"


def load_pipeline(source: ModelSource | str, device: torch.device | str = "cpu",
                  precision: Precision | torch.dtype = torch.float32, config: str | None = None,
                  vae: str | None = None) -> SyncDiffusionPipeline:
    """Load the pipeline `source` names onto `device` in `precision` (a dtype, or a Precision: weights'
    dtype and autocast): the pipeline of its family (registry.pipeline_class). `config` (a diffusers
    folder or hub id) gives the architecture of a checkpoint file; offline, a checkpoint cannot be
    loaded without it unless the configs diffusers guesses for it are in the local Hugging Face cache.
    It is ignored for other sources. `vae` (a diffusers folder or hub id) replaces the model's VAE."""
    precision = as_precision(precision)
    dtype = precision.weights
    if isinstance(source, str):
        source = resolve_model(source)
    components = {} if vae is None else {"vae": load_vae(vae, dtype)}
    if source.kind == "bundled":
        pipe = BUNDLED[source.ref]()
        if components:
            pipe = type(pipe)(**{**pipe.components, **components})
        if pipe.backbone.network.dtype != dtype:
            pipe = pipe.to(dtype=dtype)
    elif source.kind == "file":
        pipe = _load_checkpoint(source.ref, dtype, config, source.family, **components)
    else:
        local = source.kind == "folder" or _hub_is_offline()
        loader = AutoSyncDiffusionPipeline if source.family is None else pipeline_class(source.family)
        try:
            pipe = loader.from_pretrained(source.ref, dtype=dtype, local_files_only=local, **components)
        except (OSError, ValueError, TypeError, RuntimeError) as error:  # what check_model_folder cannot see:
            # a file diffusers looks for and lacks, weights of another shape than the config says …
            if "OutOfMemory" in type(error).__name__:
                raise
            raise ValueError(f"Cannot load model {source.ref}: {_first_sentence(error)}.") from None
    if precision.autocast is not None:
        pipe.enable_autocast(precision.autocast)
    # silenced: diffusers warns that float16 "cannot run" on the CPU; it runs there, only slowly
    return pipe.to(device, silence_dtype_warnings=True)


# ------------------------------------------------------------------------------------ ControlNets

def resolve_controlnet(controlnet: str) -> ModelSource:
    """Say what `controlnet` names (a bundled ControlNet such as "pocket-canny", a diffusers ControlNet
    folder, a hub id, or "tiny-random": random weights shaped for the base model, a smoke test), or
    raise a ValueError. Reads no weights."""
    if controlnet == "tiny-random":
        return ModelSource("bundled", controlnet)
    path = bundled_controlnet_folder(controlnet) or Path(controlnet).expanduser()
    if path.is_dir():
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError):
            raise ValueError(f"{controlnet} is a folder but not a diffusers ControlNet folder (it has no readable "
                             f"config.json).") from None
        kind = config.get("_class_name")
        if kind not in CONTROLNET_CLASS.values():
            raise ValueError(f"{controlnet} holds a {kind or 'model of unknown kind'}, not a ControlNet "
                             f"({', '.join(sorted(set(CONTROLNET_CLASS.values())))}): give a diffusers ControlNet "
                             f"folder or hub id.")
        return ModelSource("folder", str(path), controlnet_class=kind)
    if path.is_file():
        raise ValueError(f"{controlnet} is a file: give a diffusers ControlNet folder (config.json beside the weights) "
                         f"or a hub id.")
    if os.sep in controlnet and not HUB_ID.match(controlnet):
        raise ValueError(f"No such ControlNet folder: {controlnet} (give a diffusers ControlNet folder or a hub id).")
    if HUB_ID.match(controlnet):
        _check_hub_model(controlnet, marker="config.json", what="ControlNet")
        return ModelSource("hub", controlnet)
    bundled = "".join(f"{name}, " for name in bundled_controlnet_names())
    raise ValueError(f"Unknown ControlNet {controlnet!r}: give a bundled ControlNet ({bundled}tiny-random), a diffusers "
                     f"ControlNet folder, or a Hugging Face id such as lllyasviel/sd-controlnet-canny.")


def check_controlnet_fits(controlnet: ModelSource, family: str | None, name: str = "The ControlNet") -> None:
    """A ValueError, before any weights load, for a ControlNet of another family's kind than the base
    model's (both known: a folder's class, a folder's or cached model's family)."""
    wanted = CONTROLNET_CLASS.get(family)
    if controlnet.controlnet_class is not None and wanted is not None and controlnet.controlnet_class != wanted:
        raise ValueError(f"{name} {controlnet.ref} is of class {controlnet.controlnet_class}, but this {family} model "
                         f"takes {wanted} ControlNets: give a ControlNet trained for this base model.")


def load_controlnet(source: ModelSource | str, base: SyncDiffusionPipeline, dtype: torch.dtype = torch.float32):
    """The ControlNet `source` names, in `dtype`, for the base model `base` (of its family's kind:
    an SD3ControlNetModel for SD3, a FluxControlNetModel for FLUX, else a ControlNetModel)."""
    from diffusers import ControlNetModel, FluxControlNetModel, SD3ControlNetModel

    from .control import random_controlnet_like
    from .control_flux import random_flux_controlnet_like
    from .control_sd3 import random_sd3_controlnet_like

    if isinstance(source, str):
        source = resolve_controlnet(source)
    family = family_of_pipeline(base)
    check_controlnet_fits(source, family)
    if source.kind == "bundled":
        if family == SD3:
            controlnet = random_sd3_controlnet_like(base.transformer)
        elif family == FLUX:
            controlnet = random_flux_controlnet_like(base.transformer)
        else:
            controlnet = random_controlnet_like(base.unet, base.vae_scale_factor)
        return controlnet if controlnet.dtype == dtype else controlnet.to(dtype=dtype)
    local = source.kind == "folder" or _hub_is_offline()
    kind = {SD3: SD3ControlNetModel, FLUX: FluxControlNetModel}.get(family, ControlNetModel)
    return kind.from_pretrained(source.ref, dtype=dtype, local_files_only=local)


def load_control_pipeline(source: ModelSource | str, controlnets: list[ModelSource | str],
                          device: torch.device | str = "cpu", precision: Precision | torch.dtype = torch.float32,
                          config: str | None = None, vae: str | None = None):
    """The ControlSync pipeline of the base model's family (ControlSyncPipeline, ControlSyncXLPipeline,
    ControlSync3Pipeline, ControlSyncFluxPipeline): the base model as `load_pipeline` loads it, with
    one or several ControlNets."""
    precision = as_precision(precision)
    if isinstance(source, str):
        source = resolve_model(source)
    for index, controlnet in enumerate(controlnets):
        if isinstance(controlnet, ModelSource):
            check_controlnet_fits(controlnet, source.family, f"ControlNet {index}" if len(controlnets) > 1 else
                                  "The ControlNet")
    base = load_pipeline(source, "cpu", precision.weights, config=config, vae=vae)
    family = family_of_pipeline(base)
    nets = [load_controlnet(controlnet, base, precision.weights) for controlnet in controlnets]
    # what the base's config holds besides its components (SDXL's force_zeros_for_empty_prompt)
    settings = {name: base.config[name] for name in ("force_zeros_for_empty_prompt",) if name in base.config}
    pipe = pipeline_class(family, control=True)(**base.components, **settings,
                                                controlnet=nets[0] if len(nets) == 1 else nets)
    if precision.autocast is not None:
        pipe.enable_autocast(precision.autocast)
    # silenced: diffusers warns that float16 "cannot run" on the CPU; it runs there, only slowly
    return pipe.to(device, silence_dtype_warnings=True)
