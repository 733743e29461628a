"""panosync: coherent panoramas from a pretrained latent diffusion model with SyncDiffusion."""

__version__ = "0.1.0"

# Where each exported name lives. The pipelines pull in diffusers and torch: they load when asked
# for, so that `panosync --help` is quick.
_HOMES = {
    "SyncDiffusionPipeline": "pipeline", "SyncDiffusionXLPipeline": "xl", "SyncDiffusion3Pipeline": "sd3",
    "SyncDiffusionFluxPipeline": "flux",
    "ControlSyncPipeline": "control", "ControlSyncXLPipeline": "control", "ControlSync3Pipeline": "control_sd3",
    "ControlSyncFluxPipeline": "control_flux",
    "AutoSyncDiffusionPipeline": "registry", "SyncDiffusionOutput": "pipeline_base", "Region": "regions",
}

__all__ = [*_HOMES, "__version__"]


def __getattr__(name):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    raise AttributeError(f"module 'panosync' has no attribute {name!r}")
