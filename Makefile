# Two commands on a fresh Debian/Ubuntu machine: `make demo` (set up + export + transcribe) and `make test`.
# Everything Python goes into a virtual environment (.venv, made here) from constraints.txt (tested versions):
# no system pip (Debian 12 refuses it), no activation needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS ?= constraints.txt
DEMO ?= demo-out
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# torch's CPU build comes from PyTorch's own wheel index: on Linux x86-64, PyPI's torch is the CUDA build
# (~3 GB with its nvidia-* wheels). A machine that cannot reach the index falls back to the default index at once.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup apt venv pip torch kenlm demo demo-model test lint bench clean

setup: apt pip kenlm
	@echo "setup: done ($(VENV), KenLM tools in .tools/kenlm/bin)"

apt:
	@echo "setup: apt packages (python3-venv, espeak-ng, sox, libsndfile1, KenLM build tools, ...; a minute or two)"
	$(SUDO) apt-get update -qq
	$(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv espeak-ng sox libsndfile1 cmake \
		build-essential libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev \
		zlib1g-dev libbz2-dev liblzma-dev chromium chromium-driver >/dev/null

venv: $(PY)

$(PY):
	python3 -m venv $(VENV)

# torch first, on its own (--no-deps: its dependencies come with the project, from the default index and
# constraints.txt), so nothing later pulls a CUDA build; after the project, scripts/check_torch.py says which
# build landed (a loud warning for a CUDA one).
torch: $(PY)
	@echo "setup: torch==$(TORCH_VERSION), the CPU build, from $(TORCH_INDEX)"
	$(PIP) install -c $(CONSTRAINTS) --no-deps --index-url $(TORCH_INDEX) --timeout 15 --retries 0 \
		torch==$(TORCH_VERSION) || { \
		echo "setup: $(TORCH_INDEX) is unreachable or lacks torch $(TORCH_VERSION): using the default index"; \
		$(PIP) install -c $(CONSTRAINTS) torch==$(TORCH_VERSION); }

pip: torch
	@echo "setup: xlsr-edge with every extra (pip install -e '.[dev]' -c $(CONSTRAINTS); several minutes)"
	$(PIP) install -c $(CONSTRAINTS) -e ".[dev]"
	$(PY) scripts/check_torch.py

kenlm: $(PY)
	@echo "setup: KenLM's lmplz and build_binary (compiled from source: a few minutes the first time)"
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
	$(PY) -m ruff check xlsr_edge tests benchmarks scripts examples
	$(PY) -m ruff format --check xlsr_edge tests benchmarks scripts examples
	# JetPack 6's Python is 3.10: nothing newer in the package (tomllib, typing.Self, except*, ...)
	$(VENV)/bin/vermin --target=3.10- --no-tips --violations xlsr_edge

# The runtime on arm64 (Debian 12 under qemu-user-static; root) against x86, transcripts compared: see the script's
# header. ~3 min with its cache (~/.cache/xlsr-edge/arm64), ~6.5 min cold; FULL=1 adds beam + KenLM (~30 min cold).
.PHONY: arm64-check
arm64-check: $(PY)
	$(SUDO) env VENV="$(VENV)" FULL="$(FULL)" OUT="$(OUT)" bash scripts/arm64_check.sh

clean:
	rm -rf $(DEMO) .pytest_cache
