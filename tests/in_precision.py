"""One way for tests to put a tiny pipeline in a precision, as the command's loader does."""

from panosync.precision import pick_precision


def in_precision(pipe, precision: str):
    """`pipe` with its weights in `precision` ("float32", "float16", "bfloat16" or "autocast":
    float32 weights under float16 autocast), its progress bar off."""
    pipe.set_progress_bar_config(disable=True)
    chosen = pick_precision(precision, "cpu")
    pipe.to(dtype=chosen.weights)
    if chosen.autocast is not None:
        pipe.enable_autocast(chosen.autocast)
    return pipe
