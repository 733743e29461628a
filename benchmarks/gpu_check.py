"""The GPU check: half precision, speed and peak memory of SyncDiffusion panoramas with
Stable Diffusion 2 base's architecture and random weights (they cost exactly what the real ones
cost), measured in one run of a few minutes on a bare GPU machine.

    bash benchmarks/gpu_check.sh                           # the GPU machine (installs .gpu-bundle first)
    python benchmarks/gpu_check.py --smoke --out /tmp/gc   # the same code at a tiny size, on the CPU

Parts, in the order they run (most wanted first):

correctness  a synced panorama in float16, under autocast (float32 weights, float16 arithmetic:
             the reference's precision) and in bfloat16 is finite and not flat; MultiDiffusion
             (sync weight 0) in each against float32: the largest and mean pixel difference.
speed        at 512×2048, then (last, with whatever time is left) 512×3072, float16: seconds per
             synced and per plain step of the reference order (tests/reference_loop.py), faithful
             mode at each view batch size tried (the best marked), MultiDiffusion, diffusers'
             StableDiffusionPanoramaPipeline and each fast mode of speed.py's `modes()`.
memory       the peak memory of one synced step (faithful mode, float16) and of the final decode
             (tiled and in one piece) at 512×8192 and 2048×2048.
backbones    other families' architectures with random weights, in the precision their users run
             (SDXL base: float16, 1024×4096 and 2048×2048 at a quarter-window stride): seconds per
             synced and per plain step of faithful mode, and the peak memory of the whole panorama.
flow transformers  (flow_check.py; last, with the time left, or alone: --only flow) SD3.5 medium's
             and FLUX.1-dev's architectures in bfloat16 at 1024×4096: seconds per synced and plain
             step, faithful and no_unet_backward, and each run's peak memory.

Per-step times: every panorama of the speed parts takes a few steps, synced in the first half; each
step is timed (the device synchronised in callback_on_step_end) and the median of the synced and of
the plain steps is kept, the first step left out (it includes the prompt and first-call warm-up).
The totals for 50 steps in the tables are derived from those per-step times, not measured.

Every run is guarded: a failure is recorded and the check goes on; a run expected to outlast its
part's budget or the global deadline is skipped, and so is a part that finds no time left, each
saying so. GPU.md and GPU.json are rewritten after every run, so a run cut short keeps its results.

This file reads the options and runs the check; gpu/ holds it: plans.py (the sizes), harness.py (the
clock, the guarded runs, the report files), parts.py (the measurements) and tables.py (GPU.md).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# panosync from this checkout; speed.py and gpu/ beside this file; tests/reference_loop.py, the reference order
sys.path[:0] = [str(HERE), str(HERE.parent / "src"), str(HERE.parent / "tests")]

from gpu.harness import Interrupted  # noqa: E402
from gpu.parts import Check  # noqa: E402
from gpu.plans import gpu_plan, smoke_plan  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a tiny SD-2-shaped model on the CPU, in seconds")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for GPU.md and GPU.json (default: benchmarks/; --smoke: a new temporary folder)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds after which the parts left are skipped (default: GPU 480, smoke 600)")
    parser.add_argument("--only", nargs="*", default=None, help="only the parts whose names start with these")
    args = parser.parse_args(argv)

    if args.smoke:
        out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-smoke-"))
        if out.resolve() == HERE:
            parser.error("--smoke never writes benchmarks/GPU.md: give another --out folder")
        plan = smoke_plan(args.deadline or 600)
        # One thread: two-thread OpenMP on a machine busy with other work spins and stalls, making
        # steps of the same run differ a hundredfold (seen here); one thread keeps the smoke run steady.
        torch.set_num_threads(1)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run on the GPU machine, or use --smoke")
        out = args.out or HERE
        plan = gpu_plan(args.deadline or 480)

    def stop(signum, frame):
        raise Interrupted()

    signal.signal(signal.SIGTERM, stop)
    check = Check(plan, out, args.only)
    print(f"writing {out / 'GPU.md'} and {out / 'GPU.json'} as results come", flush=True)
    try:
        check.run()
    except Interrupted:
        print("interrupted: the results so far are written", flush=True)
        check.report.save()
        return 1
    print((out / "GPU.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
