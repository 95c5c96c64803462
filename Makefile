# make serve: create .venv if absent, install, serve the bundled default.
# make test:  create .venv if absent, install, run the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve serve-python-examples test install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test,tensorflow]"
	touch $(STAMP)

install: $(STAMP)

DEMO_REPO := build/demo_repository

$(DEMO_REPO):
	$(BIN)/python scripts/fill_demo_repository.py $(DEMO_REPO)

serve: $(STAMP) $(DEMO_REPO)
	$(BIN)/llmserve serve --model-repository $(DEMO_REPO)

serve-python-examples: $(STAMP)
	$(BIN)/llmserve serve --model-repository examples/python_models

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)
