# Two commands on a fresh Debian/Ubuntu machine: `make demo` (set up + export + transcribe) and `make test`.
# Everything Python goes into a virtual environment (.venv, made here) from constraints.txt (tested versions):
# no system pip (Debian 12 refuses it), no activation needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS ?= constraints.txt
DEMO ?= demo-out
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt venv pip kenlm demo demo-model test lint bench clean

setup: apt pip kenlm

apt:
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv espeak-ng sox libsndfile1 cmake \
		build-essential libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev \
		zlib1g-dev libbz2-dev liblzma-dev chromium chromium-driver >/dev/null

venv: $(PY)

$(PY):
	python3 -m venv $(VENV)

pip: $(PY)
	# torch first: the CPU wheel; otherwise a dependency would pull a multi-GB CUDA build
	$(PIP) install -q -c $(CONSTRAINTS) torch==2.13.0
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[dev]"

kenlm: $(PY)
	PYTHON=$(PY) bash scripts/build_kenlm.sh

demo: setup
	$(PY) scripts/demo.py --out $(DEMO)

# Retrain the shipped demo model (models/demo-tr) from synthetic espeak-ng speech: ~60 min on one CPU core.
# Not part of CI; the model card lists the exact commands this runs.
demo-model: $(PY)
	$(PY) scripts/demo_model.py --work build/demo-tr --out models/demo-tr

test: $(PY)
	$(PY) -m pytest -q

lint: $(PY)
	$(PY) -m ruff check xlsr_edge tests benchmarks scripts
	$(PY) -m ruff format --check xlsr_edge tests benchmarks scripts

clean:
	rm -rf $(DEMO) .pytest_cache
