# onnxcam: export once, explain in bulk.  `make demo` and `make test` set everything up themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODEL ?= efficientnet-lite0
LAYER ?= auto
OUT ?= exports/$(subst :,-,$(MODEL)).onnx
EXPORT_FLAGS ?=

.PHONY: setup test lint export info demo clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[export,test]'
	touch $@

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

export: setup
	$(BIN)/onnxcam export --model $(MODEL) --layer $(LAYER) --out $(OUT) $(EXPORT_FLAGS)

info: setup
	$(BIN)/onnxcam info $(OUT)

demo: export info

clean:
	rm -rf exports out demo
