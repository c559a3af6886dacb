# The lab's commands. `make demo` and `make test` work on a fresh clone: they create .venv first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
LOCK   := environments/requirements.lock
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export MLFLOW_ALLOW_PICKLE_DESERIALIZATION := false

.PHONY: setup demo deploy-demo test test-deployment images test-containers bench bench-load lint lock ui lab clean

# The environment, installed exactly from the lock; redone when the lock or the project changes.
$(BIN)/.installed: $(LOCK) pyproject.toml
	@echo "Installing the pinned environment from $(LOCK) into $(VENV) (a few minutes the first time)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --require-hashes --no-warn-script-location -r $(LOCK)
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	$(BIN)/lab env verify
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/lab demo

# The README's "Deploy across organisations" with each party on its own host (network namespaces; needs root and nginx).
deploy-demo: setup
	$(BIN)/python deploy/demo.py

test: setup
	$(BIN)/python -m pytest

# The README's "Deploy across organisations" played through, every party on a host of its own
# (network namespaces, nginx, a tracking server; root): about 15 min, so apart from `make test`.
test-deployment: setup
	$(BIN)/python -m pytest -m deployment -n 0 tests/test_deployment_e2e.py

# The node and coordinator images, built here with podman (deploy/images.py; environments/README.md).
images: setup
	$(BIN)/python deploy/images.py

# The federation in those containers: a coordinator and two organisations' nodes on a podman network.
test-containers: images
	$(BIN)/python -m pytest -m containers -n 0 tests/test_container_federation.py

# Quality, rounds to quality, overhead against bare Flower, scale and rows (10k to 1M): benchmarks/results.md (about 25 min).
bench: setup
	$(BIN)/python benchmarks/run.py

# 16 SuperNodes, a training run and 100 federated-statistics queries on one standing federation:
# benchmarks/load.md (processes, open files and memory from the first query to the last).
bench-load: setup
	$(BIN)/python benchmarks/load.py

lint: setup
	$(BIN)/ruff check lab federation tests benchmarks deploy
	$(BIN)/ruff format --check lab federation tests benchmarks deploy
	$(BIN)/mypy lab federation

ui: setup
	$(BIN)/lab ui

# JupyterLab on notebooks/, on 127.0.0.1 with its token: the kernel is .venv's python (the kernelspec
# "fedlab (.venv)", installed into .venv, not the user's home) and sees the workspace's tracking
# store. Nothing is fetched from the internet (no news, update checks or extension installs: the
# environment is the lock's). Ctrl-C stops it at once (no y/n prompt).
LAB_WORKSPACE ?= workspace
STORE   := $(abspath $(LAB_WORKSPACE))
KERNEL  := $(VENV)/share/jupyter/kernels/fedlab/kernel.json
AS_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

$(KERNEL): $(BIN)/.installed
	$(BIN)/python -m ipykernel install --sys-prefix --name fedlab --display-name "fedlab (.venv)"

lab: setup $(KERNEL)
	mkdir -p $(STORE)
	LAB_WORKSPACE=$(STORE) MLFLOW_TRACKING_URI=sqlite:///$(STORE)/mlflow.db exec $(BIN)/jupyter lab \
	    --notebook-dir=notebooks --no-browser --ip=127.0.0.1 --ServerApp.answer_yes=True $(AS_ROOT) \
	    --MultiKernelManager.default_kernel_name=fedlab --LabApp.extension_manager=readonly \
	    --LabApp.news_url=None --LabApp.check_for_updates_class=jupyterlab.handlers.announcements.NeverCheckForUpdate

# Resolve environments/requirements.in into the hashed lock, in a scratch environment. Versions
# already in the lock are kept (pip-compile starts from them); `make lock UPGRADE=1` moves every
# package to its newest release the registry has.
PIP_TOOLS := pip-tools==7.6.2
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -qq $(PIP_TOOLS)
	sed -n '6,$$p' $(LOCK) > $(LOCK).body
	.lock-venv/bin/pip-compile --quiet --generate-hashes --allow-unsafe --strip-extras --no-header $(if $(UPGRADE),--upgrade) \
	    --no-emit-index-url --no-emit-find-links --output-file $(LOCK).body environments/requirements.in
	{ sed -n '1,3p' $(LOCK); \
	  .lock-venv/bin/python -c 'import sys, sysconfig; print(f"# environment: python {sys.version_info[0]}.{sys.version_info[1]} {sysconfig.get_platform()}")'; \
	  echo "#"; cat $(LOCK).body; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv $(LOCK).body

clean:
	rm -rf $(VENV) workspace
