"""Which pipeline class serves a model: `pipeline_class(family, control)`, and
`AutoSyncDiffusionPipeline`, which loads the pipeline of a model's family as diffusers'
AutoPipelineForText2Image does (the family from a diffusers folder's model_index.json or a
checkpoint's keys, families.py). models.py loads through the same choice, so every front end (the
command, the server, the page, evaluate) takes an SDXL model as it takes an SD one. And the other
way: the family and variant of a loaded pipeline, and the defaults they give.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from .families import (FLUX, SD, SD3, SDXL, defaults_of, family_of_checkpoint, family_of_model_index,
                       read_model_index, variant_of_transformer)


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
        from .flux import SyncDiffusionFluxPipeline

        return SyncDiffusionFluxPipeline
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


class AutoSyncDiffusionPipeline:
    """Loads the SyncDiffusion pipeline of a model's family: `AutoSyncDiffusionPipeline.from_pretrained(
    "stabilityai/stable-diffusion-xl-base-1.0")` is a SyncDiffusionXLPipeline, a Stable Diffusion 2
    folder a SyncDiffusionPipeline. With `controlnet=` it is the family's ControlSync pipeline."""

    def __init__(self, *args, **kwargs):
        raise TypeError("AutoSyncDiffusionPipeline is not made but loaded: use "
                        "AutoSyncDiffusionPipeline.from_pretrained or from_single_file.")

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


def family_of_pipeline(pipe) -> str:
    """The family of a loaded panosync pipeline: its class's `family`."""
    return getattr(type(pipe), "family", SD)


def variant_of_pipeline(pipe) -> str | None:
    """The variant of a loaded panosync pipeline (families.variant_of_transformer)."""
    transformer = getattr(pipe, "transformer", None)
    return variant_of_transformer(family_of_pipeline(pipe), None if transformer is None else transformer.config)


def family_defaults_after_loading(pipe, explicit: Iterable[str] = ()) -> dict:
    """The defaults of a loaded pipeline's family and variant (families.defaults_of: FLUX's distilled
    guidance, schnell's 4 steps, SDXL's guidance 5) but those named in `explicit` (set by options, or
    a PNG): for a model whose family was not known before it loaded (a hub model whose configs could
    not be had), which settings.recommended_of could not give."""
    explicit = set(explicit)
    defaults = defaults_of(family_of_pipeline(pipe), variant_of_pipeline(pipe))
    return {name: value for name, value in defaults.items() if name not in explicit}
