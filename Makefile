# Two entry points (see README): `make demo` and `make test`.
# Both bootstrap a local virtual environment in .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint docs sysdeps venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned to the CPU build this project is developed on
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[testing]"
	touch $(STAMP)

venv: $(STAMP)

sysdeps:
	./scripts/install_system_deps.sh

# On a machine without a screen, the demo runs on a virtual display and saves demo.png instead.
demo: $(STAMP)
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
		$(VENV)/bin/napari-conformal demo; \
	else \
		./scripts/install_system_deps.sh && \
		echo "no display: running the demo under Xvfb and saving a screenshot to demo.png" && \
		xvfb-run -a -s "-screen 0 1600x1000x24" $(VENV)/bin/napari-conformal demo --screenshot demo.png; \
	fi

test: $(STAMP) sysdeps
	$(VENV)/bin/ruff check napari_conformal tests benchmarks
	$(VENV)/bin/mkdocs build --strict --quiet
	$(PY) -m pytest -q -m "not gui"
	# the GUI tests: one process per file (scripts/run_gui_tests.sh says why)
	./scripts/run_gui_tests.sh $(PY)

lint: $(STAMP)
	$(VENV)/bin/ruff check napari_conformal tests benchmarks
	$(VENV)/bin/ruff format --check napari_conformal tests benchmarks

docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
