"""Running many panoramas on one model: the engine that `panosync batch`, `evaluate` and `serve
--ray` share.

An engine takes tasks (a key and the pipeline's parameters) and hands back what became of each
(`Done`: the picture, or why not). `LocalEngine` loads the model once in this process and runs one
task at a time; `cluster.RayEngine` runs one task per Ray worker (an actor per GPU, or per
`--workers` on a CPU), each of which loaded the model once. Both call the same `PanoramaMaker`, so
a picture is the same whichever ran it. The engines write nothing: the caller (the driver) writes
each PNG with its own metadata, so no folder needs to be shared with the workers.
"""

from .maker import Canceled, Done, Made, ModelSpec, PanoramaMaker, TaskFailed
from .local import LocalEngine, run_all

__all__ = ["Canceled", "Done", "LocalEngine", "Made", "ModelSpec", "PanoramaMaker", "TaskFailed", "open_engine",
           "run_all"]


def open_engine(spec: ModelSpec, address: str | None = None, workers: int | None = None, on_step=None):
    """Ray workers at `address` (cluster.RayEngine) when given, else this process (LocalEngine);
    `on_step(key, step, sync_weight, worker)` hears every running task's progress."""
    if address is None:
        return LocalEngine(spec, on_step)
    import sys

    from .cluster import RayEngine

    print(f"starting {workers or 'one per GPU'} Ray worker(s) at {address} …", file=sys.stderr)
    return RayEngine(spec, address, workers, on_step)
