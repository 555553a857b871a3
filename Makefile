# Two commands on a fresh machine: `make demo` (set up + export + transcribe) and `make test`.
PY ?= python3
PIP ?= $(PY) -m pip
DEMO ?= demo-out
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt pip kenlm demo demo-model test lint bench clean

setup: apt pip kenlm

apt:
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox libsndfile1 cmake build-essential \
		libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev \
		zlib1g-dev libbz2-dev liblzma-dev >/dev/null

pip:
	# torch first: the CPU wheel; otherwise a dependency would pull a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"

kenlm:
	bash scripts/build_kenlm.sh

demo: setup
	$(PY) scripts/demo.py --out $(DEMO)

# Retrain the shipped demo model (models/demo-tr) from synthetic espeak-ng speech: ~60 min on one CPU core.
# Not part of CI; the model card lists the exact commands this runs.
demo-model:
	$(PY) scripts/demo_model.py --work build/demo-tr --out models/demo-tr

test:
	$(PY) -m pytest -q

lint:
	$(PY) -m ruff check xlsr_edge tests benchmarks scripts
	$(PY) -m ruff format --check xlsr_edge tests benchmarks scripts

clean:
	rm -rf $(DEMO) .pytest_cache
