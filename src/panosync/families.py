"""The model families panosync runs, in data: their names, their defaults where a family's diffusers
pipeline departs from the paper, and how a model's family is told before any weights load, from a
diffusers folder's model_index.json and configs or from a single checkpoint file's keys. A family
panosync does not run is one sentence that names those it does.

Nothing here imports the rest of panosync: the pipelines, backbones, settings and front ends read
these tables; which pipeline class serves a family is registry.py's.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import zipfile
from pathlib import Path


SD, SDXL = "Stable Diffusion 1.x/2.x", "Stable Diffusion XL"
SD3, FLUX = "Stable Diffusion 3/3.5", "FLUX.1"
SUPPORTED_FAMILIES = (SD, SDXL, SD3, FLUX)
# Where a family's diffusers pipeline defaults otherwise than the paper (whose model was SD 2):
# FLUX.1-dev's guidance is distilled (7.5 burns the image), SD3's is 7. Every front end, and the
# pipeline called from Python, takes these under a model's recommended.json (settings.recommended_of).
FAMILY_DEFAULTS = {
    SD: {"guidance_scale": 7.5},  # the paper's, on Stable Diffusion 2 (diffusers' StableDiffusionPipeline's too)
    SDXL: {"guidance_scale": 5.0},  # diffusers' StableDiffusionXLPipeline's: every front end as the Python call
    SD3: {"guidance_scale": 7.0},
    FLUX: {"guidance_scale": 3.5},
}
# A variant whose defaults differ from its family's: FLUX.1 schnell is distilled to a few steps
# (diffusers documents it at 4; the paper's 50 cost 12 times as much for no better picture). It is
# told from dev as diffusers' checkpoint inference tells it: its transformer has no guidance input
# (guidance_embeds false). A de-distilled model of that shape sets its steps in recommended.json.
SCHNELL = "schnell"
VARIANT_DEFAULTS = {SCHNELL: {"num_inference_steps": 4}}
# The half precision `--dtype auto` takes on CUDA where not float16 (precision.pick_precision): SD3's and
# FLUX's transformers are released in bfloat16, and FLUX's overflows float16 (diffusers documents that its
# float16 output differs).
HALF_PRECISION = {SD3: "bfloat16", FLUX: "bfloat16"}
# The ControlNet class (its config's _class_name) of each family panosync runs ControlSync on.
CONTROLNET_CLASS = {SD: "ControlNetModel", SDXL: "ControlNetModel", SD3: "SD3ControlNetModel",
                    FLUX: "FluxControlNetModel"}

# model_index.json's _class_name, for the pipelines whose family is plain from the name.
FAMILY_OF_CLASS = {
    "StableDiffusionPipeline": SD, "StableDiffusionPanoramaPipeline": SD, "SyncDiffusionPipeline": SD,
    "StableDiffusionControlNetPipeline": SD, "ControlSyncPipeline": SD,
    "StableDiffusionXLPipeline": SDXL, "SyncDiffusionXLPipeline": SDXL, "StableDiffusionXLControlNetPipeline": SDXL,
    "ControlSyncXLPipeline": SDXL,
    "StableDiffusion3Pipeline": SD3, "SyncDiffusion3Pipeline": SD3, "StableDiffusion3ControlNetPipeline": SD3,
    "ControlSync3Pipeline": SD3, "FluxPipeline": FLUX, "SyncDiffusionFluxPipeline": FLUX,
    "SyncFluxPipeline": FLUX,  # the FLUX pipeline's former name, in the model_index.json of folders saved with it
    "FluxControlNetPipeline": FLUX, "ControlSyncFluxPipeline": FLUX,
}
# model_index.json's transformer class, for a pipeline class not in FAMILY_OF_CLASS.
FAMILY_OF_TRANSFORMER = {"SD3Transformer2DModel": SD3, "FluxTransformer2DModel": FLUX}
# What other pipelines are, in the sentence that refuses them.
OTHER_FAMILIES = {"FluxFillPipeline": "FLUX.1 Fill (inpainting)", "FluxControlPipeline": "FLUX.1 Canny/Depth",
                  "StableDiffusionXLImg2ImgPipeline": "an SDXL refiner (image to image)",
                  "StableDiffusionUpscalePipeline": "an upscaler", "StableDiffusionInpaintPipeline": "inpainting"}
# diffusers' names for single-file checkpoints (loaders.single_file_utils.infer_diffusers_model_type).
FAMILY_OF_CHECKPOINT = {"v1": SD, "v2": SD, "xl_base": SDXL, "sd3": SD3, "sd35_medium": SD3, "sd35_large": SD3,
                        "flux-dev": FLUX, "flux-schnell": FLUX}
VARIANT_OF_CHECKPOINT = {"flux-schnell": SCHNELL}


def defaults_of(family: str | None, variant: str | None = None) -> dict:
    """The defaults of a family (FAMILY_DEFAULTS) with its variant's over them (VARIANT_DEFAULTS)."""
    return {**FAMILY_DEFAULTS.get(family, {}), **VARIANT_DEFAULTS.get(variant, {})}


