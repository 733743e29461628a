"""Mean-CLIP-S: how well the crops of a panorama match its prompt, by torchmetrics' `CLIPScore`
(100 x the cosine similarity of CLIP image and text embeddings) with CLIP ViT-B/16, the paper's model.

The CLIP weights come from the Hugging Face hub or its local cache. When they cannot be had (offline
and not cached), the metric is skipped, and the reason is reported, rather than failing the
evaluation or quietly using another model.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn
from torchmetrics.multimodal.clip_score import CLIPScore

__all__ = ["CLIP_MODEL", "ClipScorer", "ClipUnavailable"]

CLIP_MODEL = "openai/clip-vit-base-patch16"


class ClipUnavailable(RuntimeError):
    """The CLIP weights cannot be loaded; the message says why, for the report."""


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _load(source: str):
    from transformers import CLIPModel, CLIPProcessor

    try:
        return CLIPModel.from_pretrained(source, local_files_only=True), CLIPProcessor.from_pretrained(source, local_files_only=True)
    except OSError as error:
        local_error = error
    if os.path.isdir(source):
        raise ClipUnavailable(f"{source} is not a readable CLIP model folder ({local_error}).")
    if _offline():
        raise ClipUnavailable(f"CLIP weights {source} are not in the local Hugging Face cache and HF_HUB_OFFLINE is set.")
    try:
        return CLIPModel.from_pretrained(source), CLIPProcessor.from_pretrained(source)
    except OSError as error:
        raise ClipUnavailable(f"CLIP weights {source} are not in the local Hugging Face cache and could not be "
                              f"downloaded ({error}).") from None


class _Embeddings(nn.Module):
    """A CLIPModel whose get_image_features / get_text_features return the projected embeddings as a
    tensor. transformers 5 returns an output object there, which torchmetrics 1.9's CLIPScore cannot
    read (torchmetrics issue #3407); the embedding is that object's `pooler_output`."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(output):
        return output if isinstance(output, torch.Tensor) else output.pooler_output

    def get_image_features(self, *args, **kwargs):
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return self._tensor(self.model.get_text_features(*args, **kwargs))


class ClipScorer:
    """CLIP score of images against a prompt. `source` is a hub id or a local CLIP folder;
    raises `ClipUnavailable` when it cannot be loaded."""

    def __init__(self, source: str = CLIP_MODEL, device: torch.device | str = "cpu") -> None:
        model, processor = _load(source)
        model.eval()
        self.source = source
        self.device = torch.device(device)
        embeddings = _Embeddings(model)
        self.metric = CLIPScore(model_name_or_path=lambda: (embeddings, processor)).to(self.device)

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray] | np.ndarray, prompt: str) -> float:
        """The mean CLIP score of uint8 (H, W, 3) `images` against `prompt`."""
        batch = torch.from_numpy(np.stack(list(images))).permute(0, 3, 1, 2).to(self.device)
        self.metric.reset()
        self.metric.update(batch, [prompt] * len(batch))
        return float(self.metric.compute())
