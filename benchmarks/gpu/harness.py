"""The GPU check's harness: the clock (a global deadline and each part's budget), the cost model that
skips a run expected not to finish in time, and the guarded running of parts and runs (a failure is
recorded and the check goes on; SIGTERM stops it), with GPU.json and GPU.md rewritten after every
run so that a check cut short keeps its results."""

from __future__ import annotations

import datetime
import gc
import json
import platform
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from speed import write_atomically

from .plans import Plan
from .tables import GIB, derive_speed_figures, markdown, one_line


class Interrupted(Exception):
    """SIGTERM (the wrapper's hard timeout): stop, keeping what was measured."""


class Clock:
    """The global deadline, and the end of the part running now (its budget, or the deadline)."""

    def __init__(self, seconds: float):
        self.started = time.monotonic()
        self.deadline = self.started + seconds
        self.part_ends = self.deadline

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def start_part(self, budget: float | None) -> None:
        self.part_ends = self.deadline if budget is None else min(self.deadline, time.monotonic() + budget)

    def part_left(self) -> float:
        return self.part_ends - time.monotonic()


class CostModel:
    """The seconds a run is expected to take, from the per-view step times measured so far: only used
    to skip a run that would not finish in time."""

    def __init__(self, plan: Plan):
        self.synced_view_s, self.plain_view_s = plan.synced_view_s, plan.plain_view_s

    def learn(self, views: int, row: dict) -> None:
        """From a faithful float16 run (the speed parts' yardstick)."""
        if row.get("synced_step_s"):
            self.synced_view_s = row["synced_step_s"] / views
        if row.get("plain_step_s"):
            self.plain_view_s = row["plain_step_s"] / views

    def seconds(self, views: int, synced: int, plain: int, slower: float = 1.0) -> float:
        """`slower`: how many times slower than faithful float16 at its best chunk this run is thought to be."""
        return slower * views * (synced * self.synced_view_s + plain * self.plain_view_s)


# ------------------------------------------------------------------------------------- the report


class Report:
    """GPU.json and GPU.md, rewritten after every run so that a check cut short keeps its results."""

    def __init__(self, out: Path, plan: Plan, clock: Clock):
        self.out, self.plan, self.clock = out, plan, clock
        self.data = dict(environment={}, plan=asdict(plan), parts={}, finished=False)

    def part(self, name: str) -> dict:
        part = dict(status="running", runs=[], skipped=[], seconds=None, notes=[])
        self.data["parts"][name] = part
        self.save()
        return part

    def save(self) -> None:
        self.data["environment"]["seconds_so_far"] = round(self.clock.elapsed(), 1)
        for name, part in self.data["parts"].items():
            if name.startswith("speed"):
                derive_speed_figures(part["runs"])
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomically(self.out / "GPU.json", json.dumps(self.data, indent=2, default=str) + "\n")
        try:
            text = markdown(self.data)
        except Exception:  # the figures are safe in GPU.json; a bug in the tables must not stop the check
            text = f"# GPU check\n\nGPU.md could not be written (the figures are in GPU.json):\n\n```\n" \
                   f"{traceback.format_exc()}```"
        write_atomically(self.out / "GPU.md", text + "\n")


def environment(plan: Plan) -> dict:
    try:
        return describe_machine(plan)
    except Exception as error:
        return dict(error=f"{type(error).__name__}: {error}", smoke=plan.smoke)


def describe_machine(plan: Plan) -> dict:
    import diffusers

    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), torch=torch.__version__, diffusers=diffusers.__version__,
                smoke=plan.smoke)
    if plan.device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        info.update(device=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    device_memory_gib=round(properties.total_memory / GIB, 1),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    else:
        info.update(device=f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads")
    return info


# ------------------------------------------------------------------------------------- running


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


class Harness:
    """Runs the parts of a check and their runs within the time they have, recording in the report
    every run's row, failure or skip, and every part's status; `part_data` is the part running now."""

    def __init__(self, plan: Plan, out: Path, only: list[str] | None):
        self.plan, self.only = plan, only
        self.clock = Clock(plan.deadline_s)
        self.report = Report(out, plan, self.clock)
        self.costs = CostModel(plan)
        self.part_data: dict = {}

    def attempt(self, label: str, expected_s: float, work: Callable[[], dict], **about) -> dict | None:
        """Run `work` unless it is expected to outlast the time left; record its row or its failure."""
        left = self.clock.part_left()
        if expected_s > left:
            reason = f"expected {expected_s:.0f} s, {max(0.0, left):.0f} s left (part budget or global deadline)"
            self.part_data["skipped"].append(dict(run=label, reason=reason))
            print(f"  skipped {label}: {reason}", flush=True)
            self.report.save()
            return None
        row = dict(run=label, **about)
        started = time.perf_counter()
        try:
            row.update(work())
            row["error"] = None
        except Interrupted:
            raise
        except Exception as error:  # a failure is a result: record it and go on
            from panosync.precision import NonFiniteError

            row["error"] = f"{type(error).__name__}: {error}"
            if isinstance(error, NonFiniteError):
                row["finite"] = False
            else:
                row["traceback"] = traceback.format_exc(limit=-4)
        row["wall_s"] = time.perf_counter() - started
        free_memory(self.plan.device)
        self.part_data["runs"].append(row)
        self.report.save()
        try:
            print("  " + one_line(row), flush=True)
        except Exception:
            print(f"  {label}: {row}", flush=True)
        return row

    def part(self, name: str, work: Callable[[], None]) -> None:
        if self.only and name != "setup" and not any(name.startswith(prefix) for prefix in self.only):
            return
        self.part_data = self.report.part(name)
        if self.clock.left() < 5:
            self.part_data["status"] = "skipped: the global deadline has passed"
            print(f"{name}: skipped, the global deadline has passed", flush=True)
            self.report.save()
            return
        self.clock.start_part(self.plan.budgets.get(name))
        print(f"{name} (budget {self.clock.part_left():.0f} s) ...", flush=True)
        started = time.perf_counter()
        try:
            work()
            skipped = len(self.part_data["skipped"])
            self.part_data["status"] = "done" + (f", {skipped} run(s) skipped for time" if skipped else "")
        except Interrupted:
            self.part_data["status"] = "interrupted (SIGTERM): the runs above are complete"
            raise
        except Exception as error:
            self.part_data["status"] = f"failed: {type(error).__name__}: {error}"
            self.part_data["traceback"] = traceback.format_exc(limit=-6)
            print(self.part_data["traceback"], flush=True)
        finally:
            self.part_data["seconds"] = time.perf_counter() - started
            self.report.save()