def variant_of_transformer(family: str | None, transformer_config) -> str | None:
    """SCHNELL for a FLUX.1 transformer without a guidance input; None for every other model."""
    if family == FLUX and transformer_config is not None and not transformer_config.get("guidance_embeds", True):
        return SCHNELL
    return None


def variant_of_folder(folder: str | Path, family: str | None) -> str | None:
    """The variant of a diffusers folder, from its transformer's config; None when it has none."""
    try:
        config = json.loads((Path(folder) / "transformer" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return variant_of_transformer(family, config if isinstance(config, dict) else None)


def unsupported(what: str, kind: str) -> ValueError:
    families = ", ".join(SUPPORTED_FAMILIES[:-1]) + " and " + SUPPORTED_FAMILIES[-1]
    return ValueError(f"{what} is {kind}, which panosync does not run: it runs {families} "
                      f"models.")


def family_of_model_index(index: dict, name: str = "The model") -> str:
    """The family of a diffusers model_index.json, or a ValueError naming the supported ones. A
    pipeline class it does not know is judged by its components: a transformer by its class (SD3's or
    FLUX's), a UNet with two text encoders is SDXL's shape, a UNet with one is Stable Diffusion's."""
    class_name = index.get("_class_name", "")
    if class_name in FAMILY_OF_CLASS:
        return FAMILY_OF_CLASS[class_name]
    if class_name in OTHER_FAMILIES:
        raise unsupported(name, f"{OTHER_FAMILIES[class_name]} ({class_name})")
    has = {component for component, value in index.items() if isinstance(value, list) and value[0] is not None}
    if "transformer" in has:  # many transformers share these components (HunyuanDiT, HiDream): the class decides
        transformer = index["transformer"][1] if len(index["transformer"]) > 1 else None
        family = FAMILY_OF_TRANSFORMER.get(transformer)
        if family is None:
            raise unsupported(name, f"a {class_name or 'pipeline of unknown kind'} (its transformer a {transformer})")
        return family
    if {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer_2"} <= has:
        return SDXL
    if {"unet", "vae", "text_encoder", "tokenizer"} <= has and "text_encoder_2" not in has:
        return SD
    raise unsupported(name, f"a {class_name or 'pipeline of unknown kind'}")


# The libraries a pipeline's components come from, the first of each [library, class] pair in
# model_index.json (None: a component left out). diffusers imports whatever module a pair names, so
# another (["subprocess", "Popen"]) is refused before diffusers sees it.
COMPONENT_LIBRARIES = ("diffusers", "transformers")
# The kinds of file a path may be besides a regular file and a folder, in a refusal's words.
FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISSOCK, "a socket"))


def path_problem(path: str | Path, folder: bool = False) -> str | None:
    """What is wrong with `path` as a regular file (with `folder`: as a folder), in words that follow
    its name ("is a FIFO"); None when nothing is. Opens nothing: a FIFO would block a read."""
    try:
        status = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "leads through a loop of symbolic links"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist"
        return "is missing" if error.errno == errno.ENOENT else f"cannot be read ({error.strerror})"
    if stat.S_ISDIR(status.st_mode):
        return None if folder else "is a folder, not a file"
    if stat.S_ISREG(status.st_mode):
        return "is a file, not a folder" if folder else None
    return "is " + next((word for test, word in FILE_KINDS if test(status.st_mode)), "not a regular file")


def read_json_file(path: str | Path, what: str = "an object") -> dict:
    """A JSON file that must hold an object; a ValueError naming the file and what is wrong."""
    problem = path_problem(path)
    if problem:
        raise ValueError(f"{path} {problem}.")
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror or error}).") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: not JSON ({str(error)[:120]}).") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: a JSON {_json_kind(value)}, not {what}.")
    return value


