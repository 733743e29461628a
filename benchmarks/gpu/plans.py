"""The sizes and step counts of one run of the GPU check: the GPU's (Stable Diffusion 2 base's
architecture at real sizes, within the machine's time) and the smoke run's (a tiny model on the
CPU, the same code in seconds), with the other families the backbones part measures."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from speed import sdxl_base_components


@dataclass(frozen=True)
class Backbone:
    """Another family's architecture, measured in the backbones part."""

    name: str
    build: Callable[[bool], object]  # smoke -> the family's SyncDiffusion pipeline, random weights, on the CPU
    precision: str
    canvases: tuple[tuple[int, int], ...]  # (height, width) in pixels
    stride: int  # latent pixels between views
    # FLOPs of a synced and of a plain view-step against SD 2 base's (benchmarks/COST.md), to judge what fits
    synced_cost: float
    plain_cost: float


def sdxl_pipeline(smoke: bool):
    from panosync.xl import SyncDiffusionXLPipeline

    return SyncDiffusionXLPipeline(**sdxl_base_components(smoke))


@dataclass(frozen=True)
class Plan:
    """Sizes and step counts of one run of the check: the GPU's, or the smoke test's (tiny, CPU)."""

    smoke: bool
    device: str
    height: int  # one window, in pixels
    speed_widths: tuple[int, ...]
    stride: int  # latent pixels between views
    steps: int  # of every timed panorama of the speed parts
    synced_steps: int  # ... synced in the first this many (at least 2: the first step's time is left out)
    chunks: tuple[int, ...]  # faithful mode's view batch sizes tried
    correctness_width: int
    correctness_steps: int
    correctness_synced: int
    precisions: tuple[str, ...]  # checked against float32 in the correctness part
    speed_precision: str  # of the speed and memory parts
    memory_canvases: tuple[tuple[int, int], ...]  # (height, width) in pixels
    deadline_s: float  # from the start of the script
    budgets: dict = field(default_factory=dict)  # seconds per part; a part not named gets what is left
    # Seconds per view of a synced and of a plain step before any is measured, to judge whether a run
    # fits in the time left (GPU: FLOPs of faithful mode's passes, ~14.4 and ~1.6 TFLOP a view, at
    # ~120 TFLOP/s; smoke: measured on a 2-core CPU).
    synced_view_s: float = 0.12
    plain_view_s: float = 0.015
    backbones: tuple[Backbone, ...] = ()
    backbone_steps: int = 3  # each synced in the first 2: one synced step timed (the first is left out), one plain


def gpu_plan(deadline_s: float) -> Plan:
    return Plan(smoke=False, device="cuda", height=512, speed_widths=(2048, 3072), stride=16, steps=6, synced_steps=3,
                chunks=(16, 8, 4, 1), correctness_width=2048, correctness_steps=20, correctness_synced=4,
                precisions=("float16", "autocast", "bfloat16"), speed_precision="float16",
                memory_canvases=((512, 8192), (2048, 2048)), deadline_s=deadline_s,
                budgets={"correctness": 90, "gradient": 40, "speed 512x2048": 110, "memory": 80, "backbones": 100,
                         "offload": 45},
                backbones=(Backbone("SDXL base", sdxl_pipeline, "float16", ((1024, 4096), (2048, 2048)), stride=32,
                                    synced_cost=6.2, plain_cost=8.4),))


def smoke_plan(deadline_s: float) -> Plan:
    """The same code in seconds on a CPU: speed.py's smoke model (128-pixel windows), 2 to 4 views a half
    window apart, few steps. float16 and autocast are left out and the speed parts run in float32: a
    CPU's float16 kernels are 20-40 times slower than its float32 ones (LPIPS-VGG's forward and
    backward at 128 pixels: 14 s against 0.3 s on this project's 2-core machines); bfloat16's are not."""
    return Plan(smoke=True, device="cpu", height=128, speed_widths=(192,), stride=8, steps=3, synced_steps=2,
                chunks=(4, 1), correctness_width=192, correctness_steps=3, correctness_synced=2,
                precisions=("bfloat16",), speed_precision="float32",
                memory_canvases=((128, 256),), deadline_s=deadline_s, synced_view_s=1.0, plain_view_s=0.05,
                backbones=(Backbone("SDXL (tiny)", sdxl_pipeline, "float32", ((128, 256),), stride=8,
                                    synced_cost=1.0, plain_cost=1.0),))
