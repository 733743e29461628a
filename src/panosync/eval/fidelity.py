"""Fidelity of panorama crops to single images of the same model: FID, KID and KNN-GIQA.

All three are computed on Inception pool features (`inception.InceptionFeatures`). Extracting them
is the slow part, so `inception_features` runs once per image set and the metrics take features.

KID is torchmetrics' `KernelInceptionDistance` (a pass-through ``feature`` module hands it the
features unchanged). FID is the same formula as torchmetrics' `FrechetInceptionDistance`,
|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), but torchmetrics takes the last term from the
eigenvalues of the 2048 x 2048 product S1 S2, which costs over 30 s of CPU per FID here. With the
covariances written as S1 = A A^T and S2 = B B^T (A, B: the centred features, one column per image,
divided by sqrt(n - 1)), the non-zero eigenvalues of S1 S2 are those of (B^T A)^T (B^T A), so
tr sqrt(S1 S2) is the sum of the singular values of the small n2 x n1 matrix B^T A: the same number,
exactly, in milliseconds. The tests check it against torchmetrics.

KNN-GIQA (Gu et al., ECCV 2020) scores each image on its own: the sum over its K nearest reference
images (L1 distance in Inception feature space) of the inverse distance, as the authors' released
`knn_score.py` computes it. Higher means closer to what the model makes as single images.
"""

from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics.image.kid import KernelInceptionDistance

from .inception import InceptionFeatures, load_inception

__all__ = ["fid", "inception_features", "kid", "kid_subset_size", "knn_giqa"]

KID_SUBSETS = 100
KID_MAX_SUBSET_SIZE = 1000  # torchmetrics' default, used when there are enough images
GIQA_K = 8


class _Precomputed(nn.Module):
    """The identity on features: lets torchmetrics' metrics take features we already extracted."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def inception_features(images: Iterable[np.ndarray] | np.ndarray, model: InceptionFeatures | None = None,
                       batch_size: int = 32) -> Tensor:
    """Inception pool features (N, 2048), float64 on the CPU, of uint8 (H, W, 3) images."""
    model = load_inception() if model is None else model
    images = list(images)
    if not images:
        raise ValueError("No images to extract Inception features from.")
    batches = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.stack(images[start : start + batch_size])).permute(0, 3, 1, 2)
        batches.append(model(batch).double().cpu())
    return torch.cat(batches)


def _check_counts(real: Tensor, fake: Tensor, metric: str) -> None:
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"{metric} needs at least two images on each side, got {len(real)} and {len(fake)}.")


def fid(real: Tensor, fake: Tensor) -> float:
    """Fréchet Inception Distance between two sets of features (N, D), in float64."""
    _check_counts(real, fake, "FID")
    real, fake = real.double(), fake.double()
    mean_real, mean_fake = real.mean(dim=0), fake.mean(dim=0)
    a = (real - mean_real) / (len(real) - 1) ** 0.5  # S_real = a^T a
    b = (fake - mean_fake) / (len(fake) - 1) ** 0.5
    trace_sqrt = torch.linalg.svdvals(b @ a.T).sum()  # tr sqrt(S_real S_fake), see the module's text
    distance = (mean_real - mean_fake).square().sum() + a.square().sum() + b.square().sum() - 2 * trace_sqrt
    return float(distance)


def kid_subset_size(real_count: int, fake_count: int) -> int:
    """torchmetrics' default subset size (1000), lowered to the smaller set when there are fewer."""
    return min(KID_MAX_SUBSET_SIZE, real_count, fake_count)


def kid(real: Tensor, fake: Tensor, subsets: int = KID_SUBSETS, seed: int = 0) -> tuple[float, float, int]:
    """Kernel Inception Distance: (mean, std over `subsets` random subsets, subset size).

    The subsets are drawn with a fixed `seed`, so the same features give the same numbers."""
    _check_counts(real, fake, "KID")
    size = kid_subset_size(len(real), len(fake))
    with warnings.catch_warnings():
        # it warns that it keeps every feature: these are features already in memory
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")
        metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std), size


def knn_giqa(features: Tensor, reference: Tensor, k: int = GIQA_K) -> Tensor:
    """KNN-GIQA of each of `features` (N, D) against `reference` (M, D): the sum of 1 / d over its
    K nearest references by L1 distance d (shape (N,)). K is lowered to M when there are fewer
    references. A reference at distance 0 (the very same image) is skipped rather than scoring
    infinity."""
    if len(reference) == 0:
        raise ValueError("KNN-GIQA needs at least one reference image.")
    k = min(k, len(reference))
    distances = torch.cdist(features.double(), reference.double(), p=1)
    distances = distances.masked_fill(distances == 0, float("inf"))
    nearest = distances.topk(k, dim=1, largest=False).values
    return (1 / nearest).sum(dim=1)
