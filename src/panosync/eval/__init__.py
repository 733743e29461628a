"""The paper's evaluation of panoramas, each metric usable on its own:

* coherence within a panorama: `intra_lpips`, `intra_style_loss` (`perceptual`);
* fidelity to single images: `fid`, `kid`, `knn_giqa` on `inception_features` (`fidelity`);
* prompt adherence: `ClipScorer` (`clip_score`);
* the crops they are all computed on: `crops` (`crops`);

and `panosync evaluate` (`command`), which plans the images (`plan`), generates them, measures
them (`measure`) and reports (`report`).

Names are imported on first use, so that `panosync --help` does not load torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "crops": "crops", "crop_corners": "crops", "crop_batch": "crops",
    "intra_lpips": "perceptual", "intra_style_loss": "perceptual", "load_style_features": "perceptual",
    "gram_matrices": "perceptual", "style_loss": "perceptual",
    "inception_features": "fidelity", "fid": "fidelity", "kid": "fidelity", "knn_giqa": "fidelity",
    "load_inception": "inception",
    "ClipScorer": "clip_score", "ClipUnavailable": "clip_score",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
