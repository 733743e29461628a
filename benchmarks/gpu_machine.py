"""Run a command as on the bare GPU machine, as far as this machine can: `python3` there sees only the
packages the GPU machine has (this venv's copies of them) and what the command's own PYTHONPATH adds,
so a bundle that lacks something the GPU check imports fails here as it would there.

    python benchmarks/gpu_machine.py -- bash benchmarks/gpu_check.sh --smoke --out /tmp/x

A folder of links to those packages' files stands in for site-packages; `python3` on the PATH runs
this venv's interpreter with -S (no site-packages of its own) and that folder last on its path. What
it cannot imitate: the GPU itself, and the GPU machine's Python (3.12) and package versions.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

# What the GPU machine has installed (benchmarks/gpu_bundle.sh); their own requirements come with them.
GPU_MACHINE_PACKAGES = ["torch", "torchvision", "transformers", "tokenizers", "safetensors", "huggingface_hub",
                        "torchmetrics", "opencv-python-headless", "pillow", "tqdm", "numpy", "scipy", "pip",
                        "accelerate", "peft"]


def with_requirements(names: list[str]) -> dict[str, metadata.Distribution]:
    """The installed distributions of `names` and, transitively, of what they require (extras aside)."""
    found: dict[str, metadata.Distribution] = {}
    waiting = list(names)
    while waiting:
        name = canonicalize_name(waiting.pop())
        if name in found:
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # required on another platform or Python only
        found[name] = distribution
        for text in distribution.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                waiting.append(requirement.name)
    return found


def link_site_packages(distributions, folder: Path) -> None:
    """Links in `folder` to every top-level file and folder the distributions installed."""
    for distribution in distributions:
        for file in distribution.files or []:
            top = file.parts[0]
            if top == ".." or top == "__pycache__":  # scripts in bin/, caches
                continue
            link, target = folder / top, Path(distribution.locate_file(top))
            if not link.exists() and target.exists():
                link.symlink_to(target)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory(prefix="gpu-machine-") as scratch:
        site, bin_folder = Path(scratch, "site-packages"), Path(scratch, "bin")
        site.mkdir()
        bin_folder.mkdir()
        distributions = with_requirements(GPU_MACHINE_PACKAGES)
        link_site_packages(distributions.values(), site)
        python = bin_folder / "python3"
        path = f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{site}"'  # the command's own path first, as there
        python.write_text(f'#!/bin/sh\n{path} exec {sys.executable} -S "$@"\n')
        python.chmod(0o755)
        (bin_folder / "python").symlink_to(python)
        print(f"as on the GPU machine: {len(distributions)} distributions ({', '.join(sorted(distributions))})",
              flush=True)
        environment = {**os.environ, "PATH": f"{bin_folder}:{os.environ['PATH']}",
                       "GPU_CHECK_SITE": str(Path(scratch, "bundle-site"))}
        environment.pop("PYTHONPATH", None)
        return subprocess.run(argv, env=environment).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
