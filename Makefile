# lakerec: the two set-up commands of the README.
#   make demo   installs everything into .venv and runs the whole loop on the embedded defaults
#   make test   installs everything into .venv and runs the full test suite (what CI runs)

PYTHON ?= python3
VENV   ?= .venv

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@echo "installing lakerec and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@{ $(VENV)/bin/python -m pip install --upgrade pip && \
	   $(VENV)/bin/python -m pip install -e '.[dev]'; } > $(VENV)/install.log 2>&1 || \
	 { tail -40 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $@

demo: setup
	$(VENV)/bin/lakerec demo

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check pipelines jobs schemas tests

clean:
	rm -rf $(VENV) lakehouse .pytest_cache
