# Developer entry points. Everything runs from .venv; the Kafka broker jars are
# fetched once with Maven into .cache/ (override with PIPELINE_CACHE_DIR).

VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv jars test lint run clean

venv: $(VENV)/.installed

# Stamp file: reinstall only when the dependency list changes.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -e '.[dev]'
	touch $@

jars: venv
	$(BIN)/python -m pipeline.localkafka.jars

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: venv jars
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest -q -p no:cacheprovider

run: venv jars
	$(BIN)/pipeline dev

clean:
	rm -rf $(VENV) .cache
