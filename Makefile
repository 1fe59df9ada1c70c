# make test: create .venv when missing, install the package with its extras, run the tests.
# make demo: the whole flow locally (tiny model, local mode, registry, sync).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A plain `torch` requirement pulls a multi-GB CUDA build; on machines without a GPU take the CPU wheel.
TORCH_PIN := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
PYTEST_ARGS ?=
# The browser test drives Debian's Chromium through Debian's chromedriver: nothing is downloaded at test time.
BROWSER_PKGS := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser test demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[train,data,dev]"
	touch $(STAMP)

install: $(STAMP)

# Installs what the browser test needs when missing: Debian's Chromium + chromedriver (apt, as root or via
# sudo). Selenium comes with the dev extra.
browser: $(STAMP)
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  echo "installing $(BROWSER_PKGS) for the browser test (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(BROWSER_PKGS) >/dev/null; \
	fi

# pytest exits 5 when it collects no tests; make fails on any non-zero exit, so that cannot pass silently.
test: $(STAMP) browser
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	MLFLOW_DISABLE_TELEMETRY=true $(PY) -m examples.demo

clean:
	rm -rf $(VENV) .ade build *.egg-info
