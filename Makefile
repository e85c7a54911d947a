# The commands people type. Each target sets up what it needs: `make run` and `make test`
# work on a fresh machine. torch is installed first and pinned (a CPU build); installing
# stable-baselines3 first would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.rlhpo-installed
# Keep Hugging Face caches inside the project.
export HF_HOME ?= $(CURDIR)/.cache/hf
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test test-slow lint format bench clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	touch $@

# The main job: tune the offline default task (scikit-learn's digits) with the shipped policy.
run: $(STAMP)
	$(BIN)/rlhpo tune --task digits

# The default test suite (slow tests are left out; `make test-slow` runs them).
# Tests that need the real datasets read them from $RLHPO_DATA_DIR (a folder of
# <name>/{train,test}.parquet) and skip without it: `RLHPO_DATA_DIR=/path/to/data make test`.
# RLHPO_REQUIRE_DATA=1 makes those skips failures (CI sets both, in .ci/run).
test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .cache build *.egg-info .pytest_cache .ruff_cache
