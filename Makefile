# daxfs: every target does its own set-up on a fresh Debian machine (as root).
#   make demo   a scripted tour on the embedded default region (/dev/shm)
#   make test   lint, type-check and the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# gcc and libc6-dev build the kernel front end's compiled data path on first use
# (client/fuse/kernel/_fastio.c); without them the mount serves in Python.
APT_PACKAGES := fuse3 libpmem1 fio sqlite3 python3-venv gcc libc6-dev
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: all deps venv install proto demo test lint typecheck unit bench clean wheels compose-test \
	vm-test vm-demo

all: test

# System packages: installed only when one is missing, so a warm machine does no apt work.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Strict editable mode behaves like the wheel (new modules appear only after a
# re-install, which this target does every time) and lets mypy see daxfs.*.
install: deps $(VENV)/bin/python
	@$(PY) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	@$(PY) -m pip install -q -e '.[dev,bench]' --config-settings editable_mode=strict >$(VENV)/install.log 2>&1 \
	  || { cat $(VENV)/install.log; echo "pip install failed (log above)"; exit 1; }
	@$(PY) -c "import daxfs.client, daxfs.server, daxfs.shared, daxfs.proto" || { echo "daxfs did not install"; exit 1; }

proto: install
	$(PY) scripts/gen_proto.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy -p daxfs

unit: install
	$(PY) -m pytest

test: lint typecheck unit compose-test vm-test

demo: install
	$(PY) scripts/demo.py

bench: install
	$(PY) -m daxfs bench --json bench-out/bench.json --png bench-out/bench.png

# Wheels of daxfs and its dependencies, for images built without network.
wheels: install
	rm -rf build/wheels
	$(PY) -m pip wheel -q --wheel-dir build/wheels . >/dev/null

# The two-guest docker-compose demo on a real engine (see docker/compose-test.sh).
compose-test: install
	bash docker/compose-test.sh

# Two QEMU guests (own kernels) and a host server on one ivshmem region (see vm/run.py).
# Under TCG (no usable KVM) a run takes about 4-5 minutes on 2 cores with little else
# running, 8+ when the cores are shared (budget 17 min, DAXFS_VM_BUDGET_S), plus about
# 7 minutes once to build the cached guest image (vm/build-image.sh).
vm-test: install
	bash vm/vm-test.sh

vm-demo: install
	bash vm/vm-test.sh --verbose

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
