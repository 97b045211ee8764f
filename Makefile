# One-command set-up: `make demo` and `make test` create .venv and install everything first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench addon clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,ray]"
	$(PY) -c "import engine_server, vse_style_shared, torch, torchvision, cv2, ray; print('setup ok: torch', torch.__version__)"
	touch $(STAMP)

demo: setup
	$(PY) -m engine_server.demo --out out

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m engine_server.bench modes

addon: setup
	$(PY) build_addon.py

clean:
	rm -rf $(VENV) out build dist *.egg-info
