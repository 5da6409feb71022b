# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned first so pip takes the CPU build that lies on this machine's disk,
# not a multi-GB CUDA build; on a GPU machine install your CUDA torch into .venv first.
TORCH ?= torch==2.13.0

.PHONY: run test test-slow clean-venv

$(BIN)/arbot: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[dev,tracking,agents]'
	touch $@

run: $(BIN)/arbot
	$(BIN)/arbot run $(ARGS)

# The default suite (a few minutes on 2 cores, one worker per core); `make test-slow` runs the long end-to-end
# tests one at a time (they train and time real runs), CI runs both.
test: $(BIN)/arbot
	$(BIN)/python -m pytest -m "not slow" -n auto $(PYTEST_ARGS)

test-slow: $(BIN)/arbot
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