def shown(value, characters: int = 60) -> str:
    """`value` as a refusal shows it: its repr, cut short (errors.shown's rule; nothing here imports panosync)."""
    text = repr(value)
    return text if len(text) <= characters else f"{text[:characters - 1]}… ({len(text):,} characters)"


def _json_kind(value) -> str:
    if value is None:
        return "null"
    kinds = ((bool, "boolean"), (list, "array"), (str, "string"), ((int, float), "number"))
    return next((word for kind, word in kinds if isinstance(value, kind)), type(value).__name__)


def read_model_index(folder: str | Path) -> dict:
    """A diffusers folder's model_index.json, checked (`check_model_index`): a ValueError naming the file."""
    path = Path(folder) / "model_index.json"
    return check_model_index(read_json_file(path, "an object of the pipeline's class and components"), path)


def check_model_index(index, path: str | Path = "model_index.json") -> dict:
    """`index` if it is a model_index.json diffusers may be given: an object whose _class_name is
    text and whose components are [library, class] pairs from COMPONENT_LIBRARIES; else a ValueError
    naming `path`. Keys that are no pair (requires_safety_checker …) are the pipeline's config."""
    if not isinstance(index, dict):
        raise ValueError(f"{path}: a JSON {_json_kind(index)}, not an object of the pipeline's class and "
                         f"components.")
    if not isinstance(index.get("_class_name", ""), str):
        raise ValueError(f"{path}: _class_name must be text (a pipeline class), got {shown(index['_class_name'])}.")
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list):
            continue
        if len(value) != 2 or not all(item is None or isinstance(item, str) for item in value):
            raise ValueError(f"{path}: the {shown(name)} component must be a [library, class] pair, got "
                             f"{shown(value)}.")
        if value[0] is not None and value[0] not in COMPONENT_LIBRARIES:
            raise ValueError(f"{path}: the {shown(name)} component comes from {shown(value[0])}, not from a library "
                             f"a pipeline is made of ({' or '.join(COMPONENT_LIBRARIES)}): refused, as loading it "
                             f"would import that module.")
        if value[0] is not None and not _is_component_class(*value):
            raise ValueError(f"{path}: the {shown(name)} component names {shown('.'.join(value))}, which is no model, "
                             f"tokenizer, scheduler or processor class of {value[0]}.")
    return index


def _is_component_class(library: str, name: str | None) -> bool:
    """Whether `name` is a public class of `library` (diffusers, transformers) that is not a pipeline:
    what a model_index.json component may name. The library is imported (it is one of ours); the name
    only looked up."""
    import importlib
    import inspect

    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        return False
    try:
        found = getattr(importlib.import_module(library), name, None)
    except Exception:  # noqa: BLE001 — a lazy attribute that fails to import is no class to load
        return False
    if not inspect.isclass(found):
        return False
    from diffusers import DiffusionPipeline

    return not issubclass(found, DiffusionPipeline)


