# lakerec: the two set-up commands of the README.
#   make demo   installs everything into .venv and runs the whole loop on the embedded defaults
#   make test   installs everything into .venv and runs the full test suite (what CI runs)

PYTHON ?= python3
VENV   ?= .venv

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@

demo: setup
	$(VENV)/bin/lakerec demo

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check pipelines jobs schemas tests

clean:
	rm -rf $(VENV) lakehouse .pytest_cache
