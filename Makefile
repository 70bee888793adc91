# Two entry points, both self-installing on a fresh machine:
#   make demo   -> synthetic scroll through the whole pipeline (CPU, bundled model)
#   make test   -> the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Two installs into the same venv: what the demo needs (engine + demo extras: torch, nnU-Net, matplotlib)
# and, for `make test`, everything (s3, operator, dev tools, the NGFF checkers' side venvs, ~0.6 GB more).
# `make demo` never builds the test tools; after `make test` it has nothing left to install.
DEMO_STAMP := $(VENV)/.installed-demo-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt tests/ngff/checkers-requirements.txt tests/ngff/zarr2-requirements.txt | cksum | cut -d' ' -f1)
# Debian packages `make test` installs when it runs as root on Debian (elsewhere it says so in one line
# and the tests that need them skip): buildah podman runc debootstrap for the container image tests
# (tests/images), chromium chromium-driver for the browser tests. One list: add a package here.
# Test processes (pytest-xdist): CI has 2 cores and the suite waits on subprocesses, servers and emulated
# clusters often enough that two workers finish it sooner than one.
TEST_WORKERS ?= 2
SYSTEM_PACKAGES ?= buildah podman runc debootstrap chromium chromium-driver

$(DEMO_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[engine,demo]'
	touch $@

$(STAMP): $(DEMO_STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[engine,s3,operator,demo,dev]'
	$(BIN)/python tests/ngff/checker_env.py  # ome-zarr-models/ome-zarr-py (pydantic pin), zarr-python 2.x
	touch $@

.PHONY: install system-packages demo test lint bench
install: $(STAMP)

system-packages:
	@sh tools/system-packages.sh $(SYSTEM_PACKAGES)

demo: $(DEMO_STAMP)
	$(BIN)/vesuvius-inference demo

# CI runs `make test`, so the lint (ruff, the import contract, mypy: ~1-2 min from a cold cache) runs first.
test: $(STAMP) system-packages lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	cd operator && ../$(BIN)/lint-imports ../pyproject.toml
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python tests/bench/bench_engine.py --tta
