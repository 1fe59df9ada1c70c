# make test: create .venv when missing, install the package with its extras, run the tests.
# make test-fast: the same run without the slow end-to-end flows (`-m "not slow"`), for the inner loop.
# make test-min: the fast tests in a separate venv (.venv-min) holding every dependency at its floor (not in CI).
# make demo: the whole flow locally (tiny model, local mode, registry, sync).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A plain `torch` requirement pulls a multi-GB CUDA build; on machines without a GPU take the CPU wheel.
TORCH_PIN := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
PYTEST_ARGS ?=
TEST_ENV := MLFLOW_DISABLE_TELEMETRY=true
# One pytest worker per CPU (pytest-xdist, from the dev extra); loadscope keeps a module on one worker, so the
# demo flow trains once. The check lets a venv without pytest-xdist still run, one process.
XDIST = $$($(1) -c 'import xdist' 2>/dev/null && printf '%s' '-n auto --dist loadscope')
# test-min: each `>=` floor of setup.cfg becomes an `==` constraint, so the floors are what gets tested.
VENV_MIN := .venv-min
PY_MIN := $(VENV_MIN)/bin/python
STAMP_MIN := $(VENV_MIN)/.installed
FLOORS := $(VENV_MIN)/floors.txt
MIN_EXTRAS := train,data,dev
# torch's floor cannot be installed on a machine without a GPU: this disk holds one CPU wheel (2.13.0) and
# every other torch release on PyPI is a multi-GB CUDA build, so there test-min tests torch at TORCH_PIN
# (torch's floor in setup.cfg cites the GPU machine that ran the training code with it).
TORCH_MIN := $(if $(findstring ==,$(TORCH_PIN)),$(TORCH_PIN))
# The browser test drives Debian's Chromium through Debian's chromedriver: nothing is downloaded at test time.
BROWSER_PKGS := chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser test test-fast test-min demo clean

# Writes `name==floor` for every requirement of install_requires and the given extras (extras of a
# requirement dropped: pip constraints take none); a requirement without a floor is an error. Arguments:
# setup.cfg, the extras (comma-separated), then `name==version` overrides.
define FLOORS_PY
import configparser, re, sys
cfg = configparser.ConfigParser(interpolation=None)
cfg.read(sys.argv[1])
reqs = cfg["options"]["install_requires"].splitlines()
for extra in sys.argv[2].split(","):
    reqs += cfg["options.extras_require"][extra].splitlines()
overrides = dict(o.split("==", 1) for o in sys.argv[3:])
floors = {}
for req in filter(None, map(str.strip, reqs)):
    name = re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower()
    floor = re.search(r"(?:>=|==)\s*([^,;\s]+)", req)
    if floor is None:
        sys.exit(f"setup.cfg: '{req}' has no floor; give it '>=' the lowest version tested")
    floors[name] = overrides.get(name, floor.group(1))
print("\n".join(f"{name}=={version}" for name, version in sorted(floors.items())))
endef
export FLOORS_PY

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
	$(TEST_ENV) $(PY) -m pytest $(call XDIST,$(PY)) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(TEST_ENV) $(PY) -m pytest $(call XDIST,$(PY)) -m "not slow" $(PYTEST_ARGS)

# A fresh venv whenever setup.cfg changes: pip would keep newer versions left from an earlier floor set.
$(STAMP_MIN): setup.cfg pyproject.toml
	rm -rf $(VENV_MIN)
	$(PYTHON) -m venv $(VENV_MIN)
	$(PY_MIN) -m pip install --quiet --upgrade pip
	$(PYTHON) -c "$$FLOORS_PY" setup.cfg $(MIN_EXTRAS) $(TORCH_MIN) > $(FLOORS)
	$(PY_MIN) -m pip install --quiet -c $(FLOORS) "$(TORCH_PIN)" -e ".[$(MIN_EXTRAS)]"
	touch $(STAMP_MIN)

# The editable install points .venv-min at this tree; pip check proves the floors are consistent. Neither
# fast target needs the browser: its test is marked slow.
test-min: $(STAMP_MIN)
	$(PY_MIN) -m pip check
	$(TEST_ENV) $(PY_MIN) -m pytest $(call XDIST,$(PY_MIN)) -m "not slow" $(PYTEST_ARGS)

demo: $(STAMP)
	$(TEST_ENV) $(PY) -m examples.demo

clean:
	rm -rf $(VENV) $(VENV_MIN) .ade build *.egg-info