class CheckpointShapes:
    """A checkpoint's keys, and for each an object with the tensor's `.shape`, without loading the
    tensors: what diffusers needs to tell a checkpoint's model type."""

    class _Shape:
        def __init__(self, shape):
            self.shape = tuple(shape)

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as checkpoint:
                self.shapes = {key: checkpoint.get_slice(key).get_shape() for key in checkpoint.keys()}
        else:  # .ckpt: a pickle, mapped rather than read, and of tensors only (weights_only: no code runs)
            import torch

            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            if not isinstance(state, dict):
                raise ValueError(f"it holds a {type(state).__name__}, not a dictionary of weights")
            self.shapes = {key: getattr(value, "shape", ()) for key, value in state.items()}

    def __contains__(self, key) -> bool:
        return key in self.shapes

    def __getitem__(self, key):
        return self._Shape(self.shapes[key])

    def keys(self):
        return self.shapes.keys()

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self):
        return len(self.shapes)


def family_of_checkpoint(path: str | Path) -> str:
    """The family of an original-format checkpoint, from its keys (diffusers' own inference)."""
    return identify_checkpoint(path)[0]


def identify_checkpoint(path: str | Path) -> tuple[str, str | None]:
    """The family and variant of an original-format checkpoint, from its keys (diffusers' own inference)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    check_checkpoint_format(path)
    try:
        shapes = CheckpointShapes(path)
    except Exception as error:  # noqa: BLE001 — whatever the file holds, one sentence that names it
        raise ValueError(f"Cannot read checkpoint {path}: {_unreadable(error)}.") from None
    model_type = infer_diffusers_model_type(shapes)
    if model_type not in FAMILY_OF_CHECKPOINT:
        raise unsupported(f"Checkpoint {path}", f"a {model_type!r} model (as diffusers names it)")
    if model_type in UNET_CHECKPOINT_TYPES and not any(key.startswith(ORIGINAL_UNET_PREFIX) for key in shapes):
        raise ValueError(f"Checkpoint {path} holds no whole Stable Diffusion model in the original layout (no "
                         f"{ORIGINAL_UNET_PREFIX}* weights): a diffusers component's weights (such as "
                         f"unet/diffusion_pytorch_model.safetensors) load with their diffusers folder, given as --model.")
    return FAMILY_OF_CHECKPOINT[model_type], VARIANT_OF_CHECKPOINT.get(model_type)


# diffusers' guess for keys it does not recognise is "v1": a Stable Diffusion checkpoint holds the original
# UNet's weights under this prefix, which a diffusers UNet file (or any other file) does not.
UNET_CHECKPOINT_TYPES = ("v1",)
ORIGINAL_UNET_PREFIX = "model.diffusion_model."
PICKLE_PROTOCOLS = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def check_checkpoint_format(path: str | Path) -> None:
    """A ValueError naming `path` for a .ckpt that is not the zip archive torch.save writes: a legacy
    pickle (which torch cannot map, and which panosync does not unpickle: a pickle can run code), or
    no PyTorch file at all. A zip's pickle is read with weights_only, which runs none."""
    path = Path(path)
    if path.suffix != ".ckpt" or zipfile.is_zipfile(path):
        return
    with open(path, "rb") as file:
        start = file.read(2)
    if start in PICKLE_PROTOCOLS:
        raise ValueError(f"Cannot read checkpoint {path}: it is a legacy PyTorch pickle, which panosync refuses (a "
                         f"pickle can run code when loaded): convert it to .safetensors, or re-save it with a current "
                         f"torch.save.")
    raise ValueError(f"Cannot read checkpoint {path}: it is not a PyTorch checkpoint (not the zip archive torch.save "
                     f"writes).")


def _unreadable(error: Exception) -> str:
    """Why a checkpoint could not be read, in a clause."""
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        return "it holds objects other than tensors, which panosync does not unpickle (they could run code)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 200 else text[:199] + "…"
