# Switchboard: `make run` starts the service, `make test` runs the suite. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test test-fast lint openapi bench

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Options for the dev server: make run ARGS="--port 8000 --workers 4 --verbose"
run: install
	$(BIN)/flask --app app dev $(ARGS)

# The suite runs in TEST_WORKERS parallel sessions (pytest-xdist), each with its own database
# and Redis; test-fast leaves out the tests marked slow (CI runs them all).
TEST_WORKERS ?= 4
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(ARGS)

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" $(ARGS)

lint: install
	$(BIN)/ruff check app plugins tests bench worker.py
	$(BIN)/ruff format --check app plugins worker.py
	$(BIN)/mypy app plugins

openapi: install
	$(BIN)/flask --app app openapi write

bench: install
	$(BIN)/python bench/auth.py
	$(BIN)/python bench/webhooks.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/breakdown.py
	$(BIN)/python bench/limiter.py
	$(BIN)/python bench/publish.py
