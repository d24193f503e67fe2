# lakerec: the two set-up commands of the README.
#   make demo   installs everything into .venv, builds the ONNX encoder, runs the whole loop
#   make test   installs everything into .venv, builds the ONNX encoder, runs the full test suite
#               (what CI runs)

PYTHON ?= python3
VENV   ?= .venv

AIRFLOW_VENV ?= .venv-airflow
ENCODER      ?= models/build/minilm

.PHONY: setup airflow-venv models package demo test lint clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@echo "installing lakerec and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@{ $(VENV)/bin/python -m pip install --upgrade pip && \
	   $(VENV)/bin/python -m pip install -e '.[dev,export]'; } > $(VENV)/install.log 2>&1 || \
	 { tail -40 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@touch $@

# Airflow lives in its own environment (its pins must not constrain the project's), from a
# frozen list: Airflow's constraint files are not reachable from the build machines.
airflow-venv: $(AIRFLOW_VENV)/.installed

$(AIRFLOW_VENV)/.installed: airflow/requirements.txt
	@echo "installing Airflow into $(AIRFLOW_VENV) (log: $(AIRFLOW_VENV)/install.log)"
	@$(PYTHON) -m venv $(AIRFLOW_VENV)
	@$(AIRFLOW_VENV)/bin/python -m pip install -r airflow/requirements.txt \
	   > $(AIRFLOW_VENV)/install.log 2>&1 || \
	 { tail -40 $(AIRFLOW_VENV)/install.log; echo "install failed: see $(AIRFLOW_VENV)/install.log"; exit 1; }
	@touch $@

# The text encoder: MiniLM exported to ONNX (fp32 + int8) and self-checked; built, not committed.
models: $(ENCODER)/manifest.json

$(ENCODER)/manifest.json: models/export_minilm.py $(VENV)/.installed
	@echo "exporting the MiniLM encoder to ONNX into $(ENCODER)"
	@$(VENV)/bin/python models/export_minilm.py --out $(ENCODER)

package: setup
	$(VENV)/bin/lakerec package --out dist

demo: setup models
	$(VENV)/bin/lakerec demo

test: setup airflow-venv models
	$(VENV)/bin/python -m pytest -q --durations=25

lint: setup
	$(VENV)/bin/ruff check pipelines jobs schemas tests models bench

clean:
	rm -rf $(VENV) $(AIRFLOW_VENV) dist lakehouse .pytest_cache models/build
