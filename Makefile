# galmorph: the two commands
#   make demo  - the whole platform end to end, locally, on the embedded default stack
#   make test  - the test suite (what CI runs through .ci/run)
SHELL := /bin/bash
# uv from PATH, else the Python package (installed by `setup` when missing)
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")

.PHONY: demo test setup browser stack-down lint benchmarks

setup:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen

# headless Chromium for the browser tests (Debian packages), installed once
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  ( (apt-get update -qq || sudo apt-get update -qq) && \
	    (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || \
	     sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) ) || \
	  echo "warning: could not install chromium; browser tests will be skipped"

demo: setup
	$(UV) run galmorph demo

test: setup browser
	$(UV) run pytest -q $(PYTEST_ARGS)

stack-down: setup
	$(UV) run galmorph stack down

benchmarks: setup
	$(UV) run python -m benchmarks.run_all
