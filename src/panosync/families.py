"""The model families panosync runs, in data: their names, their defaults where a family's diffusers
pipeline departs from the paper, and how a model's family is told before any weights load, from a
diffusers folder's model_index.json and configs or from a single checkpoint file's keys. A family
panosync does not run is one sentence that names those it does.

Nothing here imports the rest of panosync: the pipelines, backbones, settings and front ends read
these tables; which pipeline class serves a family is registry.py's.
"""

from __future__ import annotations

import json
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
