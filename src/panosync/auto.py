"""Picking the pipeline class from the model: a diffusers folder's model_index.json, or a single
checkpoint file's keys, name the model's family before any weights load.

`AutoSyncPipeline.from_pretrained` / `from_single_file` return the family's pipeline, as
diffusers' AutoPipelineForText2Image does; models.py loads through the same choice, so every
front end (the command, the server, the page, evaluate) takes an SDXL model as it takes an SD one.
A family panosync does not run is one sentence that names those it does. SD3 / 3.5 and FLUX.1
run SyncDiffusion and ControlSync (SD3ControlNetModel, FluxControlNetModel of InstantX's kind).
"""

from __future__ import annotations

import json
from pathlib import Path

SD, SDXL = "Stable Diffusion 1.x/2.x", "Stable Diffusion XL"
SD3, FLUX = "Stable Diffusion 3/3.5", "FLUX.1"
SUPPORTED_FAMILIES = (SD, SDXL, SD3, FLUX)
# Where a family's diffusers pipeline defaults otherwise than the paper, and the paper's value
# would be wrong for it: FLUX.1-dev's guidance is distilled (7.5 burns the image), SD3's is 7.
# Every front end takes these under a model's recommended.json (settings.recommended_of).
FAMILY_DEFAULTS = {SD3: {"guidance_scale": 7.0}, FLUX: {"guidance_scale": 3.5}}
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
    "ControlSync3Pipeline": SD3, "FluxPipeline": FLUX, "SyncFluxPipeline": FLUX, "FluxControlNetPipeline": FLUX,
    "ControlSyncFluxPipeline": FLUX,
}
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
        family = family_of_transformer(transformer)
        if family is None:
            raise unsupported(name, f"a {class_name or 'pipeline of unknown kind'} (its transformer a {transformer})")
        return family
    if {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer_2"} <= has:
        return SDXL
    if {"unet", "vae", "text_encoder", "tokenizer"} <= has and "text_encoder_2" not in has:
        return SD
    raise unsupported(name, f"a {class_name or 'pipeline of unknown kind'}")


def family_of_transformer(class_name: str | None) -> str | None:
    """The family of a transformer class diffusers names in a model_index (None: not one panosync runs)."""
    from .backbones.flow import backbone_of_transformer

    backbone = backbone_of_transformer(class_name)
    return None if backbone is None else backbone.family


def read_model_index(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "model_index.json").read_text())


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
        else:  # .ckpt: a pickle, mapped rather than read
            import torch

            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
            state = state.get("state_dict", state)
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

    model_type = infer_diffusers_model_type(CheckpointShapes(path))
    if model_type not in FAMILY_OF_CHECKPOINT:
        raise unsupported(f"Checkpoint {path}", f"a {model_type!r} model (as diffusers names it)")
    return FAMILY_OF_CHECKPOINT[model_type], VARIANT_OF_CHECKPOINT.get(model_type)


def family_of_pipeline(pipe) -> str:
    """The family of a loaded panosync pipeline."""
    from .flux import SyncFluxPipeline
    from .sd3 import SyncDiffusion3Pipeline
    from .xl import SyncDiffusionXLPipeline

    kinds = ((SyncDiffusionXLPipeline, SDXL), (SyncDiffusion3Pipeline, SD3), (SyncFluxPipeline, FLUX))
    return next((family for kind, family in kinds if isinstance(pipe, kind)), SD)


def variant_of_pipeline(pipe) -> str | None:
    """The variant of a loaded panosync pipeline (variant_of_transformer)."""
    transformer = getattr(pipe, "transformer", None)
    return variant_of_transformer(family_of_pipeline(pipe), None if transformer is None else transformer.config)


def pipeline_class(family: str, control: bool = False):
    """The pipeline class of a family: SyncDiffusion's, or with `control` ControlSync's."""
    if family == SD3:
        if control:
            from .control_sd3 import ControlSync3Pipeline

            return ControlSync3Pipeline
        from .sd3 import SyncDiffusion3Pipeline

        return SyncDiffusion3Pipeline
    if family == FLUX:
        if control:
            from .control_flux import ControlSyncFluxPipeline

            return ControlSyncFluxPipeline
        from .flux import SyncFluxPipeline

        return SyncFluxPipeline
    if family == SDXL:
        if control:
            from .control import ControlSyncXLPipeline

            return ControlSyncXLPipeline
        from .xl import SyncDiffusionXLPipeline

        return SyncDiffusionXLPipeline
    if control:
        from .control import ControlSyncPipeline

        return ControlSyncPipeline
    from .pipeline import SyncDiffusionPipeline

    return SyncDiffusionPipeline


class AutoSyncPipeline:
    """Loads the SyncDiffusion pipeline of a model's family: `AutoSyncPipeline.from_pretrained(
    "stabilityai/stable-diffusion-xl-base-1.0")` is a SyncDiffusionXLPipeline, a Stable Diffusion 2
    folder a SyncDiffusionPipeline. With `controlnet=` it is the family's ControlSync pipeline."""

    def __init__(self, *args, **kwargs):
        raise TypeError("AutoSyncPipeline is not made but loaded: use AutoSyncPipeline.from_pretrained or "
                        "from_single_file.")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """A hub id, a diffusers folder, or a bundled model's name; keyword arguments as diffusers'."""
        from .bundled import bundled_model_folder

        name = str(pretrained_model_name_or_path)
        folder = bundled_model_folder(name) or Path(name).expanduser()
        if folder.is_dir():
            index = read_model_index(folder)
        else:
            from huggingface_hub import hf_hub_download

            index = json.loads(Path(hf_hub_download(name, "model_index.json", revision=kwargs.get("revision"),
                                                    local_files_only=kwargs.get("local_files_only", False))).read_text())
        family = family_of_model_index(index, f"Model {name}")
        return pipeline_class(family, "controlnet" in kwargs).from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def from_single_file(cls, path, **kwargs):
        """An original-format checkpoint (.safetensors, .ckpt); its family from its keys."""
        return pipeline_class(family_of_checkpoint(path), "controlnet" in kwargs).from_single_file(path, **kwargs)
