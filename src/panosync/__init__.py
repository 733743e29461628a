"""panosync: coherent panoramas from a pretrained latent diffusion model with SyncDiffusion."""

__version__ = "0.1.0"

__all__ = ["SyncDiffusionPipeline", "SyncDiffusionOutput", "SyncDiffusionXLPipeline", "SyncDiffusion3Pipeline",
           "SyncFluxPipeline", "ControlSyncPipeline", "__version__"]


def __getattr__(name):
    # The pipeline pulls in diffusers and torch; load it when asked for, so `panosync --help` is quick.
    if name in ("SyncDiffusionPipeline", "SyncDiffusionOutput"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "SyncDiffusionXLPipeline":
        from . import xl

        return xl.SyncDiffusionXLPipeline
    if name == "SyncDiffusion3Pipeline":
        from . import sd3

        return sd3.SyncDiffusion3Pipeline
    if name == "SyncFluxPipeline":
        from . import flux

        return flux.SyncFluxPipeline
    if name == "ControlSyncPipeline":
        from . import control

        return control.ControlSyncPipeline
    raise AttributeError(f"module 'panosync' has no attribute {name!r}")
