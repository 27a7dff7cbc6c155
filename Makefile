# galmorph: the two commands
#   make demo  - the whole platform end to end, locally, on the embedded default stack
#   make test  - the test suite (what CI runs through .ci/run)
SHELL := /bin/bash
# uv from PATH, else the Python package (installed by `setup` when missing)
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
# podman settings that work on plain hosts (runc, explicit ulimits); used by builds, runs and tests
export CONTAINERS_CONF ?= $(CURDIR)/infra/podman/containers.conf

.PHONY: demo test setup browser stack-down lint benchmarks results-page container-tools images push images-or-skip

# --compile-bytecode: every pipeline step, CLI call and server is a new Python process; with the locked
# environment's bytecode compiled once here, none of them recompiles torch, mlflow, evidently or
# great_expectations at import (which they do wherever PYTHONDONTWRITEBYTECODE is set)
setup:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode

# headless Chromium for the browser tests (Debian packages), installed once
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ( (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) ) || \
	  echo "warning: could not install chromium; browser tests will be skipped"

# podman, buildah, mmdebstrap, runc (Debian packages), installed once
container-tools:
	@command -v podman >/dev/null && command -v buildah >/dev/null && command -v mmdebstrap >/dev/null && \
	  command -v runc >/dev/null || \
	  ( (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah mmdebstrap runc >/dev/null || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah mmdebstrap runc >/dev/null) )

# the galmorph images (project image = galmorph-cpu = galmorph-gpu, app image on it); reused when their
# inputs are unchanged. BASE_IMAGE=docker.io/library/python:3.11.7-slim-bookworm with a registry.
images: setup container-tools
	nice -n 19 infra/docker/build-images.sh

# push the images to GALMORPH_IMAGE_REGISTRY (log in first: podman login REGISTRY)
push: images
	infra/docker/build-images.sh --push

# for `make test`: build the images; where podman cannot work here the container tests skip
images-or-skip:
	@$(MAKE) --no-print-directory images || echo "warning: the images could not be built; container tests will fail or skip"

demo: setup
	$(UV) run galmorph demo

test: setup browser images-or-skip
	$(UV) run pytest -q $(PYTEST_ARGS)

stack-down: setup
	$(UV) run galmorph stack down

# all benchmarks (results in benchmarks/results/; only runs on a quiet machine are results);
# QUICK=1: smoke-test sizes, written to benchmarks/results/quick/. One target per benchmark: bench-<name>.
BENCH_FLAGS = $(if $(QUICK),--quick,)
BENCH_NAMES = scoring release rescoring train ddp gpu data a1 a1_injection physical winding reference arms_probe learning_curve containers soak_labels soak_scoring soak_promotions
.PHONY: $(addprefix bench-,$(BENCH_NAMES))
benchmarks: setup
	$(UV) run python benchmarks/run_all.py $(BENCH_FLAGS)
	$(UV) run python benchmarks/make_results_page.py

$(addprefix bench-,$(BENCH_NAMES)): bench-%: setup
	$(UV) run python benchmarks/run_all.py $(BENCH_FLAGS) --only $*
	$(UV) run python benchmarks/make_results_page.py

# docs/results.md, generated from the committed results files in benchmarks/results/
results-page: setup
	$(UV) run python benchmarks/make_results_page.py
